//! Retrying with backoff: the one loop every store call of the aggregator goes through.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Doubling waits between attempts, capped.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    wait: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { wait: first, max }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.wait;
        self.wait = (self.wait * 2).min(self.max);
        wait
    }
}

/// When to stop retrying.
#[derive(Clone, Copy)]
pub enum Until<'a> {
    /// Until this returns true (shutdown began).
    Stopped(&'a dyn Fn() -> bool),
    /// Until this instant would pass before the next attempt.
    Deadline(Instant),
}

impl Until<'_> {
    fn reached(&self, next_attempt: Instant) -> bool {
        match self {
            Until::Stopped(stopped) => stopped(),
            Until::Deadline(deadline) => next_attempt > *deadline,
        }
    }
}

/// Runs `attempt` until it succeeds (`Some`) or `until` is reached (`None`), logging
/// each failure with `what`.
pub fn retry<T, E: Display>(
    what: &str,
    mut backoff: Backoff,
    until: Until<'_>,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Option<T> {
    loop {
        match attempt() {
            Ok(value) => return Some(value),
            Err(e) => {
                let wait = backoff.next_wait();
                if until.reached(Instant::now() + wait) {
                    tracing::error!(error = %e, "{what} failed; giving up");
                    return None;
                }
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn retries_until_success_or_the_deadline() {
        let tries = Cell::new(0);
        let fast = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let got = retry("test", fast, Until::Stopped(&|| false), || {
            tries.set(tries.get() + 1);
            if tries.get() < 3 {
                Err("not yet")
            } else {
                Ok(tries.get())
            }
        });
        assert_eq!(got, Some(3));

        let deadline = Until::Deadline(Instant::now() + Duration::from_millis(20));
        let slow = Backoff::new(Duration::from_millis(5), Duration::from_millis(5));
        let never: Option<()> = retry("test", slow, deadline, || Err("down"));
        assert_eq!(never, None);
    }
}
