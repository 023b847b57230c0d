//! The store's building blocks against real Redis and Postgres: the compare-and-set
//! apply that crash recovery and retries rely on, fencing and take-overs in Redis,
//! restoring after a loss, client ids, and the fenced, repeat-safe Postgres flush.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;

use aggregator::event_ids::{self, Sighting};
use aggregator::store::pending::{Applied, Owner, PartitionBatch, PendingStore, TakeOver};
use aggregator::store::postgres::{self, FlushError, LogMarks, PartitionCommit, Scope};
use aggregator::store::Counts;
use sea_orm::ConnectionTrait;
use viewpipe_schema::pending::Layout;
use viewpipe_tests::{redis_url, Stack};

mod ids;
mod restored;

const KEY: &str = "resource:stored";

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
}

fn counts(n: i64) -> Counts {
    let mut c = Counts::default();
    c.entry(KEY).add(day(), n);
    c
}

fn batch(epoch: i64, gen: i64, prev: i64, last: i64, n: i64) -> PartitionBatch {
    PartitionBatch {
        partition: 3,
        epoch,
        token: 0,
        gen,
        prev,
        last,
        live: true,
        counts: Arc::new(counts(n)),
    }
}

async fn store(stack: &Stack) -> PendingStore {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    PendingStore::new(
        viewpipe_runtime::redis_conn::RedisConn::Single(conn),
        Layout::new(&stack.redis_prefix, &stack.group, "views").expect("prefix"),
    )
}

async fn apply(store: &PendingStore, b: PartitionBatch) -> Applied {
    store.apply(&[b]).await.expect("apply").remove(0)
}

/// The fields of the hash holding `gen` of partition 3.
async fn fields(store: &PendingStore, gen: i64) -> BTreeMap<String, i64> {
    let mut conn = store.connection();
    redis::cmd("HGETALL")
        .arg(store.layout().gen(3, gen))
        .query_async(&mut conn)
        .await
        .expect("hgetall")
}

fn total_of(fields: &BTreeMap<String, i64>) -> i64 {
    fields.get(&format!("t:{KEY}")).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_batch_is_added_once_however_often_it_is_sent() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    assert_eq!(
        store.take_over(3, 1, 1).await.expect("fence"),
        TakeOver::Applied(-1)
    );
    assert_eq!(
        apply(&store, batch(1, 1, -1, 9, 10)).await,
        Applied::Added { live: true }
    );
    // The reply was lost and the batch is sent again: it is in already.
    assert_eq!(apply(&store, batch(1, 1, -1, 9, 10)).await, Applied::At(9));
    assert_eq!(
        apply(&store, batch(1, 1, 9, 14, 5)).await,
        Applied::Added { live: true }
    );
    assert_eq!(apply(&store, batch(1, 1, 9, 14, 5)).await, Applied::At(14));
    // A writer that believes Redis holds less or more than it does is told where it is.
    assert_eq!(apply(&store, batch(1, 1, 3, 20, 17)).await, Applied::At(14));
    let f = fields(&store, 1).await;
    assert_eq!(total_of(&f), 15, "15 offsets, each added once: {f:?}");
    assert_eq!(f.get(&format!("d:{KEY}:2026-11-20")), Some(&15));
    assert_eq!((f.get("@g"), f.get("@o")), (Some(&1), Some(&14)));
    println!("a batch sent twice, another twice, a third on a wrong base: 15 of 15 counted once");
}

/// A Postgres restored to before a claim hands its epoch out again. Redis knows the
/// first claim's token with the epoch, so the second claim's fence and restores are
/// refused as a newer epoch's would be; the first claim's retried fence is not.
#[tokio::test]
async fn a_second_claim_of_the_same_epoch_is_refused() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    let first = Owner { epoch: 1, token: 7 };
    let again = Owner { epoch: 1, token: 8 };
    let fence = |owner| store.take_over_vouched(3, owner, 1);
    assert_eq!(fence(first).await.expect("fence").0, TakeOver::Applied(-1));
    assert_eq!(
        fence(first).await.expect("retried fence").0,
        TakeOver::Applied(-1),
        "a fence sent again (its reply lost) is the same claim's"
    );
    assert_eq!(fence(again).await.expect("fence").0, TakeOver::Stale);
    let memory = [(format!("t:{KEY}"), 3)];
    assert_eq!(
        store
            .restore(3, again, 1, 2, true, &memory)
            .await
            .expect("restore"),
        Applied::Stale
    );
    assert_eq!(
        store
            .restore(3, first, 1, 2, true, &memory)
            .await
            .expect("restore"),
        Applied::Added { live: true }
    );
    // A newer epoch takes over whatever token held the older one.
    let newer = Owner { epoch: 2, token: 8 };
    assert_eq!(fence(newer).await.expect("fence").0, TakeOver::Applied(2));
    assert_eq!(
        store
            .restore(3, first, 1, 2, true, &memory)
            .await
            .expect("restore"),
        Applied::Stale
    );
}

