//! The readers' steps: a read is two steps (Redis, then Postgres), with the real
//! read rule and guard between them, and the read invariants checked at its end.

use super::*;

/// A reader process: its guard, and the Redis half of a read in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Reader {
    pub(super) guard: Guard<()>,
    pub(super) redis_half: Option<Half>,
}

/// The Redis half of a read: what it saw, whether the owner vouched for a Redis
/// that lost nothing as it was read, and the highest read finished before it began
/// (the least it may answer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Half {
    /// What Redis held (made into the reader's view at the second half).
    redis: Redis,
    healthy: bool,
    /// Postgres' epoch then: a claim between the halves makes the real reader
    /// look again (not modelled: it is a new read).
    pg_epoch: i64,
    floor: u32,
}

impl World {
    /// The first half of a read: one atomic look at Redis.
    pub(super) fn read_redis(&mut self, r: usize) {
        self.spent.reads += 1;
        let healthy = self.vouched() && !self.redis_lost && !self.paused;
        self.readers[r].redis_half = Some(Half {
            redis: self.redis.clone(),
            healthy,
            pg_epoch: self.pg.epoch,
            floor: self.high,
        });
    }
    pub(super) fn read_pg(&mut self, r: usize, bound: &Bound) -> Result<(), String> {
        let Some(Half {
            redis,
            healthy,
            pg_epoch,
            floor,
        }) = self.readers[r].redis_half.take()
        else {
            return Ok(());
        };
        let gens = if self.pg.epoch > 0 {
            vec![Flushed {
                partition: 0,
                gen: self.pg.flushed_gen,
                next_offset: self.pg.next_offset.unwrap_or(-1),
                epoch: self.pg.epoch,
            }]
        } else {
            Vec::new()
        };
        let views = [redis_view(&redis)];
        match rule::check(&views, &gens, &mut self.readers[r].guard, ()) {
            Ok(()) => {
                let pending: i64 = rule::unflushed(&views, &gens).map(|v| v[0]).sum();
                let read = i64::from(self.pg.counted.views()) + pending;
                if read > bound.events {
                    return Err(format!(
                        "reader {r} read {read}: more views than the log holds"
                    ));
                }
                let read = read as u32;
                if read < floor && !self.pg_went_back {
                    return Err(format!(
                        "reader {r} read {read} after a read of {floor} had finished"
                    ));
                }
                self.high = self.high.max(read);
            }
            Err(_) => {
                // Healthy through the whole read: the real reader looks again
                // after a claim in between, and finds the new owner vouching.
                let steady = pg_epoch == self.pg.epoch;
                if healthy && steady && self.vouched() && !self.redis_lost && !self.paused {
                    return Err(format!(
                        "reader {r} answered recovering while the owner vouches for a Redis that lost nothing"
                    ));
                }
            }
        }
        self.check(bound)
    }

    /// True when the partition's owner (the newest claim) vouches for Redis.
    pub(super) fn vouched(&self) -> bool {
        self.aggs.iter().flatten().any(|a| {
            a.core.epoch() == self.pg.epoch
                && matches!(a.core.redis(), Known::Writing { live: true, .. })
        })
    }
}

/// What a reader's atomic look at Redis returns for the partition.
fn redis_view(redis: &Redis) -> PartitionView {
    let hashes = redis.hashes.iter().flatten();
    PartitionView {
        partition: 0,
        live: redis.live(),
        epoch: redis.epoch,
        gens: hashes
            .clone()
            .map(|h| (h.g, vec![i64::from(h.n)]))
            .collect(),
        applied: hashes.map(|h| (h.g, h.o)).collect(),
    }
}
