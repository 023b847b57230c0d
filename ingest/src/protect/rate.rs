//! Rate limits: `<N>/s` or `<N>/m` views per client, kept as GCRA (a token bucket
//! stored as one instant per client: when its bucket will be full again).
//!
//! A bucket holds N views and refills N per period, so a client may send a burst of
//! N at once, then N per period. A request costs the views it carries and is
//! admitted whole or refused whole. Memory is bounded: a client whose bucket is full
//! again is forgotten (it is the same as one never seen), and at most
//! [`MAX_CLIENTS`] are remembered.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most clients one limiter remembers at once. A client not remembered because the
/// table is full of busy ones is served unlimited (and a warning logged): per-client
/// limits cannot stop that many clients anyway.
pub(crate) const MAX_CLIENTS: usize = 100_000;
/// How often full buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// `RATE_LIMIT_PER_*`: `<N>/s` or `<N>/m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Views per period, also the burst.
    pub views: u64,
    pub period: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a rate: expected <N>/s or <N>/m, e.g. 100/s");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let views: u64 = n.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(bad()),
        };
        if views == 0 {
            return Err(format!(
                "{s:?}: the rate must be at least 1 view per period"
            ));
        }
        if views > 1_000_000_000 {
            return Err(format!("{s:?}: at most 1000000000 views per period"));
        }
        Ok(Rate { views, period })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.period.as_secs() == 1 { "s" } else { "m" };
        write!(f, "{}/{unit}", self.views)
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the limit: retry after this long.
    Wait(Duration),
    /// The request alone costs more than a full bucket holds: it can never pass.
    TooLarge { burst: u64 },
}

impl Refused {
    /// `Retry-After` in whole seconds, at least 1.
    pub(crate) fn retry_after_secs(&self, rate: &Rate) -> u64 {
        let wait = match self {
            Refused::Wait(wait) => *wait,
            Refused::TooLarge { .. } => rate.period,
        };
        wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }
}

struct Table<K> {
    /// Per client: nanoseconds after `Limiter::epoch` when its bucket is full again.
    full_at: HashMap<K, u64>,
    last_sweep: u64,
    /// When the last "table full" warning was logged.
    warned: Option<u64>,
}

/// One limit over many clients (addresses, apps).
pub struct Limiter<K> {
    pub rate: Rate,
    epoch: Instant,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            epoch: Instant::now(),
            table: Mutex::new(Table {
                full_at: HashMap::new(),
                last_sweep: 0,
                warned: None,
            }),
        }
    }

    /// Nanoseconds since the limiter was made.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Nanoseconds `cost` views take to refill.
    fn refill(&self, cost: u64) -> u64 {
        (u128::from(cost) * self.rate.period.as_nanos() / u128::from(self.rate.views)) as u64
    }

    /// Takes `cost` views from `client`'s bucket at `now` (see [`Limiter::now`]), or
    /// says how long until they would fit.
    pub fn take(&self, client: &K, cost: u64, now: u64) -> Result<(), Refused> {
        if cost > self.rate.views {
            return Err(Refused::TooLarge {
                burst: self.rate.views,
            });
        }
        let capacity = self.rate.period.as_nanos() as u64;
        let Ok(mut table) = self.table.lock() else {
            return Ok(()); // a panic elsewhere poisoned it: serve rather than refuse all
        };
        table.sweep(now);
        let full_at = table.full_at.get(client).copied().unwrap_or(now).max(now);
        let after = full_at.saturating_add(self.refill(cost));
        let debt = after - now;
        if debt > capacity {
            return Err(Refused::Wait(Duration::from_nanos(debt - capacity)));
        }
        if table.full_at.len() >= MAX_CLIENTS && !table.full_at.contains_key(client) {
            table.warn_full(now);
            return Ok(());
        }
        table.full_at.insert(client.clone(), after);
        Ok(())
    }

    /// Charges `cost` views to `client` for a request refused for another reason,
    /// as far as its bucket holds them (it is emptied at most, never put in debt).
    /// Refused only when the bucket is already empty, saying how long until one
    /// view fits.
    pub(crate) fn charge(&self, client: &K, cost: u64, now: u64) -> Result<(), Refused> {
        let capacity = self.rate.period.as_nanos() as u64;
        let Ok(mut table) = self.table.lock() else {
            return Ok(());
        };
        table.sweep(now);
        let full_at = table.full_at.get(client).copied().unwrap_or(now).max(now);
        let one_more = (full_at - now).saturating_add(self.refill(1));
        if one_more > capacity {
            return Err(Refused::Wait(Duration::from_nanos(one_more - capacity)));
        }
        if table.full_at.len() >= MAX_CLIENTS && !table.full_at.contains_key(client) {
            table.warn_full(now);
            return Ok(());
        }
        let after = full_at
            .saturating_add(self.refill(cost))
            .min(now.saturating_add(capacity));
        table.full_at.insert(client.clone(), after);
        Ok(())
    }

    /// Gives back what [`Limiter::take`] took, when another limit refused the request.
    pub(crate) fn give_back(&self, client: &K, cost: u64) {
        let refill = self.refill(cost);
        if let Ok(mut table) = self.table.lock() {
            if let Some(full_at) = table.full_at.get_mut(client) {
                *full_at = full_at.saturating_sub(refill);
            }
        }
    }

    /// How many clients are remembered.
    pub fn clients(&self) -> usize {
        self.table.lock().map_or(0, |t| t.full_at.len())
    }
}

