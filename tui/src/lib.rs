#![recursion_limit = "256"]
//! `lbctl top`: a live terminal dashboard of lbd, built on ratatui. The
//! state and keys live in [`app`], the drawing in [`view`]; [`run`] is the
//! loop that draws and reads keys while a [`Fetcher`] thread fetches. Data
//! comes from the API through a fetch function the caller provides (lbctl's
//! HTTP client), never from the database.

pub mod app;
pub mod managed;
pub mod view;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use lbaas::model::ProjectInfo;

pub use app::App;

/// Fetches every project with its instances, or says why it could not.
/// It runs on the fetch thread, so it may block (lbd slow or gone).
pub type Fetch = Box<dyn FnMut() -> Result<Vec<ProjectInfo>, String> + Send>;

/// How long the loop waits for a key before it looks for a new snapshot
/// (and for SIGTERM) again.
const POLL: Duration = Duration::from_millis(100);

/// What one fetch brought, and when it ended.
pub struct Snapshot {
    pub at: Instant,
    pub result: Result<Vec<ProjectInfo>, String>,
}

/// A thread that fetches at once and then every `refresh`, and sends each
/// result to the UI. It is never joined: quitting must not wait for a fetch
/// that hangs. Dropping the `Fetcher` stops the thread when its current
/// fetch (if any) returns.
pub struct Fetcher {
    snapshots: Receiver<Snapshot>,
    // Never sent on; dropping it wakes the thread from its wait between fetches.
    _stop: mpsc::Sender<()>,
}

impl Fetcher {
    pub fn spawn(mut fetch: Fetch, refresh: Duration) -> io::Result<Fetcher> {
        let (tx, snapshots) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("top-fetch".into())
            .spawn(move || loop {
                let started = Instant::now();
                let result = fetch();
                if tx
                    .send(Snapshot {
                        at: Instant::now(),
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                match stopped.recv_timeout(refresh.saturating_sub(started.elapsed())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Fetcher {
            snapshots,
            _stop: stop,
        })
    }

    /// Applies every snapshot that arrived since the last call, without waiting.
    fn apply_pending(&self, app: &mut App) {
        loop {
            match self.snapshots.try_recv() {
                Ok(Snapshot { at, result }) => match result {
                    Ok(projects) => app.update(projects, at),
                    Err(e) => app.disconnect(e),
                },
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    app.disconnect("the fetch thread stopped".into());
                    return;
                }
            }
        }
    }
}

/// Where keys come from: the terminal, or a test's script.
pub trait Keys {
    /// The next key, or `None` when none came within `timeout`.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<app::Key>>;
}

/// Keys from the terminal (crossterm).
pub struct TerminalKeys;

impl Keys for TerminalKeys {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<app::Key>> {
        if !event::poll(timeout)? {
            return Ok(None);
        }
        Ok(match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => translate(k.code, k.modifiers),
            _ => None,
        })
    }
}

/// The UI loop, until `q`, Ctrl-C or `stop`: takes the snapshots that came,
/// draws, and waits a short while for a key. It never waits for a fetch.
pub fn event_loop(
    app: &mut App,
    fetcher: &Fetcher,
    keys: &mut impl Keys,
    stop: &AtomicBool,
    mut draw: impl FnMut(&App) -> io::Result<()>,
) -> io::Result<()> {
    while !app.quit && !stop.load(Ordering::Relaxed) {
        fetcher.apply_pending(app);
        draw(app)?;
        if let Some(key) = keys.next(POLL)? {
            app.on_key(key);
        }
    }
    Ok(())
}

/// Runs the dashboard until `q`, Ctrl-C, SIGTERM or SIGHUP. The terminal is restored
/// on every way out, a panic included (ratatui's init installs the hook).
pub fn run(url: &str, fetch: Fetch, refresh: Duration) -> io::Result<()> {
    // SIGTERM ends the loop so the terminal is restored. SIGHUP keeps its
    // default (exit): the terminal is gone then, nothing to restore, and
    // reading a hung-up tty would only spin.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let fetcher = Fetcher::spawn(fetch, refresh)?;
    let mut terminal = ratatui::init();
    let mut app = App::new(url);
    let result = event_loop(&mut app, &fetcher, &mut TerminalKeys, &stop, |app| {
        terminal.draw(|f| view::render(f, app)).map(drop)
    });
    ratatui::restore();
    result
}

fn translate(code: KeyCode, modifiers: KeyModifiers) -> Option<app::Key> {
    use app::Key;
    Some(match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab | KeyCode::BackTab => Key::Tab,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