#[tokio::test]
async fn redis_refuses_a_writer_that_lost_its_partition() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    store.take_over(3, 1, 1).await.expect("fence");
    apply(&store, batch(1, 1, -1, 4, 5)).await;
    // The new owner (epoch 2) fences; Redis tells it how far the generation reaches.
    assert_eq!(
        store.take_over(3, 2, 1).await.expect("fence"),
        TakeOver::Applied(4)
    );
    // The old owner, still running, is refused; so is a take-over older than the fence.
    assert_eq!(apply(&store, batch(1, 1, 4, 9, 5)).await, Applied::Stale);
    assert_eq!(
        store.take_over(3, 1, 1).await.expect("old fence"),
        TakeOver::Stale
    );
    assert_eq!(
        apply(&store, batch(2, 1, 4, 7, 3)).await,
        Applied::Added { live: true }
    );
    // Once generation 2 is written, generation 1 can no longer be.
    apply(&store, batch(2, 2, -1, 8, 1)).await;
    assert_eq!(apply(&store, batch(2, 1, 7, 9, 2)).await, Applied::Stale);
    assert_eq!(total_of(&fields(&store, 1).await), 8);
    assert_eq!(total_of(&fields(&store, 2).await), 1);
    println!("stale epoch and stale generation writes refused by Redis");
}

#[tokio::test]
async fn a_take_over_folds_the_generation_its_predecessor_started_into_the_flushed_one() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    // The old owner counted generation 1 (offsets 0..10), sealed it, and counted
    // generation 2 (10..15) before it died; the flush of generation 1 never committed.
    store.take_over(3, 1, 1).await.expect("fence");
    apply(&store, batch(1, 1, -1, 9, 10)).await;
    apply(&store, batch(1, 2, -1, 14, 5)).await;
    // The new owner continues generation 1 from Postgres' position: Redis folds
    // generation 2 into it (readers see the same 15) and says it reaches offset 14.
    assert_eq!(
        store.take_over(3, 2, 1).await.expect("fence"),
        TakeOver::Applied(14)
    );
    let g1 = fields(&store, 1).await;
    assert_eq!((total_of(&g1), g1.get("@o")), (15, Some(&14)));
    assert!(
        fields(&store, 2).await.is_empty(),
        "generation 2 folded away"
    );
    // Redis ahead of Postgres by more than a generation means Postgres went back.
    apply(&store, batch(2, 2, -1, 20, 1)).await;
    apply(&store, batch(2, 3, -1, 21, 1)).await;
    assert_eq!(
        store.take_over(3, 3, 1).await.expect("fence"),
        TakeOver::Ahead(3)
    );
}

#[tokio::test]
async fn restore_rewrites_lost_counts_from_memory() {
    let stack = Stack::start().await.expect("stack");
    let store = store(&stack).await;
    store.take_over(3, 1, 1).await.expect("fence");
    assert_eq!(
        apply(&store, batch(1, 1, -1, 9, 10)).await,
        Applied::Added { live: true }
    );
    assert_eq!(
        store.marks(&[(3, 1), (4, 1)]).await.expect("marks"),
        vec![(Some(1), Some(9)), (None, None)]
    );
    // Redis loses everything; the next batch finds nothing where it expected offset 9.
    stack.wipe_redis().await.expect("wipe");
    assert_eq!(apply(&store, batch(1, 1, 9, 11, 2)).await, Applied::At(-1));
    assert_eq!(
        store.marks(&[(3, 1)]).await.expect("marks"),
        vec![(None, None)]
    );
    // The owner's memory holds all 12; restoring writes them as they are and marks
    // the partition live again.
    let memory = counts(12).fields();
    assert_eq!(
        store
            .restore(3, Owner { epoch: 1, token: 0 }, 1, 11, true, &memory)
            .await
            .expect("restore"),
        Applied::Added { live: true }
    );
    let f = fields(&store, 1).await;
    assert_eq!((total_of(&f), f.get("@o")), (12, Some(&11)));
    assert_eq!(
        store.marks(&[(3, 1)]).await.expect("marks"),
        vec![(Some(1), Some(11))]
    );
    // Restoring twice changes nothing; the next batch builds on it.
    store
        .restore(3, Owner { epoch: 1, token: 0 }, 1, 11, true, &memory)
        .await
        .expect("again");
    assert_eq!(
        apply(&store, batch(1, 1, 11, 12, 1)).await,
        Applied::Added { live: true }
    );
    assert_eq!(total_of(&fields(&store, 1).await), 13);
    // A newer owner's counts are not overwritten by an old one's memory.
    store.take_over(3, 2, 1).await.expect("fence");
    assert_eq!(
        store
            .restore(3, Owner { epoch: 1, token: 0 }, 1, 11, true, &memory)
            .await
            .expect("stale"),
        Applied::Stale
    );
    println!("restore after loss: 12 of 12 views back, idempotent, fenced");
}

