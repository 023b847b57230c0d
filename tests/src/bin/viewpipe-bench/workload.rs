//! The events a benchmark run produces: which keys (Zipf or uniform), which days,
//! and which events carry a client-chosen `eventId`.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How keys are drawn.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// Zipf with exponent `s` over `n` keys: a few keys get most views.
    Zipf { n: usize, s: f64 },
    /// Every one of `n` keys equally likely.
    Uniform { n: usize },
}

impl Keys {
    pub fn describe(&self) -> String {
        match self {
            Keys::Zipf { n, s } => format!("Zipf({s}) over {}k keys", n / 1000),
            Keys::Uniform { n } => format!("uniform over {}k keys", n / 1000),
        }
    }
}

/// A stream of view events, deterministic for a seed.
#[derive(Clone, Debug)]
pub struct Workload {
    pub keys: Keys,
    pub events: usize,
    /// Share of events that carry a client-chosen (unique) `eventId`.
    pub id_share: f64,
    pub days: i64,
    pub seed: u64,
}

/// Draws from a Zipf distribution by binary search over its cumulative weights.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 1..=n {
            sum += 1.0 / (rank as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// One generated event: its Kafka key, value and timestamp.
pub struct Event {
    pub key: String,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
    pub key_index: usize,
    pub has_id: bool,
}

/// Generates a workload's events in order.
pub struct Generator {
    workload: Workload,
    rng: StdRng,
    zipf: Option<Zipf>,
    now: DateTime<Utc>,
    produced: usize,
}

impl Generator {
    pub fn new(workload: &Workload) -> Self {
        let zipf = match workload.keys {
            Keys::Zipf { n, s } => Some(Zipf::new(n, s)),
            Keys::Uniform { .. } => None,
        };
        Self {
            workload: workload.clone(),
            rng: StdRng::seed_from_u64(workload.seed),
            zipf,
            now: Utc::now(),
            produced: 0,
        }
    }

    /// A content id that looks like the UUIDs real clients send (36 characters).
    pub fn content_id(index: usize) -> String {
        let mixed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        format!("{mixed:08x}-0000-4000-8000-{index:012x}")
    }

    fn key_index(&mut self) -> usize {
        match (&self.zipf, self.workload.keys) {
            (Some(zipf), _) => zipf.sample(&mut self.rng),
            (None, Keys::Uniform { n }) => self.rng.random_range(0..n),
            (None, Keys::Zipf { .. }) => 0,
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.produced >= self.workload.events {
            return None;
        }
        let n = self.produced;
        self.produced += 1;
        let key_index = self.key_index();
        let day = self.rng.random_range(0..self.workload.days);
        let has_id =
            self.workload.id_share > 0.0 && self.rng.random::<f64>() < self.workload.id_share;
        let at = self.now - chrono::Duration::days(day) - chrono::Duration::minutes(1);
        let id = Self::content_id(key_index);
        let event_id = if has_id {
            format!(
                "\"eventId\":\"bench-{:08x}-{n:012x}\",",
                self.workload.seed as u32
            )
        } else {
            String::new()
        };
        let payload = format!(
            "{{\"v\":1,{event_id}\"contentType\":\"resource\",\"contentId\":\"{id}\",\"path\":\"/r/{id}\",\"sessionId\":null,\"occurredAt\":\"{}\",\"receivedAt\":\"{}\"}}",
            at.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.now.to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        Some(Event {
            key: format!("resource:{id}"),
            payload: payload.into_bytes(),
            timestamp_ms: at.timestamp_millis(),
            key_index,
            has_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_keys_and_stays_in_range() {
        let zipf = Zipf::new(1000, 1.1);
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<usize> = (0..10_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(draws.iter().all(|d| *d < 1000));
        let head = draws.iter().filter(|d| **d < 10).count();
        assert!(head > 3000, "the 10 first keys got {head} of 10000");
    }
}
