//! Two owners of one epoch: Postgres restored to before a claim hands the claim's
//! epoch out again, and when Redis lost the first claim's token too, nothing tells
//! the two owners apart by their claims. Their writes must still not add up.

use aggregator::store::pending::{Applied, Owner, PartitionBatch, TakeOver};
use aggregator::store::postgres::{self, FlushError, LogMarks, PartitionCommit, Scope};
use sea_orm::ConnectionTrait;
use viewpipe_tests::Stack;

use super::{batch, counts, store, KEY};

/// A sealing commit of partition 0 under `epoch`: generation `gen`, extending the
/// row's `next_offset` `extends` up to `next_offset`.
fn commit(epoch: i64, gen: i64, extends: i64, next_offset: i64) -> PartitionCommit {
    PartitionCommit {
        event_clock: None,
        partition: 0,
        epoch,
        next_offset,
        extends: Some(extends),
        gen,
        seals: true,
        flush_seq: 0,
        marks: LogMarks::default(),
    }
}

/// A flushes offsets 0..10; Postgres is restored to before A's claim; B is given
/// A's epoch and flushes 0..20 from the log's start; A, still running, flushes its
/// next generation 10..30 from memory. Its generation and epoch match the row, but
/// the position it extends (10) is not the row's (20): refused, and the key holds 20,
/// not 40.
#[tokio::test]
async fn a_flush_extends_only_the_position_it_was_counted_from() {
    let stack = Stack::start().await.expect("stack");
    let scope = Scope {
        group: stack.group.clone(),
        topic: "views".into(),
    };
    let a = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
    postgres::flush(
        &stack.db,
        &scope,
        &[&counts(10)],
        &[commit(a.epoch, 1, -1, 10)],
    )
    .await
    .expect("A flushes");
    stack
        .db
        .execute_unprepared(
            "DELETE FROM aggregator_partitions; DELETE FROM view_counter_total; \
             DELETE FROM view_counter_daily",
        )
        .await
        .expect("restore to before the claim");
    let b = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
    assert_eq!(b.epoch, a.epoch, "the restore hands the epoch out again");
    postgres::flush(
        &stack.db,
        &scope,
        &[&counts(20)],
        &[commit(b.epoch, 1, -1, 20)],
    )
    .await
    .expect("B flushes");
    let late = postgres::flush(
        &stack.db,
        &scope,
        &[&counts(20)],
        &[commit(a.epoch, 2, 10, 30)],
    )
    .await;
    assert!(
        matches!(late, Err(FlushError::Diverged { partition: 0, .. })),
        "{late:?}"
    );
    let rows = stack
        .rows("SELECT key, total FROM view_counter_total")
        .await
        .expect("rows");
    assert_eq!(rows, vec![(KEY.to_owned(), 20)], "counted once");
}

/// A fences and writes; Redis loses the partition (A's token with it); B, given
/// A's epoch by a restored Postgres, fences. A's next batch is refused: the fence
/// holds B's token.
#[tokio::test]
async fn a_batch_of_the_other_owner_of_an_epoch_is_refused() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    let (a, b) = (Owner { epoch: 1, token: 7 }, Owner { epoch: 1, token: 8 });
    let as_owner = |owner: Owner, prev, last, n| PartitionBatch {
        token: owner.token,
        ..batch(owner.epoch, 1, prev, last, n)
    };
    let fence = |owner| store.take_over_vouched(3, owner, 1);
    assert_eq!(fence(a).await.expect("fence").0, TakeOver::Applied(-1));
    let first = store.apply(&[as_owner(a, -1, 4, 5)]).await.expect("apply");
    assert!(matches!(first[..], [Applied::Added { .. }]), "{first:?}");

    let mut conn = store.connection();
    for key in store.keys().await.expect("keys") {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    assert_eq!(fence(b).await.expect("fence").0, TakeOver::Applied(-1));
    let late = store.apply(&[as_owner(a, -1, 9, 5)]).await.expect("apply");
    assert_eq!(late, vec![Applied::Stale], "A's batch after B's fence");
    let own = store.apply(&[as_owner(b, -1, 9, 10)]).await.expect("apply");
    assert!(matches!(own[..], [Applied::Added { .. }]), "{own:?}");
}