#[tokio::test]
async fn a_flush_under_an_old_epoch_writes_nothing_and_a_repeated_one_nothing_twice() {
    let stack = Stack::start().await.expect("stack");
    let scope = Scope {
        group: stack.group.clone(),
        topic: "views".into(),
    };
    let old = postgres::claim(&stack.db, &scope, 0)
        .await
        .expect("first claim");
    let new = postgres::claim(&stack.db, &scope, 0)
        .await
        .expect("takeover");
    assert_eq!(new.epoch, old.epoch + 1);
    let five = counts(5);
    let commit = |c: &aggregator::store::Claim| PartitionCommit {
        event_clock: None,
        partition: 0,
        epoch: c.epoch,
        next_offset: 5,
        extends: None,
        gen: c.flushed_gen + 1,
        seals: true,
        flush_seq: 0,
        marks: LogMarks {
            last: 11,
            anchor: Some((0, 22)),
            new_log: false,
        },
    };
    let refused = postgres::flush(&stack.db, &scope, &[&five], &[commit(&old)]).await;
    assert!(
        matches!(refused, Err(FlushError::Fenced(ref p)) if p == &vec![0]),
        "{refused:?}"
    );
    let rows = || stack.rows("SELECT key, total FROM view_counter_total");
    assert!(rows().await.expect("rows").is_empty());

    let first = postgres::flush(&stack.db, &scope, &[&five], &[commit(&new)])
        .await
        .expect("owner flush");
    assert!(!first.already_committed);
    // The commit's reply was lost; the aggregator sends the same flush again.
    let again = postgres::flush(&stack.db, &scope, &[&five], &[commit(&new)])
        .await
        .expect("repeat");
    assert!(again.already_committed);
    assert_eq!(rows().await.expect("rows"), vec![(KEY.to_owned(), 5)]);
    // A flush that builds on a position Postgres does not hold is refused.
    let skipped = PartitionCommit {
        gen: new.flushed_gen + 3,
        ..commit(&new)
    };
    let diverged = postgres::flush(&stack.db, &scope, &[&five], &[skipped]).await;
    assert!(
        matches!(diverged, Err(FlushError::Diverged { .. })),
        "{diverged:?}"
    );
    let after = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
    assert_eq!(
        (after.next_offset, after.flushed_gen),
        (Some(5), 1),
        "offset and generation moved with the counts"
    );
    assert_eq!(
        (after.last_mark, after.anchor),
        (Some(11), Some((0, 22))),
        "the log's marks were recorded"
    );
    // Later flushes move the last mark; the anchor stays until a new log replaces it.
    let later = |c: &aggregator::store::Claim, anchor: (i64, i64), new_log: bool| PartitionCommit {
        marks: LogMarks {
            last: 44,
            anchor: Some(anchor),
            new_log,
        },
        gen: c.flushed_gen + 1,
        epoch: c.epoch,
        ..commit(c)
    };
    let none = Counts::default();
    for (anchor, new_log, expected) in [((5, 33), false, (0, 22)), ((0, 66), true, (0, 66))] {
        let c = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
        postgres::flush(&stack.db, &scope, &[&none], &[later(&c, anchor, new_log)])
            .await
            .expect("flush");
        let c = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
        assert_eq!((c.last_mark, c.anchor), (Some(44), Some(expected)));
    }
    println!("old epoch refused; the same flush twice wrote 5, not 10");
}
