//! The Redis side of [`Core`]: batches, their answers, live-mark checks, fences
//! and restores.

use super::*;

/// One generation to rewrite in Redis: absolute values, applied up to `last`.
#[derive(Clone, Copy, Debug)]
pub struct Rewrite<'a, C> {
    pub gen: i64,
    pub last: i64,
    /// Mark the partition live with this write (the current generation's).
    pub live: bool,
    /// `None`: empty (the other parity cleared of whatever is not ours).
    pub counts: Option<&'a C>,
}

/// What a restore writes: first a fence for `fence_gen` if we are not fenced, then
/// the rewrites, in order.
#[derive(Debug)]
pub struct RestorePlan<'a, C> {
    pub fence_gen: Option<i64>,
    pub rewrites: Vec<Rewrite<'a, C>>,
}

impl<C: Tally> Core<C> {
    /// True when the message at `offset` is one Redis already holds (a predecessor
    /// counted it): it is counted in memory only.
    pub fn replayed(&self, offset: i64) -> bool {
        matches!(self.redis, Redis::Replaying { to } if offset <= to)
    }

    /// The offset Redis holds our generation up to, when a batch's fresh counts may be
    /// added there now (its compare-and-set `prev`); `None`: memory only.
    pub fn redis_prev(&self) -> Option<i64> {
        match self.redis {
            Redis::Replaying { to } => Some(to),
            Redis::Writing { at, .. } => Some(at),
            Redis::Unfenced { .. } | Redis::Restoring | Redis::Recounting { .. } => None,
        }
    }

    /// Records Redis' answer to a batch sent with [`Core::redis_prev`], ending at `last`.
    pub fn applied(&mut self, last: i64, outcome: Applied) -> Step {
        if outcome == Applied::Stale {
            return Step::Fenced;
        }
        if self.redis_prev().is_none() {
            // Redis was found to have lost our counts (or the partition is memory
            // only) after the batch was sent: its answer is older news.
            return Step::Go;
        }
        let live = matches!(self.redis, Redis::Writing { live: true, .. });
        match outcome {
            Applied::Added { live } => {
                self.redis = Redis::Writing { at: last, live };
                if live {
                    Step::Go
                } else {
                    self.lost()
                }
            }
            // In already (a retry after a lost reply) ...
            Applied::At(at) if at == last => {
                self.redis = Redis::Writing { at, live };
                Step::Go
            }
            // ... or someone counted further: re-count to there in memory.
            Applied::At(at) if at > last => {
                self.redis = Redis::Replaying { to: at };
                Step::Go
            }
            Applied::At(_) | Applied::Stale => self.lost(),
        }
    }

    /// Redis did not answer a batch: it is counted in memory and Redis rewritten.
    pub fn unanswered(&mut self) -> Step {
        self.lost()
    }

    /// Adds counted views to the current generation.
    pub fn count(&mut self, counts: C) {
        self.current.absorb(counts);
    }

    /// Records that offsets up to `last` were consumed.
    pub fn consumed(&mut self, last: i64) {
        self.consumed_to = Some(last + 1);
        match self.redis {
            Redis::Replaying { to } if last >= to => {
                self.redis = Redis::Writing {
                    at: to,
                    live: false,
                };
            }
            Redis::Recounting { to } if last >= to => self.redis = Redis::Restoring,
            _ => {}
        }
    }

    /// Records a look at the live mark (`mark`: its epoch) and how far Redis holds the
    /// current generation (`applied`).
    pub fn checked(&mut self, mark: Option<i64>, applied: Option<i64>) -> Step {
        if mark.is_some_and(|e| e > self.epoch) {
            return Step::Fenced;
        }
        let Redis::Writing { at, live: true } = self.redis else {
            return Step::Go;
        };
        if mark != Some(self.epoch) {
            return self.lost();
        }
        if at >= 0 && applied.is_none_or(|o| o < at) {
            // The mark survived but the counts went back: a lagging replica promoted,
            // an eviction.
            return self.lost();
        }
        Step::Go
    }

    fn lost(&mut self) -> Step {
        let was_live = matches!(self.redis, Redis::Writing { live: true, .. });
        if !matches!(
            self.redis,
            Redis::Unfenced { .. } | Redis::Recounting { .. }
        ) {
            self.redis = Redis::Restoring;
        }
        Step::Restore { was_live }
    }

    /// True when Redis is to be rewritten from memory: it lost our counts, was never
    /// fenced, or we have not vouched for it yet. Never while replaying or recounting.
    pub fn restore_due(&self) -> bool {
        matches!(
            self.redis,
            Redis::Unfenced { .. } | Redis::Restoring | Redis::Writing { live: false, .. }
        )
    }

    /// What a restore writes: the fence first if we never got one (for the oldest
    /// generation Postgres has not flushed), then both generation hashes: the sealed
    /// generation (or, without one, the flushed one, empty: readers skip it, and
    /// nothing another writer left in that hash survives), then the current one.
    pub fn restore(&self) -> RestorePlan<'_, C> {
        let fence_gen = matches!(self.redis, Redis::Unfenced { .. })
            .then(|| self.sealed.as_ref().map_or(self.gen, |s| s.gen));
        let other = match &self.sealed {
            Some(s) => Rewrite {
                gen: s.gen,
                last: s.next_offset - 1,
                live: false,
                counts: Some(&*s.counts),
            },
            None => Rewrite {
                gen: self.gen - 1,
                last: self.flushed_to.map_or(-1, |f| f - 1),
                live: false,
                counts: None,
            },
        };
        let rewrites = vec![
            other,
            Rewrite {
                gen: self.gen,
                last: self.last_consumed(),
                live: true,
                counts: Some(&self.current),
            },
        ];
        RestorePlan {
            fence_gen,
            rewrites,
        }
    }

    /// Records a late fence's answer (for an [`Redis::Unfenced`] partition). Redis
    /// holding the generation past what memory holds is a predecessor's work:
    /// replayed, not overwritten; a predecessor's lost work is recounted. Returns
    /// true when the restore goes on to rewrite Redis from memory now.
    pub fn fenced(&mut self, fence: Fence) -> bool {
        let Redis::Unfenced { new_log, .. } = self.redis else {
            return true;
        };
        if let Fence::Full { to } = fence {
            // Still unfenced; but nobody writes Redis now either.
            if !new_log {
                self.redis = Redis::Unfenced {
                    new_log,
                    frozen_to: Some(to),
                };
            }
            return false;
        }
        let (start, last) = (self.flushed_to.unwrap_or(0), self.last_consumed());
        self.redis = match fence {
            Fence::NoAnswer | Fence::Full { .. } => return false,
            _ if new_log => Redis::Restoring,
            Fence::Done(at) if at > last && at >= start => Redis::Replaying { to: at },
            Fence::Unvouched { log_end } if log_end - 1 > last => {
                Redis::Recounting { to: log_end - 1 }
            }
            Fence::Done(_) | Fence::Unvouched { .. } => Redis::Restoring,
        };
        self.redis == Redis::Restoring
    }

    /// Records that the restore's rewrites landed: Redis holds memory and is live.
    pub fn restored(&mut self) {
        self.redis = Redis::Writing {
            at: self.last_consumed(),
            live: true,
        };
    }
}
