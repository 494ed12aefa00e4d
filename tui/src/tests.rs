//! The UI loop against a fetch that hangs: keys still work, the screen
//! still changes, and quitting does not wait for the fetch.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::*;
use crate::app::tests::snapshot;
use crate::app::Key;

/// Only reached when the code under test hangs; nothing waits for it otherwise.
const BOUND: Duration = Duration::from_secs(10);

/// Keys the test sends, one at a time.
struct ChannelKeys(mpsc::Receiver<Key>);

impl Keys for ChannelKeys {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Key>> {
        Ok(self.0.recv_timeout(timeout).ok())
    }
}

/// Sends on drop: tells the test that the fetch thread let go of its closure.
struct DropSignal(mpsc::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

fn text(backend: &TestBackend) -> String {
    let buffer = backend.buffer();
    buffer
        .content()
        .chunks(buffer.area.width as usize)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The next drawn screen that passes `f`.
fn wait_screen(screens: &mpsc::Receiver<String>, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = screens
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no screen with {what}"));
        if f(&s) {
            return s;
        }
    }
}

#[test]
fn keys_work_and_quit_is_immediate_while_a_fetch_hangs() {
    // The first fetch answers; the second hangs until the test releases it.
    let (fetching, fetch_started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let (dropped, closure_dropped) = mpsc::channel();
    let guard = DropSignal(dropped);
    let mut calls = 0;
    let fetch: Fetch = Box::new(move || {
        let _keep = &guard;
        calls += 1;
        if calls > 1 {
            let _ = fetching.send(());
            let _ = released.recv();
        }
        Ok(snapshot(&["web"]))
    });
    let fetcher = Fetcher::spawn(fetch, Duration::from_millis(1)).unwrap();

    let (key_tx, key_rx) = mpsc::channel();
    let (screen_tx, screens) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut app = App::new("http://x");
        let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
        let stop = AtomicBool::new(false);
        let result = event_loop(&mut app, &fetcher, &mut ChannelKeys(key_rx), &stop, |app| {
            terminal.draw(|f| view::render(f, app)).unwrap();
            let _ = screen_tx.send(text(terminal.backend()));
            Ok(())
        });
        drop(fetcher);
        let _ = done_tx.send((result, app));
    });

    wait_screen(&screens, "the first snapshot", |s| s.contains("web"));
    fetch_started
        .recv_timeout(BOUND)
        .expect("the second fetch starts (and hangs)");
    key_tx.send(Key::Char('?')).unwrap();
    wait_screen(&screens, "the help, drawn while the fetch hangs", |s| {
        s.contains("this help")
    });
    key_tx.send(Key::Char('q')).unwrap();
    let (result, app) = done
        .recv_timeout(BOUND)
        .expect("the loop ends on q although the fetch still hangs");
    result.unwrap();
    assert!(app.quit && !app.show_help);

    // Released, the fetch finds nobody to send to and its thread ends.
    release.send(()).unwrap();
    closure_dropped
        .recv_timeout(BOUND)
        .expect("the fetch thread ends once the UI is gone");
}

#[test]
fn each_fetch_result_reaches_the_screen_in_order() {
    // Each fetch says it started, then waits for the test's go: when fetch
    // N+1 has started, result N is in the channel and nothing after it.
    let (started_tx, started) = mpsc::channel();
    let (go, gone) = mpsc::channel::<()>();
    let mut calls = 0;
    let fetch: Fetch = Box::new(move || {
        calls += 1;
        let _ = started_tx.send(calls);
        let _ = gone.recv();
        match calls {
            1 => Err("connection refused".to_string()),
            _ => Ok(snapshot(&["web"])),
        }
    });
    let fetcher = Fetcher::spawn(fetch, Duration::from_millis(1)).unwrap();
    let mut app = App::new("http://x");
    let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
    let mut screen_after = |call: u32| {
        go.send(()).unwrap();
        assert_eq!(started.recv_timeout(BOUND), Ok(call + 1));
        fetcher.apply_pending(&mut app);
        terminal.draw(|f| view::render(f, &app)).unwrap();
        text(terminal.backend())
    };
    assert_eq!(started.recv_timeout(BOUND), Ok(1));
    let s = screen_after(1);
    assert!(
        s.contains("disconnected, retrying (connection refused)"),
        "{s}"
    );
    let s = screen_after(2);
    assert!(
        s.contains(" connected ") && s.contains("web") && !s.contains("disconnected"),
        "{s}"
    );
}
