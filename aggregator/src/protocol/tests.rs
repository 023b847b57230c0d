//! The core's transitions, one case each. The interleavings are `model`'s.

use super::*;
use crate::store::pending::Applied;

/// Counts as a number of views, one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Views(u32);

impl Tally for Views {
    fn absorb(&mut self, other: Self) {
        self.0 += other.0;
    }

    fn keys(&self) -> usize {
        usize::from(self.0 > 0)
    }
}

fn claimed(next_offset: Option<i64>, fence: Fence) -> Core<Views> {
    Core::claimed(2, 4, next_offset, fence)
}

#[test]
fn a_claim_starts_the_next_generation_at_the_postgres_position() {
    let p = claimed(Some(10), Fence::Done(-1));
    assert_eq!(
        (p.gen(), p.flushed_to(), p.consumed_to()),
        (5, Some(10), Some(10))
    );
    assert!(!p.has_progress());
    assert!(p.flushable());
    assert_eq!(
        p.redis(),
        Redis::Writing {
            at: -1,
            live: false
        }
    );
}

#[test]
fn a_takeover_replays_what_redis_holds_before_it_may_flush() {
    let mut p = claimed(Some(10), Fence::Done(19));
    assert!(p.replayed(19) && !p.replayed(20));
    p.consumed(15);
    assert!(!p.flushable());
    assert!(p.seal().is_none());
    p.consumed(19);
    assert!(p.flushable());
    assert_eq!(p.redis_prev(), Some(19));
}

#[test]
fn a_leftover_below_the_position_is_written_over_not_added_to() {
    // The position was moved past what a predecessor left in Redis.
    assert_eq!(claimed(Some(10), Fence::Done(5)).redis(), Redis::Restoring);
    // A generation restored empty at the position is ours to continue.
    assert_eq!(
        claimed(Some(10), Fence::Done(9)).redis(),
        Redis::Writing { at: 9, live: false }
    );
}

#[test]
fn a_claim_redis_did_not_answer_counts_in_memory_and_does_not_flush() {
    let mut p = claimed(Some(10), Fence::NoAnswer);
    p.count(Views(3));
    p.consumed(12);
    assert_eq!(p.redis_prev(), None);
    assert!(p.restore_due());
    assert!(p.seal().is_none(), "a flush before the fence answers");
    assert_eq!(p.restore().fence_gen, Some(5));
}

#[test]
fn a_late_fence_finding_redis_ahead_replays_it_and_one_behind_is_rewritten() {
    let mut ahead = claimed(Some(10), Fence::NoAnswer);
    ahead.consumed(12);
    assert!(
        !ahead.fenced(Fence::Done(30)),
        "no rewrite over a predecessor's longer hash"
    );
    assert_eq!(ahead.redis(), Redis::Replaying { to: 30 });

    let mut behind = claimed(Some(10), Fence::NoAnswer);
    behind.consumed(12);
    assert!(behind.fenced(Fence::Done(11)));
    assert_eq!(behind.redis(), Redis::Restoring);
    behind.restored();
    assert_eq!(behind.redis(), Redis::Writing { at: 12, live: true });

    let mut new_log = claimed(None, Fence::NoAnswer);
    new_log.count_new_log(40);
    new_log.consumed(2);
    assert!(
        new_log.fenced(Fence::Done(30)),
        "an old log's counts are never replayed"
    );
}

#[test]
fn redis_answers_move_the_position_or_ask_for_a_restore() {
    let mut p = claimed(Some(10), Fence::Done(-1));
    assert_eq!(p.applied(12, Applied::Added { live: true }), Step::Go);
    assert_eq!(p.redis(), Redis::Writing { at: 12, live: true });
    assert_eq!(p.applied(14, Applied::At(14)), Step::Go, "a retried batch");
    assert_eq!(p.redis(), Redis::Writing { at: 14, live: true });
    assert_eq!(
        p.applied(16, Applied::At(10)),
        Step::Restore { was_live: true }
    );
    assert_eq!(p.redis(), Redis::Restoring);
    assert_eq!(p.redis_prev(), None);
    assert_eq!(p.applied(16, Applied::Stale), Step::Fenced);
}

