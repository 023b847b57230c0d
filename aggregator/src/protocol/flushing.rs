//! The flush side of [`Core`]: when a partition may be sealed, and what a flush
//! that committed changes.

use super::*;

/// A generation sealed for the flush, and where the partition's row goes.
#[derive(Debug)]
pub struct Seal<C> {
    pub gen: i64,
    /// The partition's `next_offset` the generation extends (`None`: the row has
    /// none yet): the flush adds it only to a row still there.
    pub from: Option<i64>,
    pub next_offset: i64,
    pub counts: Arc<C>,
}

impl<C: Tally> Core<C> {
    /// True when a flush may seal this partition: no flush of it is in flight and
    /// Redis holds nothing past what memory does.
    pub fn flushable(&self) -> bool {
        self.sealed.is_none() && self.caught_up()
    }

    /// True when Redis holds nothing of ours that memory does not (so the partition
    /// may be sealed once no flush of it is in flight).
    pub fn caught_up(&self) -> bool {
        match self.redis {
            Redis::Unfenced {
                frozen_to: Some(to),
                ..
            } => self.last_consumed() >= to,
            Redis::Unfenced { .. } | Redis::Replaying { .. } => false,
            _ => true,
        }
    }

    /// True when consumption moved past what is flushed or being flushed.
    pub fn has_progress(&self) -> bool {
        let sealed_to = self.sealed.as_ref().map(|s| s.next_offset);
        self.consumed_to > sealed_to.or(self.flushed_to)
    }

    /// Seals the current generation for a flush (counting moves on to the next), when
    /// [`Core::flushable`] and there is progress.
    pub fn seal(&mut self) -> Option<Seal<C>> {
        if !self.flushable() || !self.has_progress() {
            return None;
        }
        let next_offset = self.consumed_to.unwrap_or(0);
        let next = self.current.next_generation();
        let counts = Arc::new(std::mem::replace(&mut self.current, next));
        self.sealed = Some(Sealed {
            gen: self.gen,
            next_offset,
            counts: counts.clone(),
        });
        let seal = Seal {
            gen: self.gen,
            from: self.extends,
            next_offset,
            counts,
        };
        self.gen += 1;
        if let Redis::Writing { live, .. } = self.redis {
            self.redis = Redis::Writing { at: -1, live };
        }
        Some(seal)
    }

    /// Records a committed flush: generation `gen` (if it sealed one) up to
    /// `next_offset`, answering flush request `flush_seq`.
    pub fn flushed(&mut self, sealed_gen: Option<i64>, next_offset: i64, flush_seq: i64) {
        self.flush_seq = self.flush_seq.max(flush_seq);
        if sealed_gen.is_some() && self.sealed.as_ref().map(|s| s.gen) == sealed_gen {
            self.sealed = None;
            self.flushed_to = Some(next_offset);
            self.extends = Some(next_offset);
        }
    }

    /// Keys with counts not yet in Postgres.
    pub fn pending_keys(&self) -> usize {
        self.current.keys() + self.sealed.as_ref().map_or(0, |s| s.counts.keys())
    }
}