impl<K: Hash + Eq> Table<K> {
    /// Forgets full buckets: every [`SWEEP_EVERY`], and when the table is full (then
    /// at most once a second, so a full table does not cost a scan per request).
    fn sweep(&mut self, now: u64) {
        let since = now.saturating_sub(self.last_sweep);
        let due = since >= SWEEP_EVERY.as_nanos() as u64
            || (self.full_at.len() >= MAX_CLIENTS && since >= 1_000_000_000);
        if due {
            self.full_at.retain(|_, full_at| *full_at > now);
            self.last_sweep = now;
        }
    }

    fn warn_full(&mut self, now: u64) {
        let minute = 60_000_000_000;
        if self
            .warned
            .is_none_or(|at| now.saturating_sub(at) >= minute)
        {
            self.warned = Some(now);
            tracing::warn!(
                clients = MAX_CLIENTS,
                "rate limiter full of busy clients: new clients are served unlimited until some go idle"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rate(s: &str) -> Rate {
        s.parse().expect("rate")
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            rate("100/s"),
            Rate {
                views: 100,
                period: Duration::from_secs(1)
            }
        );
        assert_eq!(
            rate(" 30 / m "),
            Rate {
                views: 30,
                period: Duration::from_secs(60)
            }
        );
        assert_eq!(rate("30/m").to_string(), "30/m");
        for bad in [
            "", "100", "100/h", "/s", "-1/s", "1.5/s", "x/s", "0/s", "100/sec",
        ] {
            let err = bad.parse::<Rate>().expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_burst_of_n_then_n_per_period() {
        let limiter = Limiter::new(rate("10/s"));
        let a = "a".to_owned();
        for _ in 0..10 {
            assert_eq!(limiter.take(&a, 1, 0), Ok(()));
        }
        // The 11th waits for one view to refill: 100 ms, said as 1 s.
        let refused = limiter.take(&a, 1, 0).expect_err("over the burst");
        assert_eq!(refused, Refused::Wait(Duration::from_millis(100)));
        assert_eq!(refused.retry_after_secs(&limiter.rate), 1);
        // Another client is not affected.
        assert_eq!(limiter.take(&"b".to_owned(), 10, 0), Ok(()));
        // 100 ms later one view fits, and only one.
        assert_eq!(limiter.take(&a, 1, SEC / 10), Ok(()));
        assert!(limiter.take(&a, 1, SEC / 10).is_err());
        // A second later the bucket is full again.
        assert_eq!(limiter.take(&a, 10, SEC + SEC / 10), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let limiter = Limiter::new(rate("6/m"));
        let a = 1u8;
        assert_eq!(limiter.take(&a, 6, 0), Ok(()));
        // One view refills in 10 s.
        let refused = limiter.take(&a, 1, 0).expect_err("empty");
        assert_eq!(refused.retry_after_secs(&limiter.rate), 10);
        // 2.5 s later: 7.5 s left, said as 8.
        let refused = limiter.take(&a, 1, 2 * SEC + SEC / 2).expect_err("empty");
        assert_eq!(refused, Refused::Wait(Duration::from_millis(7500)));
        assert_eq!(refused.retry_after_secs(&limiter.rate), 8);
        // Three views need 30 s from empty.
        let refused = limiter.take(&a, 3, 0).expect_err("empty");
        assert_eq!(refused.retry_after_secs(&limiter.rate), 30);
        // A refused request takes nothing: one view still fits at 10 s.
        assert_eq!(limiter.take(&a, 1, 10 * SEC), Ok(()));
    }

    #[test]
    fn a_request_larger_than_the_burst_never_fits() {
        let limiter = Limiter::new(rate("50/s"));
        let refused = limiter.take(&0u8, 51, 0).expect_err("too large");
        assert_eq!(refused, Refused::TooLarge { burst: 50 });
        assert_eq!(refused.retry_after_secs(&limiter.rate), 1);
        assert_eq!(limiter.take(&0u8, 50, 0), Ok(()), "nothing was taken");
    }

    #[test]
    fn given_back_views_can_be_taken_again() {
        let limiter = Limiter::new(rate("5/s"));
        assert_eq!(limiter.take(&0u8, 5, 0), Ok(()));
        limiter.give_back(&0u8, 2);
        assert_eq!(limiter.take(&0u8, 2, 0), Ok(()));
        assert!(limiter.take(&0u8, 1, 0).is_err());
    }

    #[test]
    fn a_refused_request_empties_the_bucket_at_most() {
        let limiter = Limiter::new(rate("10/s"));
        // A charge larger than the bucket empties it rather than being refused.
        assert_eq!(limiter.charge(&0u8, 1001, 0), Ok(()));
        let refused = limiter.take(&0u8, 1, 0).expect_err("empty");
        assert_eq!(refused, Refused::Wait(Duration::from_millis(100)));
        // Once empty, a further charge is refused with the wait for one view.
        let refused = limiter.charge(&0u8, 1, 0).expect_err("empty");
        assert_eq!(refused, Refused::Wait(Duration::from_millis(100)));
        // No debt was taken on: a second later the bucket is full again.
        assert_eq!(limiter.take(&0u8, 10, SEC), Ok(()));
        // A small charge takes what it costs.
        assert_eq!(limiter.charge(&1u8, 4, 0), Ok(()));
        assert_eq!(limiter.take(&1u8, 6, 0), Ok(()));
        assert!(limiter.take(&1u8, 1, 0).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let limiter = Limiter::new(rate("5/s"));
        for client in 0..100u32 {
            assert_eq!(limiter.take(&client, 1, 0), Ok(()));
        }
        assert_eq!(limiter.clients(), 100);
        // Past the sweep interval every bucket is full again: all forgotten but the
        // one that just took.
        assert_eq!(limiter.take(&7, 1, 11 * SEC), Ok(()));
        assert_eq!(limiter.clients(), 1);
    }

    #[test]
    fn a_full_table_serves_new_clients_unlimited() {
        let limiter = Limiter::new(rate("1/m"));
        for client in 0..MAX_CLIENTS as u32 {
            assert_eq!(limiter.take(&client, 1, 0), Ok(()));
        }
        let newcomer = u32::MAX;
        assert_eq!(limiter.take(&newcomer, 1, 0), Ok(()));
        assert_eq!(limiter.take(&newcomer, 1, 0), Ok(()), "not remembered");
        assert!(
            limiter.take(&0, 1, 0).is_err(),
            "known clients stay limited"
        );
        assert_eq!(limiter.clients(), MAX_CLIENTS);
    }
}