#[test]
fn a_live_mark_that_went_away_or_went_back_is_restored() {
    let mut p = claimed(Some(10), Fence::Done(-1));
    p.applied(12, Applied::Added { live: true });
    assert_eq!(p.checked(Some(2), Some(12)), Step::Go);
    assert_eq!(
        p.checked(Some(2), Some(11)),
        Step::Restore { was_live: true }
    );
    let mut q = claimed(Some(10), Fence::Done(-1));
    q.applied(12, Applied::Added { live: true });
    assert_eq!(q.checked(None, None), Step::Restore { was_live: true });
    assert_eq!(q.checked(Some(3), None), Step::Fenced);
}

#[test]
fn a_seal_moves_on_a_generation_and_the_flush_lands_it() {
    let mut p = claimed(Some(10), Fence::Done(-1));
    p.count(Views(5));
    p.consumed(14);
    let seal = p.seal().expect("sealed");
    assert_eq!((seal.gen, seal.next_offset, seal.counts.0), (5, 15, 5));
    assert_eq!(p.gen(), 6);
    assert!(!p.flushable(), "one flush in flight at a time");
    let plan = p.restore();
    let gens: Vec<(i64, bool)> = plan.rewrites.iter().map(|w| (w.gen, w.live)).collect();
    assert_eq!(gens, vec![(5, false), (6, true)], "sealed, then current");
    p.flushed(Some(5), 15, 3);
    assert_eq!((p.flushed_to(), p.flush_seq()), (Some(15), 3));
    assert!(p.sealed().is_none() && !p.has_progress());
}

#[test]
fn a_restore_without_a_sealed_generation_clears_the_other_hash() {
    let p = claimed(Some(10), Fence::Done(-1));
    let plan = p.restore();
    let writes: Vec<(i64, i64, bool, bool)> = plan
        .rewrites
        .iter()
        .map(|w| (w.gen, w.last, w.live, w.counts.is_some()))
        .collect();
    assert_eq!(writes, vec![(4, 9, false, false), (5, 9, true, true)]);
}

#[test]
fn a_takeover_without_a_live_mark_recounts_to_the_log_end_before_vouching() {
    let mut p = claimed(Some(10), Fence::Unvouched { log_end: 20 });
    assert_eq!(p.redis(), Redis::Recounting { to: 19 });
    assert_eq!(p.redis_prev(), None, "memory only");
    assert!(!p.restore_due(), "no live mark before the recount");
    assert!(p.flushable());
    p.consumed(18);
    assert!(!p.restore_due());
    p.consumed(19);
    assert!(p.restore_due());
    assert_eq!(p.redis(), Redis::Restoring);
    // Nothing to recount: rewrite and vouch at once.
    assert_eq!(
        claimed(Some(10), Fence::Unvouched { log_end: 10 }).redis(),
        Redis::Restoring
    );
    // A late fence that finds the mark gone recounts too.
    let mut late = claimed(Some(10), Fence::NoAnswer);
    late.consumed(12);
    assert!(!late.fenced(Fence::Unvouched { log_end: 20 }));
    assert_eq!(late.redis(), Redis::Recounting { to: 19 });
}

#[test]
fn an_answer_to_a_batch_sent_before_a_loss_was_noticed_does_not_undo_it() {
    let mut p = claimed(Some(10), Fence::Done(-1));
    p.applied(12, Applied::Added { live: true });
    // A batch is sent; the mark check then finds the mark gone; the answer lands.
    assert_eq!(p.checked(None, None), Step::Restore { was_live: true });
    assert_eq!(p.applied(14, Applied::Added { live: true }), Step::Go);
    assert_eq!(p.redis(), Redis::Restoring, "still to be rewritten");
    assert_eq!(p.applied(16, Applied::Stale), Step::Fenced);
}

#[test]
fn a_claim_redis_refused_for_want_of_memory_flushes_once_past_what_it_holds() {
    let mut p = claimed(Some(10), Fence::Full { to: 14 });
    assert_eq!(p.redis_prev(), None, "memory only");
    p.consumed(13);
    assert!(!p.flushable(), "Redis still holds more than memory");
    p.consumed(14);
    assert!(p.flushable());
    assert!(p.restore_due());
    assert_eq!(
        p.restore().fence_gen,
        Some(5),
        "fenced before it is rewritten"
    );
}

#[test]
fn a_late_fence_refused_for_want_of_memory_lets_the_partition_flush_past_it() {
    let mut p = claimed(Some(10), Fence::NoAnswer);
    p.consumed(12);
    assert!(!p.flushable());
    assert!(!p.fenced(Fence::Full { to: 11 }));
    assert!(p.flushable(), "memory is past what the frozen Redis holds");
    assert_eq!(p.restore().fence_gen, Some(5), "still to be fenced");
}
