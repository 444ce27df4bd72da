//! Progress of a long audit on a terminal: one line, rewritten in place at most five times a
//! second, on stderr so that the report on stdout stays clean for a pipe.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

pub trait Progress: Send {
    /// `rows` read so far, now in `stage`.
    fn advance(&mut self, stage: &'static str, rows: u64);
    fn finish(&mut self, _rows: u64) {}
}

/// No progress (the scheduled job, a pipe).
pub struct Silent;

impl Progress for Silent {
    fn advance(&mut self, _: &'static str, _: u64) {}
}

/// A status line on stderr, when stderr is a terminal.
pub struct Terminal {
    started: Instant,
    shown: Option<Instant>,
    on: bool,
}

impl Terminal {
    pub fn stderr() -> Self {
        Self {
            started: Instant::now(),
            shown: None,
            on: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Terminal {
    fn advance(&mut self, stage: &'static str, rows: u64) {
        if !self.on
            || self
                .shown
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.shown = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2Kaudit: {stage}: {rows} rows read, {:.0} rows/s",
            rows as f64 / secs
        );
        let _ = err.flush();
    }

    fn finish(&mut self, _rows: u64) {
        if self.on && self.shown.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
