//! The model world and the steps its parts can take: the aggregators' in
//! [`aggs`], the readers' in [`readers`].

mod aggs;
mod readers;

use aggs::{Agg, Flight};
use readers::Reader;

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;
use viewpipe_schema::pending::read::{self as rule, Flushed, Guard, PartitionView};

use super::stores::{Answer, Commit, Pg, Redis, Write};
use super::{Bits, Bound};
use crate::protocol::{Core, Fence, Redis as Known, Step};
use crate::store::pending::{Applied, TakeOver};

/// Budgets spent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Spent {
    claims: u8,
    redis_faults: u8,
    lost_replies: u8,
    reads: u8,
    pg_restores: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct World {
    pg: Pg,
    pg_backup: Option<Pg>,
    pg_went_back: bool,
    redis: Redis,
    replica: Option<Redis>,
    /// Redis takes no writes: they queue and run, unanswered, when it resumes.
    paused: bool,
    queued: Vec<Write>,
    /// Redis lost data (a wipe or a lagging replica promoted) at some point.
    redis_lost: bool,
    aggs: [Option<Agg>; 2],
    readers: [Reader; 2],
    /// The highest count any read answered.
    high: u32,
    spent: Spent,
}

/// How Redis answers a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Answered,
    /// Applied, the answer lost; the retry is answered.
    LostThenRetried,
    /// Applied, never answered.
    AppliedUnanswered,
    /// Not applied, never answered.
    Unanswered,
}

/// One step of one part of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Claim(usize),
    Poll(usize, Reply),
    /// The batch Redis was applying is counted.
    Land(usize),
    Seal(usize),
    /// The flush's transaction; `true`: its reply is lost.
    Commit(usize, bool),
    CheckMarks(usize),
    Restore(usize),
    PauseRedis,
    ResumeRedis,
    WipeRedis,
    SyncReplica,
    PromoteReplica,
    BackupPg,
    RestorePg,
    ReadRedis(usize),
    ReadPg(usize),
}

impl World {
    /// Every action possible from here within `bound`.
    pub fn actions(&self, bound: &Bound) -> Vec<Action> {
        let mut out = Vec::new();
        let s = &self.spent;
        for i in 0..2 {
            if s.claims < bound.claims {
                out.push(Action::Claim(i));
            }
            let Some(agg) = &self.aggs[i] else {
                continue;
            };
            if agg.applying.is_some() {
                out.push(Action::Land(i));
            } else if agg.core.consumed_to().unwrap_or(0) < bound.events {
                out.push(Action::Poll(i, Reply::Answered));
                if s.lost_replies < bound.lost_replies {
                    out.push(Action::Poll(i, Reply::LostThenRetried));
                    out.push(Action::Poll(i, Reply::AppliedUnanswered));
                    out.push(Action::Poll(i, Reply::Unanswered));
                }
            }
            match &agg.flight {
                None if agg.applying.is_none()
                    && agg.core.flushable()
                    && agg.core.has_progress() =>
                {
                    out.push(Action::Seal(i))
                }
                None => {}
                Some(_) => {
                    out.push(Action::Commit(i, false));
                    if s.lost_replies < bound.lost_replies {
                        out.push(Action::Commit(i, true));
                    }
                }
            }
            // A look at the marks changes something only for an owner that vouches,
            // or when a newer owner has marked the partition.
            let vouches = matches!(agg.core.redis(), Known::Writing { live: true, .. });
            if vouches || self.redis.live().is_some_and(|e| e > agg.core.epoch()) {
                out.push(Action::CheckMarks(i));
            }
            if agg.core.restore_due() && agg.flight.is_none() && agg.applying.is_none() {
                out.push(Action::Restore(i));
            }
        }
        if s.redis_faults < bound.redis_faults {
            if bound.failover {
                if self.replica.is_some() {
                    out.push(Action::PromoteReplica);
                }
            } else {
                if !self.paused {
                    out.push(Action::PauseRedis);
                }
                out.push(Action::WipeRedis);
            }
        }
        if self.paused {
            out.push(Action::ResumeRedis);
        }
        if bound.failover
            && s.redis_faults < bound.redis_faults
            && self.replica.as_ref() != Some(&self.redis)
        {
            out.push(Action::SyncReplica);
        }
        if s.pg_restores < bound.pg_restores {
            if self.pg_backup.is_none() {
                out.push(Action::BackupPg);
            } else {
                out.push(Action::RestorePg);
            }
        }
        for r in 0..2 {
            if self.readers[r].redis_half.is_some() {
                out.push(Action::ReadPg(r));
            } else if s.reads < bound.reads {
                out.push(Action::ReadRedis(r));
            }
        }
        out
    }

    /// Takes `action`, then puts the two aggregators and the two readers in a fixed
    /// order (they are alike, so a state and its mirror behave the same: exploring
    /// one of them is enough); returns the invariant the step broke, if any.
    pub fn step(&mut self, action: Action, bound: &Bound) -> Result<(), String> {
        let result = self.act(action, bound);
        if key(&self.aggs[1]) < key(&self.aggs[0]) {
            self.aggs.swap(0, 1);
        }
        if key(&self.readers[1]) < key(&self.readers[0]) {
            self.readers.swap(0, 1);
        }
        result
    }

