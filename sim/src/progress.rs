//! `explore`'s progress line on a terminal: seeds done of the total, seeds with violations so
//! far, and simulated seconds per wall second. It is drawn on standard error, rewritten in
//! place, at most [`REDRAW_EVERY`] apart (and once at the end), and only when a person is
//! watching: standard error is a terminal and `CI` is not set. Otherwise nothing is written, so
//! logs of CI runs and redirected output hold the summary alone.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use crate::scenario::Outcome;

/// The shortest wall time between two redraws of the line.
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// Whether to draw progress: only for a person at a terminal, never in CI (any value of `CI`,
/// as CI services set it to `true`, `1` or their name).
pub fn wanted(stderr_is_terminal: bool, ci: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && ci.is_none()
}

/// [`wanted`] for this process.
pub fn wanted_here() -> bool {
    wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("CI").as_deref(),
    )
}

/// The counts behind the line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub done: usize,
    pub total: usize,
    pub failed: usize,
    pub simulated_ms: u64,
}

impl Counts {
    pub fn add(&mut self, outcome: &Outcome) {
        self.done += 1;
        self.failed += usize::from(!outcome.violations.is_empty());
        self.simulated_ms += outcome.simulated_ms;
    }

    /// The line itself, without the carriage return that rewrites it.
    pub fn line(&self, wall: Duration) -> String {
        let wall_s = wall.as_secs_f64();
        let rate = if wall_s > 0.0 {
            format!("{:.0}", self.simulated_ms as f64 / 1000.0 / wall_s)
        } else {
            "-".to_owned()
        };
        format!(
            "{}/{} seeds, {} with violations, {rate} simulated s per wall s, {:.1} s",
            self.done, self.total, self.failed, wall_s
        )
    }
}

/// The progress of one `explore`: shared by the threads that run seeds.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<State>,
    draw: bool,
}

// The wall time of the harness itself (explore's driver process), never of a simulated run.
#[allow(clippy::disallowed_types)]
#[derive(Debug)]
struct State {
    counts: Counts,
    started: std::time::Instant,
    drawn: Option<std::time::Instant>,
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // Wall time of the harness itself.
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}

impl Progress {
    /// Progress over `total` seeds, drawn if `draw` (see [`wanted_here`]).
    pub fn new(total: usize, draw: bool) -> Self {
        Self {
            state: Mutex::new(State {
                counts: Counts {
                    total,
                    ..Counts::default()
                },
                started: wall_clock(),
                drawn: None,
            }),
            draw,
        }
    }

    /// Counts one finished seed and redraws the line if it is due.
    pub fn seed_done(&self, outcome: &Outcome) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.counts.add(outcome);
        let now = wall_clock();
        let due = state.drawn.is_none_or(|at| now - at >= REDRAW_EVERY)
            || state.counts.done == state.counts.total;
        if self.draw && due {
            state.drawn = Some(now);
            let line = state.counts.line(now - state.started);
            let mut err = std::io::stderr().lock();
            // `\x1b[K` clears what a longer earlier line left to the right.
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        }
    }

    /// Ends the line, so that what follows starts on a line of its own.
    pub fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.draw && state.drawn.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }

    pub fn counts(&self) -> Counts {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).counts
    }
}
