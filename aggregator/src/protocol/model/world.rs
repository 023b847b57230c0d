//! The model world and the steps its parts can take.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;
use viewpipe_schema::pending::read::{self as rule, Flushed, Guard, PartitionView};

use super::stores::{Answer, Commit, Pg, Redis, Write};
use super::{Bits, Bound};
use crate::protocol::{Core, Fence, Redis as Known, Step};
use crate::store::pending::{Applied, TakeOver};

/// An aggregator owning the partition (as far as it knows).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Agg {
    core: Core<Bits>,
    /// The flush in flight: epoch, generation, next offset, counts.
    flight: Option<(i64, i64, i64, Bits)>,
    /// A batch (one offset) sent to Redis and not yet counted, with Redis' answer
    /// (`None`: none came). The shell counts it before it seals, restores or sends
    /// the next; the mark check does not wait for it.
    applying: Option<(i64, Option<Applied>)>,
}

/// A reader process: its guard, and the Redis half of a read in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Reader {
    guard: Guard<()>,
    redis_half: Option<Half>,
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
            if vouches || self.redis.live.is_some_and(|e| e > agg.core.epoch()) {
                out.push(Action::CheckMarks(i));
            }
            if agg.core.restore_due() && agg.flight.is_none() && agg.applying.is_none() {
                out.push(Action::Restore(i));
            }
        }
        if s.redis_faults < bound.redis_faults {
            if !self.paused {
                out.push(Action::PauseRedis);
            }
            out.push(Action::WipeRedis);
            if bound.failover && self.replica.is_some() {
                out.push(Action::PromoteReplica);
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
                        agg.flight = Some((epoch, seal.gen, seal.next_offset, *seal.counts));
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
                self.spent.redis_faults += 1;
                if let Some(replica) = self.replica.take() {
                    self.redis_lost |= replica != self.redis;
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
            Action::ReadRedis(r) => {
                self.spent.reads += 1;
                let healthy = self.vouched() && !self.redis_lost && !self.paused;
                self.readers[r].redis_half = Some(Half {
                    redis: self.redis.clone(),
                    healthy,
                    pg_epoch: self.pg.epoch,
                    floor: self.high,
                });
            }
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

    fn claim(&mut self, i: usize, bound: &Bound) {
        self.spent.claims += 1;
        let (epoch, flushed_gen, next_offset) = self.pg.claim();
        let fence = match self.send(Write::TakeOver {
            epoch,
            gen: flushed_gen + 1,
            owned_before: epoch > 1,
        }) {
            None => Fence::NoAnswer,
            Some(Answer::TakeOver(TakeOver::Applied(at), lost)) => fence_answer(at, lost, bound),
            Some(_) => {
                self.aggs[i] = None; // held
                return;
            }
        };
        let core = Core::claimed(epoch, flushed_gen, next_offset, fence);
        self.aggs[i] = Some(Agg {
            core,
            flight: None,
            applying: None,
        });
    }

    fn poll(&mut self, i: usize, reply: Reply) {
        if reply != Reply::Answered {
            self.spent.lost_replies += 1;
        }
        let Some(agg) = self.aggs[i].as_ref() else {
            return;
        };
        let core = &agg.core;
        let offset = core.consumed_to().unwrap_or(0);
        let write = match core.redis_prev() {
            Some(prev) if !core.replayed(offset) => Some(Write::Apply {
                epoch: core.epoch(),
                gen: core.gen(),
                prev,
                last: offset,
                n: 1,
            }),
            _ => None,
        };
        let Some(write) = write else {
            self.count(i, offset, Step::Go); // memory only
            return;
        };
        let answer = if self.paused {
            self.queue(write);
            None
        } else {
            match reply {
                Reply::Answered => Some(self.redis.run(&write)),
                Reply::LostThenRetried => {
                    self.redis.run(&write);
                    Some(self.redis.run(&write))
                }
                Reply::AppliedUnanswered => {
                    self.redis.run(&write);
                    None
                }
                Reply::Unanswered => None,
            }
        };
        let answer = match answer {
            Some(Answer::Applied(applied)) => Some(applied),
            _ => None,
        };
        if let Some(agg) = self.aggs[i].as_mut() {
            agg.applying = Some((offset, answer));
        }
    }

    fn land(&mut self, i: usize) {
        let Some((offset, answer)) = self.aggs[i].as_mut().and_then(|a| a.applying.take()) else {
            return;
        };
        let core = self.core(i);
        let step = match answer {
            Some(applied) => core.applied(offset, applied),
            None => core.unanswered(),
        };
        self.count(i, offset, step);
    }

    /// Counts the view at `offset` in memory, then follows `step`.
    fn count(&mut self, i: usize, offset: i64, step: Step) {
        let core = self.core(i);
        core.count(Bits::one(offset));
        core.consumed(offset);
        self.follow(i, step);
    }

    fn core(&mut self, i: usize) -> &mut Core<Bits> {
        &mut self.aggs[i]
            .as_mut()
            .expect("the aggregator owns the partition")
            .core
    }

    fn follow(&mut self, i: usize, step: Step) {
        if step == Step::Fenced {
            self.aggs[i] = None; // held
        }
    }

    fn commit(&mut self, i: usize, lost: bool) {
        let Some((epoch, gen, next_offset, counts)) = self.aggs[i].as_ref().and_then(|a| a.flight)
        else {
            return;
        };
        match self.pg.flush(epoch, gen, next_offset, &counts) {
            Commit::Done | Commit::AlreadyCommitted if lost => self.spent.lost_replies += 1,
            Commit::Done | Commit::AlreadyCommitted => {
                if let Some(agg) = self.aggs[i].as_mut() {
                    agg.flight = None;
                    agg.core.flushed(Some(gen), next_offset, 0);
                }
                self.send(Write::Drop { gen });
            }
            Commit::Fenced | Commit::Behind => self.aggs[i] = None,
        }
    }

    fn restore(&mut self, i: usize, bound: &Bound) {
        let Some(agg) = self.aggs[i].as_ref() else {
            return;
        };
        let epoch = agg.core.epoch();
        if self.pg.epoch != epoch {
            self.aggs[i] = None; // its claim is gone: held
            return;
        }
        let plan = agg.core.restore();
        let fence_gen = plan.fence_gen;
        let rewrites: Vec<Write> = plan
            .rewrites
            .iter()
            .map(|w| Write::Restore {
                epoch,
                gen: w.gen,
                last: w.last,
                live: w.live,
                n: w.counts.map_or(0, Bits::views),
            })
            .collect();
        if let Some(gen) = fence_gen {
            let owned_before = epoch > 1;
            let write = Write::TakeOver {
                epoch,
                gen,
                owned_before,
            };
            match self.send(write) {
                None => return,
                Some(Answer::TakeOver(TakeOver::Applied(at), lost)) => {
                    let fence = fence_answer(at, lost, bound);
                    if !self.core(i).fenced(fence) {
                        return;
                    }
                }
                Some(_) => {
                    self.aggs[i] = None;
                    return;
                }
            }
        }
        for write in rewrites {
            match self.send(write) {
                None => return,
                Some(Answer::Applied(Applied::Stale)) => {
                    self.aggs[i] = None;
                    return;
                }
                Some(_) => {}
            }
        }
        self.core(i).restored();
    }

    fn read_pg(&mut self, r: usize, bound: &Bound) -> Result<(), String> {
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
    fn vouched(&self) -> bool {
        self.aggs.iter().flatten().any(|a| {
            a.core.epoch() == self.pg.epoch
                && matches!(a.core.redis(), Known::Writing { live: true, .. })
        })
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

/// What the shell makes of a fence that got through (`Aggregator::fence_answer`): the
/// log's end is all of the model's log.
fn fence_answer(at: i64, lost: bool, bound: &Bound) -> Fence {
    if !lost {
        Fence::Done(at)
    } else {
        Fence::Unvouched {
            log_end: bound.events,
        }
    }
}

/// A part's place in the fixed order of [`World::step`].
fn key(part: &impl Hash) -> u64 {
    FixedState::with_seed(2).hash_one(part)
}

/// What a reader's atomic look at Redis returns for the partition.
fn redis_view(redis: &Redis) -> PartitionView {
    let hashes = redis.hashes.iter().flatten();
    PartitionView {
        partition: 0,
        live: redis.live,
        epoch: redis.epoch,
        gens: hashes
            .clone()
            .map(|h| (h.g, vec![i64::from(h.n)]))
            .collect(),
        applied: hashes.map(|h| (h.g, h.o)).collect(),
    }
}
