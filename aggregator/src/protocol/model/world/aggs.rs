//! The aggregators' steps: each drives its real [`Core`] through a claim, a batch,
//! a flush, a mark check or a restore, with the stores answering as the model's
//! fault budget allows.

use super::*;

/// An aggregator owning the partition (as far as it knows).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Agg {
    pub(super) core: Core<Bits>,
    /// Its claim's token (the claim's number): tells its fences from those of
    /// another claim given the same epoch.
    pub(super) token: u8,
    /// The flush in flight.
    pub(super) flight: Option<Flight>,
    /// A batch (one offset) sent to Redis and not yet counted, with Redis' answer
    /// (`None`: none came). The shell counts it before it seals, restores or sends
    /// the next; the mark check does not wait for it.
    pub(super) applying: Option<(i64, Option<Applied>)>,
}

/// A flush in flight: what its transaction sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Flight {
    pub(super) epoch: i64,
    pub(super) gen: i64,
    pub(super) from: Option<i64>,
    pub(super) next_offset: i64,
    pub(super) counts: Bits,
}

impl World {
    pub(super) fn claim(&mut self, i: usize, bound: &Bound) {
        self.spent.claims += 1;
        let token = self.spent.claims;
        let (epoch, flushed_gen, next_offset) = self.pg.claim();
        let fence = match self.send(Write::TakeOver {
            epoch,
            gen: flushed_gen + 1,
            owned_before: epoch > 1,
            token,
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
            token,
            flight: None,
            applying: None,
        });
    }

    pub(super) fn poll(&mut self, i: usize, reply: Reply) {
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
                token: agg.token,
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

    pub(super) fn land(&mut self, i: usize) {
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
    pub(super) fn count(&mut self, i: usize, offset: i64, step: Step) {
        let core = self.core(i);
        core.count(Bits::one(offset));
        core.consumed(offset);
        self.follow(i, step);
    }

    pub(super) fn core(&mut self, i: usize) -> &mut Core<Bits> {
        &mut self.aggs[i]
            .as_mut()
            .expect("the aggregator owns the partition")
            .core
    }

    pub(super) fn follow(&mut self, i: usize, step: Step) {
        if step == Step::Fenced {
            self.aggs[i] = None; // held
        }
    }

    pub(super) fn commit(&mut self, i: usize, lost: bool) {
        let Some(Flight {
            epoch,
            gen,
            from,
            next_offset,
            counts,
        }) = self.aggs[i].as_ref().and_then(|a| a.flight)
        else {
            return;
        };
        match self.pg.flush(epoch, gen, from, next_offset, &counts) {
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

    pub(super) fn restore(&mut self, i: usize, bound: &Bound) {
        let Some(agg) = self.aggs[i].as_ref() else {
            return;
        };
        let (epoch, token) = (agg.core.epoch(), agg.token);
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
                token,
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
                token,
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
