//! The stores as the model sees them: Postgres' partition row and counts, and Redis'
//! meta and generation hashes with the scripts' semantics (from
//! `crate::store::pending::scripts`), for one partition and one key.

use viewpipe_schema::pending::read as rule;

use crate::store::pending::{Applied, TakeOver};

use super::Bits;

/// Postgres: the partition row and which offsets the key's total holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Pg {
    /// 0: no row yet.
    pub epoch: i64,
    pub flushed_gen: i64,
    pub next_offset: Option<i64>,
    pub counted: Bits,
}

/// What a flush transaction answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Commit {
    Done,
    AlreadyCommitted,
    Fenced,
    Behind,
}

impl Pg {
    /// A claim: the row's epoch raised; where to resume.
    pub fn claim(&mut self) -> (i64, i64, Option<i64>) {
        self.epoch += 1;
        (self.epoch, self.flushed_gen, self.next_offset)
    }

    /// The fenced flush of generation `gen`, from `from` (the `next_offset` it
    /// extends) to `next_offset`.
    pub fn flush(
        &mut self,
        epoch: i64,
        gen: i64,
        from: Option<i64>,
        next_offset: i64,
        counts: &Bits,
    ) -> Commit {
        if self.epoch < epoch {
            return Commit::Behind;
        }
        if self.epoch > epoch {
            return Commit::Fenced;
        }
        if self.flushed_gen == gen && self.next_offset == Some(next_offset) {
            return Commit::AlreadyCommitted;
        }
        if self.flushed_gen != gen - 1 || self.next_offset != from {
            return Commit::Behind;
        }
        self.counted.absorb_bits(counts);
        self.flushed_gen = gen;
        self.next_offset = Some(next_offset);
        Commit::Done
    }
}

/// One generation hash: `@g`, `@o`, and the key's total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct GenHash {
    pub g: i64,
    pub o: i64,
    pub n: u32,
}

/// Redis' copy of the partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Redis {
    pub epoch: i64,
    pub gen: i64,
    pub live: Option<i64>,
    /// The replication id of this data set (a promoted replica starts a new one),
    /// and the one the fence or live mark was last written on (`replid`).
    pub id: u8,
    pub set_on: u8,
    /// The token of the claim that fenced it under `epoch` (0: none).
    pub owner: u8,
    /// Lost the partition's counts since it was last marked live (`recount`).
    pub recount: bool,
    /// By parity.
    pub hashes: [Option<GenHash>; 2],
}

/// A write sent to Redis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Write {
    Apply {
        epoch: i64,
        token: u8,
        gen: i64,
        prev: i64,
        last: i64,
        n: u32,
    },
    TakeOver {
        epoch: i64,
        gen: i64,
        owned_before: bool,
        token: u8,
    },
    Restore {
        epoch: i64,
        token: u8,
        gen: i64,
        last: i64,
        live: bool,
        n: u32,
    },
    Drop {
        gen: i64,
    },
}

/// What a write answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Applied(Applied),
    /// With whether `recount` is recorded.
    TakeOver(TakeOver, bool),
    Dropped,
}

fn slot(gen: i64) -> usize {
    gen.rem_euclid(2) as usize
}

impl Redis {
    pub fn run(&mut self, write: &Write) -> Answer {
        match *write {
            Write::Apply {
                epoch,
                token,
                gen,
                prev,
                last,
                n,
            } => Answer::Applied(self.apply(epoch, token, gen, prev, last, n)),
            Write::TakeOver {
                epoch,
                gen,
                owned_before,
                token,
            } => {
                let taken = self.take_over(epoch, gen, owned_before, token);
                Answer::TakeOver(taken, self.recount)
            }
            Write::Restore {
                epoch,
                token,
                gen,
                last,
                live,
                n,
            } => Answer::Applied(self.restore(epoch, token, gen, last, live, n)),
            Write::Drop { gen } => {
                if self.hashes[slot(gen)].is_some_and(|h| h.g == gen) {
                    self.hashes[slot(gen)] = None;
                }
                Answer::Dropped
            }
        }
    }

