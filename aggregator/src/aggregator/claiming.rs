//! Claiming a partition: a new epoch in Postgres, then a fence in Redis that tells
//! the protocol core how far Redis holds its current generation.

use super::*;
use crate::store::pending::Owner;

/// What fencing a partition in Redis found.
pub(super) enum Fencing {
    /// Fenced; Redis holds the generation up to this offset (-1: nothing); true when
    /// Redis lost the partition's counts since it was last marked live.
    Done(i64, bool),
    /// Redis answered that it takes no writes (out of memory); it still answers
    /// reads, and holds the partition's generations up to this offset (-1: none).
    Full(i64),
    /// Redis did not answer in time.
    NoAnswer,
    /// Not ours to write.
    Refused(Hold),
}

impl Aggregator {
    /// Claims a partition: in Postgres (new epoch; where to resume) and, with Redis,
    /// fences it there and learns how far its current generation reaches. Retries
    /// store errors until shutdown. A partition Redis knows a newer claim or flush
    /// of than Postgres does is not ours to write: it is held.
    /// Redis errors are retried for `patience` (the assign callback gives the first
    /// partition a second and the rest none once Redis did not answer: the group
    /// waits for the callback).
    pub fn claim(&self, partition: i32, patience: Duration) -> Claimed {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let stopped = || self.stopped();
        let Some(claim) = retry(
            "claiming a partition in Postgres",
            backoff,
            Until::Stopped(&stopped),
            || {
                let claim = postgres::claim(&self.db, &self.scope, partition);
                self.rt
                    .block_on(deadline::within(deadline::ROUND_TRIP, claim))
            },
        ) else {
            return Claimed::Stopped;
        };
        let owner = Owner {
            epoch: claim.epoch,
            token: claim.token,
        };
        match self.fence(partition, owner, claim.flushed_gen + 1, patience) {
            Fencing::Done(at, lost) => {
                let fence = self.fence_answer(partition, at, lost);
                Claimed::Owned(claim, fence)
            }
            Fencing::Full(to) => {
                tracing::warn!(
                    partition,
                    redis_at = to,
                    "Redis takes no writes (out of memory): counting this partition in memory, flushing once past what Redis holds of it"
                );
                Claimed::Owned(claim, protocol::Fence::Full { to })
            }
            Fencing::NoAnswer if self.stopped() => Claimed::Stopped,
            Fencing::NoAnswer => {
                tracing::warn!(
                    partition,
                    "Redis did not answer the claim: counting this partition in memory until it does"
                );
                Claimed::Owned(claim, protocol::Fence::NoAnswer)
            }
            Fencing::Refused(reason) => Claimed::Held(reason),
        }
    }

    /// Fences `partition` in Redis for `owner`, `gen` being the oldest generation
    /// Postgres has not flushed (see `PendingStore::take_over`); retries errors for
    /// `patience`.
    pub(super) fn fence(
        &self,
        partition: i32,
        owner: Owner,
        gen: i64,
        patience: Duration,
    ) -> Fencing {
        let epoch = owner.epoch;
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let full = std::cell::Cell::new(false);
        let Some(taken) = retry(
            "fencing a partition in Redis",
            backoff,
            Until::Deadline(Instant::now() + patience),
            || {
                let taken = self
                    .rt
                    .block_on(self.pending.take_over(partition, owner, gen));
                full.set(matches!(&taken, Err(e) if e.code() == Some("OOM")));
                taken
            },
        ) else {
            if !full.get() {
                return Fencing::NoAnswer;
            }
            // Refused, not unanswered: nobody's writes get in, so what Redis holds
            // now stays put until it takes writes again.
            let extent = self.pending.extent(partition, gen);
            return match self.rt.block_on(extent) {
                Ok(to) => Fencing::Full(to),
                Err(_) => Fencing::NoAnswer,
            };
        };
        match taken {
            (TakeOver::Applied(at), lost) => Fencing::Done(at, lost),
            (TakeOver::Stale, _) => Fencing::Refused(self.stale_reason(partition, epoch)),
            (TakeOver::Ahead(redis_gen), _) => {
                tracing::error!(
                    partition,
                    redis_gen,
                    postgres_gen = gen - 1,
                    "Redis holds generations Postgres never flushed"
                );
                Fencing::Refused(Hold::Behind)
            }
        }
    }

    /// Why Redis refused a write of our claim under `epoch` as stale: it knows a
    /// newer epoch, or another claim of ours. If Postgres' newest is still ours,
    /// nobody claimed after us: Postgres lost claims it had made (and may have handed
    /// our epoch out again).
    pub(super) fn stale_reason(&self, partition: i32, epoch: i64) -> Hold {
        let newest = self.rt.block_on(deadline::within(
            deadline::ROUND_TRIP,
            postgres::partition_epoch(&self.db, &self.scope, partition),
        ));
        match newest {
            Ok(newest) if newest == epoch => Hold::Behind,
            _ => Hold::Fenced,
        }
    }

    /// What a fence that got through means for the core: a partition whose counts
    /// Redis lost since it was last marked live is recounted up to the log's end
    /// (see [`protocol::Redis::Recounting`]).
    pub(super) fn fence_answer(&self, partition: i32, at: i64, lost: bool) -> protocol::Fence {
        if !lost {
            return protocol::Fence::Done(at);
        }
        match self.probe.bounds(partition) {
            Ok((_, log_end)) => {
                tracing::warn!(
                    partition,
                    log_end,
                    "Redis lost this partition's pending counts before its owner restored them; reads of it wait until it is recounted up to the log's end"
                );
                protocol::Fence::Unvouched { log_end }
            }
            Err(e) => {
                // Without the log's end the recount has no bound: fence again later.
                tracing::warn!(partition, error = %e, "cannot read the log's end; fencing again later");
                protocol::Fence::NoAnswer
            }
        }
    }
}
