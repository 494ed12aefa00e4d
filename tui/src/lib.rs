#![recursion_limit = "256"]
//! `lbctl top`: a live terminal dashboard of lbd, built on ratatui. The
//! state and keys live in [`app`], the drawing in [`view`]; [`run`] is the
//! loop that fetches, draws and reads keys. Data comes from the API through a
//! fetch function the caller provides (lbctl's HTTP client), never from the
//! database.

pub mod app;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use lbaas::model::ProjectInfo;

pub use app::App;

/// Fetches every project with its instances, or says why it could not.
pub type Fetch = Box<dyn FnMut() -> Result<Vec<ProjectInfo>, String>>;

/// Runs the dashboard until `q`, Ctrl-C, SIGTERM or SIGHUP. The terminal is restored
/// on every way out, a panic included (ratatui's init installs the hook).
pub fn run(url: &str, mut fetch: Fetch, refresh: Duration) -> std::io::Result<()> {
    // SIGTERM ends the loop so the terminal is restored. SIGHUP keeps its
    // default (exit): the terminal is gone then, nothing to restore, and
    // reading a hung-up tty would only spin.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let mut app = App::new(url);
        let mut next_fetch = Instant::now();
        while !app.quit && !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_fetch {
                match fetch() {
                    Ok(projects) => app.update(projects, Instant::now()),
                    Err(e) => app.disconnect(e),
                }
                next_fetch = Instant::now() + refresh;
            }
            terminal.draw(|f| view::render(f, &app))?;
            let wait = next_fetch
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Release {
                        continue;
                    }
                    if let Some(key) = translate(k.code, k.modifiers) {
                        app.on_key(key);
                    }
                }
            }
        }
        Ok(())
    })();
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
