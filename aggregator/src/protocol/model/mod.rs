//! The exhaustive interleaving check of the protocol core.
//!
//! A model world: one partition whose log holds [`Bound::events`] views of one key,
//! two aggregators each driving a real [`Core`], Postgres (the partition row and the
//! key's count; lost COMMIT replies; a restore to an earlier backup), Redis (the
//! scripts' semantics; data loss; writes that go unanswered while it is paused and
//! run when it resumes; a lagging replica promoted), and two readers in different
//! processes applying the real read rule ([`viewpipe_schema::pending::read`]) with
//! their own guards. Every step any of them can take is explored depth-first, up
//! to the bound's budgets of claims, crashes and faults; after each step the
//! invariants are checked:
//! - Postgres holds exactly the views at offsets below `next_offset`, each once (no
//!   acknowledged view lost, none counted twice);
//! - no read counts more views than the log holds;
//! - no read is lower than an earlier read of either reader, unless Postgres went back;
//! - no read answers "recovering" while the partition's owner vouches for Redis and
//!   Redis lost nothing.
//!
//! The shell's timing (deadlines, retries, the flush interval) is not modelled: any
//! step may happen at any time, which covers every timing.

mod check;
mod stores;
mod world;

use super::Tally;

/// Which offsets a count holds; `twice` once any was added twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Bits {
    set: u16,
    twice: bool,
}

impl Bits {
    fn one(offset: i64) -> Self {
        Self {
            set: 1 << offset,
            twice: false,
        }
    }

    fn below(offset: Option<i64>) -> u16 {
        offset.map_or(0, |o| ((1u32 << o) - 1) as u16)
    }

    fn views(&self) -> u32 {
        self.set.count_ones()
    }

    fn absorb_bits(&mut self, other: &Bits) {
        self.twice |= other.twice || self.set & other.set != 0;
        self.set |= other.set;
    }
}

impl Tally for Bits {
    fn absorb(&mut self, other: Self) {
        self.absorb_bits(&other);
    }

    fn keys(&self) -> usize {
        usize::from(self.set != 0)
    }
}

/// How far the exploration goes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bound {
    pub events: i64,
    /// Claims by either aggregator. A claim by one that owned the partition already
    /// is a crash and restart (its memory is gone); an owner that never takes
    /// another step is a crash, or a process paused for good.
    pub claims: u8,
    pub redis_faults: u8,
    /// Whether the Redis faults are promotions of a lagging replica (else pauses and
    /// wipes).
    pub failover: bool,
    pub lost_replies: u8,
    /// Reads, by both readers together.
    pub reads: u8,
    pub pg_restores: u8,
}

impl Bound {
    /// What the test suite runs: two aggregators claiming up to twice between them
    /// over a log of two views, two reads, and one fault of Redis (a pause or a
    /// wipe) ...
    pub const REDIS_FAULT: Bound = Bound {
        events: 2,
        claims: 2,
        redis_faults: 1,
        failover: false,
        lost_replies: 0,
        reads: 2,
        pg_restores: 0,
    };

    /// ... or, in a second test, one lost reply (Redis' or a COMMIT's).
    pub const LOST_REPLY: Bound = Bound {
        redis_faults: 0,
        lost_replies: 1,
        ..Bound::REDIS_FAULT
    };

    /// ... or, in a third, a Postgres restore to an earlier backup (which hands an
    /// epoch out again).
    pub const POSTGRES_RESTORE: Bound = Bound {
        redis_faults: 0,
        pg_restores: 1,
        ..Bound::REDIS_FAULT
    };
    /// ... or, in a fourth, a lagging replica promoted.
    pub const FAILOVER: Bound = Bound {
        failover: true,
        ..Bound::REDIS_FAULT
    };

    /// `VIEWPIPE_MODEL_BOUND=deep`: a Redis fault and a lost reply in one run (the
    /// first two tests' deeper bound; the others add a fault to their own).
    pub const DEEP: Bound = Bound {
        redis_faults: 1,
        lost_replies: 1,
        ..Bound::REDIS_FAULT
    };
}