    /// True when a newer claim fenced the partition, or another claim given the same
    /// epoch (by a Postgres restored to before it) did.
    fn taken_by_another(&self, epoch: i64, token: u8) -> bool {
        epoch < self.epoch || (epoch == self.epoch && self.owner != 0 && self.owner != token)
    }

    fn raise(&mut self, epoch: i64, gen: i64, live: bool) {
        self.epoch = self.epoch.max(epoch);
        self.gen = self.gen.max(gen);
        if live {
            self.live = Some(epoch);
            self.set_on = self.id;
            self.recount = false;
        }
    }

    fn apply(&mut self, epoch: i64, token: u8, gen: i64, prev: i64, last: i64, n: u32) -> Applied {
        if self.epoch == 0 {
            return Applied::At(-1); // no meta hash
        }
        if self.taken_by_another(epoch, token) || gen < self.gen {
            return Applied::Stale;
        }
        if epoch > self.epoch {
            return Applied::At(-1); // our fence is not in this data set
        }
        let h = &mut self.hashes[slot(gen)];
        let hg = h.map_or(-1, |h| h.g);
        if hg > gen {
            return Applied::Stale;
        }
        let mut applied = -1;
        if hg == gen {
            applied = h.map_or(-1, |h| h.o);
        } else if hg >= 0 {
            *h = None;
        }
        if applied != prev {
            return Applied::At(applied);
        }
        let total = h.map_or(0, |h| h.n) + n;
        *h = Some(GenHash {
            g: gen,
            o: last,
            n: total,
        });
        // A batch marks the partition only on the data set its fence or mark was
        // written on: on a promoted replica, only a restore (which rewrites every
        // generation) vouches again.
        let mark = self.epoch == epoch && self.set_on == self.id;
        self.raise(epoch, gen, mark);
        Applied::Added {
            live: self.live() == Some(epoch),
        }
    }

    fn take_over(&mut self, epoch: i64, gen: i64, owned_before: bool, token: u8) -> TakeOver {
        if self.taken_by_another(epoch, token) {
            return TakeOver::Stale;
        }
        if self.gen > gen + 1 {
            return TakeOver::Ahead(self.gen);
        }
        // No meta hash, or one written on another data set: what readers saw may
        // be gone. A mark from there is void, and must not come back to life.
        let moved = self.set_on != self.id;
        if owned_before && (self.epoch == 0 || moved) {
            self.recount = true;
        }
        if moved {
            self.live = None;
        }
        self.set_on = self.id;
        let (mine, other) = (slot(gen), slot(gen + 1));
        if self.hashes[mine].is_some_and(|h| h.g != gen) {
            self.hashes[mine] = None;
        }
        if let Some(o) = self.hashes[other] {
            if o.g == gen + 1 {
                if let Some(h) = &mut self.hashes[mine] {
                    h.n += o.n;
                    h.o = o.o;
                }
            }
            self.hashes[other] = None;
        }
        self.epoch = epoch;
        self.gen = gen;
        self.owner = token;
        TakeOver::Applied(self.hashes[mine].map_or(-1, |h| h.o))
    }

    fn restore(
        &mut self,
        epoch: i64,
        token: u8,
        gen: i64,
        last: i64,
        live: bool,
        n: u32,
    ) -> Applied {
        if self.taken_by_another(epoch, token) {
            return Applied::Stale;
        }
        self.owner = token;
        self.live = None;
        self.hashes[slot(gen)] = Some(GenHash { g: gen, o: last, n });
        self.raise(epoch, gen, live);
        Applied::Added { live }
    }

    /// The live mark as a reader takes it: void when written on another data set.
    pub fn live(&self) -> Option<i64> {
        rule::live_mark(self.live, Some(self.set_on), Some(self.id))
    }

    /// The live mark, and how far generation `gen` is applied.
    pub fn marks(&self, gen: i64) -> (Option<i64>, Option<i64>) {
        let applied = self.hashes[slot(gen)].filter(|h| h.g == gen).map(|h| h.o);
        (self.live(), applied)
    }
}
