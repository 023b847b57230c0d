//! Progress of a long command on stderr: one line rewritten in place on a terminal,
//! a plain line every few seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn on a terminal.
const TTY_EVERY: Duration = Duration::from_millis(200);
/// How often a plain line is written elsewhere.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: String,
    /// What `done` counts up to, when known (for the share and the ETA).
    total: Option<u64>,
    started: Instant,
    shown: Option<Instant>,
    tty: bool,
}

impl Progress {
    /// `what` names the work ("publishing"); `total` is the amount `done` reaches.
    pub fn new(what: &str, total: Option<u64>) -> Self {
        Self {
            what: what.to_owned(),
            total: total.filter(|t| *t > 0),
            started: Instant::now(),
            shown: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `done` (of the total) and `rate_of` items so far (for the rate), with
    /// `extra` at the end; at most every 200 ms on a terminal, 5 s elsewhere.
    pub fn update(&mut self, done: u64, rate_of: u64, extra: &str) {
        let every = if self.tty { TTY_EVERY } else { PLAIN_EVERY };
        if self.shown.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.shown = Some(Instant::now());
        self.show(done, rate_of, extra, false);
    }

    /// The last line, always shown.
    pub fn finish(&mut self, done: u64, rate_of: u64, extra: &str) {
        self.show(done, rate_of, extra, true);
    }

    fn show(&self, done: u64, rate_of: u64, extra: &str, last: bool) {
        let line = self.line(done, rate_of, extra);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            let end = if last { "\n" } else { "" };
            write!(err, "\r\x1b[2K{line}{end}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn line(&self, done: u64, rate_of: u64, extra: &str) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = rate_of as f64 / secs;
        let mut line = format!("{}: {:.0}/s", self.what, rate);
        if let Some(total) = self.total {
            let share = done as f64 / total as f64;
            line.push_str(&format!(", {:.0}%", share * 100.0));
            if share > 0.0 && share < 1.0 {
                let left = secs * (1.0 - share) / share;
                line.push_str(&format!(", ETA {}", clock(left)));
            }
        }
        if !extra.is_empty() {
            line.push_str(", ");
            line.push_str(extra);
        }
        line.push_str(&format!(", {} elapsed", clock(secs)));
        line
    }
}

/// `1h02m03s`, `2m03s` or `3s`.
pub fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_naturally() {
        assert_eq!(clock(3.2), "3s");
        assert_eq!(clock(123.0), "2m03s");
        assert_eq!(clock(3723.0), "1h02m03s");
    }

    #[test]
    fn a_line_names_rate_share_and_extra() {
        let p = Progress::new("publishing", Some(100));
        let line = p.line(50, 50, "3 rejected");
        assert!(line.starts_with("publishing: "), "{line}");
        assert!(line.contains(", 50%, ETA "), "{line}");
        assert!(line.contains("3 rejected"), "{line}");
    }
}