    fn act(&mut self, action: Action, bound: &Bound) -> Result<(), String> {
        match action {
            Action::Claim(i) => self.claim(i, bound),
            Action::Poll(i, reply) => self.poll(i, reply),
            Action::Land(i) => self.land(i),
            Action::Seal(i) => {
                if let Some(agg) = self.aggs[i].as_mut() {
                    if let Some(seal) = agg.core.seal() {
                        let epoch = agg.core.epoch();
                        agg.flight = Some(Flight {
                            epoch,
                            gen: seal.gen,
                            from: seal.from,
                            next_offset: seal.next_offset,
                            counts: *seal.counts,
                        });
                    }
                }
            }
            Action::Commit(i, lost) => self.commit(i, lost),
            Action::CheckMarks(i) => {
                if let Some(agg) = self.aggs[i].as_mut() {
                    let (mark, applied) = self.redis.marks(agg.core.gen());
                    let step = agg.core.checked(mark, applied);
                    self.follow(i, step);
                }
            }
            Action::Restore(i) => self.restore(i, bound),
            Action::PauseRedis => {
                self.spent.redis_faults += 1;
                self.paused = true;
            }
            Action::ResumeRedis => {
                self.paused = false;
                for write in std::mem::take(&mut self.queued) {
                    self.redis.run(&write);
                }
            }
            Action::WipeRedis => {
                self.spent.redis_faults += 1;
                self.redis = Redis::default();
                self.redis_lost = true;
            }
            Action::SyncReplica => self.replica = Some(self.redis.clone()),
            Action::PromoteReplica => {
                // Marks written before the promotion no longer vouch, whatever the
                // replica holds: a fault even when it lost nothing.
                self.spent.redis_faults += 1;
                if let Some(mut replica) = self.replica.take() {
                    replica.id = self.redis.id.max(replica.id) + 1;
                    self.redis_lost = true;
                    self.redis = replica;
                }
            }
            Action::BackupPg => self.pg_backup = Some(self.pg.clone()),
            Action::RestorePg => {
                self.spent.pg_restores += 1;
                if let Some(backup) = self.pg_backup.take() {
                    self.pg_went_back |= backup != self.pg;
                    self.pg = backup;
                }
            }
            Action::ReadRedis(r) => self.read_redis(r),
            Action::ReadPg(r) => return self.read_pg(r, bound),
        }
        self.check(bound)
    }

    /// Sends a write; `None` while Redis is paused (it runs, unanswered, later).
    fn send(&mut self, write: Write) -> Option<Answer> {
        if self.paused {
            self.queue(write);
            return None;
        }
        Some(self.redis.run(&write))
    }

    /// Queues a write while Redis is paused. A write queued already is not queued
    /// again: each of them does nothing the second time (the scripts are
    /// idempotent), so the repeats of a retried restore add no behaviour.
    fn queue(&mut self, write: Write) {
        if !self.queued.contains(&write) {
            self.queued.push(write);
        }
    }

    /// The invariant over Postgres.
    fn check(&self, _bound: &Bound) -> Result<(), String> {
        let pg = &self.pg;
        if pg.counted.twice {
            return Err("Postgres counted a view twice".to_owned());
        }
        if pg.counted.set != Bits::below(pg.next_offset) {
            return Err(format!(
                "Postgres holds offsets {:#b}, not exactly those below next_offset {:?}",
                pg.counted.set, pg.next_offset
            ));
        }
        Ok(())
    }

    /// True once Postgres holds every view of the log.
    pub fn complete(&self, bound: &Bound) -> bool {
        self.pg.next_offset == Some(bound.events)
    }

    /// A line about the state, for traces.
    pub fn summary(&self) -> String {
        let aggs: Vec<String> = self
            .aggs
            .iter()
            .map(|a| match a {
                None => "-".to_owned(),
                Some(a) => format!(
                    "e{} g{} to {:?} {:?}{}",
                    a.core.epoch(),
                    a.core.gen(),
                    a.core.consumed_to(),
                    a.core.redis(),
                    if a.flight.is_some() { " flushing" } else { "" }
                ),
            })
            .collect();
        format!(
            "pg e{} gen {} next {:?} | redis e{} gen {} live {:?} {:?}{} | aggs [{}] | high {}",
            self.pg.epoch,
            self.pg.flushed_gen,
            self.pg.next_offset,
            self.redis.epoch,
            self.redis.gen,
            self.redis.live,
            self.redis.hashes,
            if self.paused { " PAUSED" } else { "" },
            aggs.join("; "),
            self.high,
        )
    }
}

/// A part's place in the fixed order of [`World::step`].
fn key(part: &impl Hash) -> u64 {
    FixedState::with_seed(2).hash_one(part)
}
