//! The protocol core: what one owned partition may do next, as a pure state machine.
//!
//! [`Core`] holds a partition's protocol state and its unflushed counts. Its methods
//! take what the outside said (a claim's answer, a batch, Redis' answer to a write,
//! a live-mark check, a flush's outcome) and return what to do next ([`Step`], or a
//! write plan); they perform no I/O and read no clock. The aggregator
//! (`crate::aggregator`) is the shell that performs the I/O and feeds the answers
//! back. The check in `model` (tests only) drives this same type through every
//! interleaving of two aggregators, the log, Redis, Postgres and two readers up to a
//! bound. `docs/exactly-once.md` is the long form; this is the argument.
//!
//! # Invariant
//! For every partition, Postgres holds exactly the events at offsets below
//! `aggregator_partitions.next_offset`, and nothing else from it.
//!
//! # Why it holds
//! - **One writer.** A claim bumps the partition row's `epoch`; every flush locks the
//!   row and writes only under the epoch it claimed ([`Core::seal`] carries it). An
//!   owner that lost the partition writes nothing more. A Postgres restored to before
//!   a claim hands its epoch out twice; a flush also names the `next_offset` it
//!   extends ([`Seal::from`]), so only one of two such owners adds each offset.
//! - **Counts and position together.** A flush adds a sealed generation (exactly the
//!   events from the previous `next_offset` up to the new one: memory is counted from
//!   the claimed position, each offset once) and moves `next_offset` in the same
//!   transaction. A commit whose reply was lost is recognised by its generation when
//!   sent again, and writes nothing twice.
//! - **Memory, not Redis, is flushed.** Whatever Redis loses, delays or refuses, the
//!   counts written to Postgres are the ones this process consumed.
//!
//! # Reads never go back
//! A reader adds to Postgres' count every pending Redis generation Postgres has not
//! flushed, when the partition carries a live mark (`viewpipe_schema::pending::read`).
//! That stays monotonic while Redis holds, for every unflushed generation, at least
//! what the generation's flush will write; the states below keep it so:
//! - [`Redis::Unfenced`]: the claim's fence got no answer, so a predecessor's
//!   generations may still be in Redis, marked live, reaching further than we have
//!   consumed. We count in memory only and **do not flush**: a flush would seal a
//!   generation shorter than the one readers add, and they would go back (or, once
//!   the predecessor's next generation is read beside our flushed one, count twice).
//! - [`Redis::Replaying`]: Redis holds this generation up to `to` (the predecessor's
//!   work). We re-count up to `to` in memory only and do not flush before passing it,
//!   for the same reason. A fence answered late (after [`Redis::Unfenced`]) is handled
//!   the same way: Redis ahead of memory is replayed, not overwritten.
//! - [`Redis::Writing`]: Redis holds our generation up to `at`, added by compare-and-
//!   set on that offset (a batch is added once however often it is sent). `live`: we
//!   have marked the partition live under our epoch.
//! - [`Redis::Restoring`]: Redis lost (part of) what we wrote, or holds another log's
//!   or position's counts: memory is rewritten there before anything else is written,
//!   which also marks the partition live again.
//!
//! A live mark vouches only on the data set it was written on (it names the server's
//! replication id): a promoted replica or a restarted server may hold the mark and
//! the fence under fewer counts than readers saw. There the mark is void to readers
//! and to our checks (so we restore), a batch cannot revive it, and a take-over
//! recounts as after a loss.
//!
//! A partition another owner fenced, or whose Postgres went back, ends our ownership:
//! the shell holds it (`crate::aggregator::Hold`) and counts nothing of it.

use std::sync::Arc;

use crate::store::pending::Applied;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

mod flushing;
mod writing;
pub use flushing::Seal;
pub use writing::{RestorePlan, Rewrite};

/// What the core needs of counts: adding a batch in, and how many keys wait.
pub trait Tally: Default {
    /// Adds `other` to these counts.
    fn absorb(&mut self, other: Self);
    /// Keys with counts (what a flush writes rows for).
    fn keys(&self) -> usize;
    /// Empty counts for the generation after these: room for as many keys spares
    /// growing the next generation step by step.
    fn next_generation(&self) -> Self {
        Self::default()
    }
}

/// What we know of Redis' copy of the partition's pending counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Redis {
    /// Not fenced for our epoch (the claim's fence got no answer): memory only, no
    /// flush, until a fence answers, or, when Redis refused the fence for want of
    /// memory, until past `frozen_to` (how far Redis held the partition then).
    /// `new_log`: the log was made anew, so whatever the fence finds is the old
    /// log's and is written over, never replayed.
    Unfenced {
        new_log: bool,
        frozen_to: Option<i64>,
    },
    /// Redis holds the current generation up to offset `to`, counted by a
    /// predecessor: offsets up to `to` are counted in memory only, and nothing is
    /// flushed before they are passed.
    Replaying { to: i64 },
    /// Redis holds the current generation up to `at` (-1: none of it); `live`: marked
    /// live under our epoch.
    Writing { at: i64, live: bool },
    /// Redis lost the partition's counts since it was last marked live (found at the
    /// take-over): readers may have seen up to anything a predecessor consumed. We count in
    /// memory only up to `to` (the log's last offset at the claim, past anything a
    /// predecessor can have consumed), then rewrite Redis and mark it live. Readers
    /// wait meanwhile rather than read less than before. Flushing goes on.
    Recounting { to: i64 },
    /// Redis must be rewritten from memory before it is written again.
    Restoring,
}

/// A generation handed to the flush, kept until Postgres has it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sealed<C> {
    pub gen: i64,
    /// One past its last offset: the partition's `next_offset` once it is flushed.
    pub next_offset: i64,
    pub counts: Arc<C>,
}

/// What the shell does after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing more.
    Go,
    /// Redis lost what we wrote: it is rewritten from memory ([`Core::restore`]) at
    /// the next upkeep. `was_live`: Redis had been vouched for (worth a warning).
    Restore { was_live: bool },
    /// Another owner claimed the partition: stop counting it.
    Fenced,
}

/// A fence's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Fenced; Redis holds the generation up to this offset (-1: nothing).
    Done(i64),
    /// Fenced, but Redis lost the partition's counts since an owner last marked it
    /// live: recount up to the log's end, `log_end` being one past its last offset
    /// at the claim.
    Unvouched { log_end: i64 },
    /// Redis did not answer in time.
    NoAnswer,
    /// Redis refuses every write (out of memory) and holds the generation up to
    /// `to`: nobody's writes get in, so that stays put until it takes writes again.
    Full { to: i64 },
}

/// One owned partition's protocol state and unflushed counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Core<C> {
    /// Our epoch from the claim.
    epoch: i64,
    /// The generation counts are gathered in (Postgres `flushed_gen` + 1, or + 2
    /// while the previous one is being flushed).
    gen: i64,
    /// Offsets below this are in Postgres; `None` until the first flush.
    flushed_to: Option<i64>,
    /// The row's `next_offset` the next flush extends: `flushed_to`, except for a
    /// new log, counted from its beginning while the row holds the old log's.
    extends: Option<i64>,
    /// One past the last offset consumed (counted, duplicate or invalid alike).
    consumed_to: Option<i64>,
    /// The current generation's views: exactly the events from the end of the sealed
    /// generation (or `flushed_to`) up to `consumed_to`.
    current: C,
    sealed: Option<Sealed<C>>,
    redis: Redis,
    /// The newest flush request our flushes answered.
    flush_seq: i64,
}

impl<C: Tally> Core<C> {
    /// A partition claimed at `next_offset` (`None`: never flushed) under `epoch`,
    /// after generation `flushed_gen`; `fence` is what fencing Redis answered, `None`
    /// without Redis at all (database-only mode).
    pub fn claimed(epoch: i64, flushed_gen: i64, next_offset: Option<i64>, fence: Fence) -> Self {
        let start = next_offset.unwrap_or(0);
        let redis = match fence {
            Fence::NoAnswer => Redis::Unfenced {
                new_log: false,
                frozen_to: None,
            },
            Fence::Full { to } => Redis::Unfenced {
                new_log: false,
                frozen_to: Some(to),
            },
            Fence::Unvouched { log_end } if log_end > start => {
                Redis::Recounting { to: log_end - 1 }
            }
            Fence::Unvouched { .. } => Redis::Restoring,
            // Our generation reaches at or past the position: a predecessor's work.
            Fence::Done(at) if at >= start => Redis::Replaying { to: at },
            // Nothing of it, or a generation emptied at `start` (a restore of nothing).
            Fence::Done(at) if at == -1 || at == start - 1 => Redis::Writing { at, live: false },
            // A leftover ending before the position (which was moved): not ours.
            Fence::Done(_) => Redis::Restoring,
        };
        Self {
            epoch,
            gen: flushed_gen + 1,
            flushed_to: next_offset,
            extends: next_offset,
            consumed_to: next_offset,
            current: C::default(),
            sealed: None,
            redis,
            flush_seq: 0,
        }
    }

    /// The log was made anew and is counted from its beginning: what Redis holds came
    /// from the old log, and memory is written over it. The row still holds the old
    /// log's position, `row`, which the first flush replaces (and so extends).
    pub fn count_new_log(&mut self, row: i64) {
        self.extends = Some(row);
        self.redis = match self.redis {
            // How far Redis held the old log says nothing of the new one.
            Redis::Unfenced { .. } => Redis::Unfenced {
                new_log: true,
                frozen_to: None,
            },
            _ => Redis::Restoring,
        };
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn gen(&self) -> i64 {
        self.gen
    }

    pub fn redis(&self) -> Redis {
        self.redis
    }

    pub fn consumed_to(&self) -> Option<i64> {
        self.consumed_to
    }

    pub fn flushed_to(&self) -> Option<i64> {
        self.flushed_to
    }

    pub fn flush_seq(&self) -> i64 {
        self.flush_seq
    }

    pub fn current(&self) -> &C {
        &self.current
    }

    pub fn sealed(&self) -> Option<&Sealed<C>> {
        self.sealed.as_ref()
    }

    fn last_consumed(&self) -> i64 {
        self.consumed_to.map_or(-1, |c| c - 1)
    }
}
