//! The store's building blocks against real Redis and Postgres: the idempotent
//! apply that crash recovery relies on, and the epoch fence of the flush.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use viewpipe_schema::ContentKey;
use viewpipe_store::pending::{Applied, Layout, PendingFields, PendingStore};
use viewpipe_store::postgres::{self, FlushError, KeyDelta, PartitionCommit, Scope};
use viewpipe_store::{KeyMessages, Message};
use viewpipe_tests::{redis_url, Stack};

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
}

fn messages(key: &ContentKey, offsets: std::ops::Range<i64>, ids: bool) -> KeyMessages {
    KeyMessages {
        key: key.clone(),
        messages: offsets
            .map(|offset| Message {
                offset,
                day: day(),
                event_id: ids.then(|| format!("e{offset}")),
            })
            .collect(),
    }
}

async fn store(prefix: &str) -> (PendingStore, redis::aio::ConnectionManager) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let conn = client.get_connection_manager().await.expect("redis");
    (
        PendingStore::new(conn.clone(), Layout::new(prefix).expect("prefix")),
        conn,
    )
}

async fn fields(
    conn: &mut redis::aio::ConnectionManager,
    layout: &Layout,
    key: &ContentKey,
) -> PendingFields {
    let raw: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(layout.counts(key.as_str()))
        .query_async(conn)
        .await
        .expect("hgetall");
    PendingFields::parse(raw)
}

#[tokio::test]
async fn replays_with_other_batch_boundaries_add_nothing_twice() {
    let stack = Stack::start().await.expect("stack");
    let (store, mut conn) = store(&stack.redis_prefix).await;
    let key = ContentKey::new("resource", "replayed");

    // A first owner applies offsets 0..10, then crashes before flushing.
    let flags = store
        .apply(3, 1, 1, &[messages(&key, 0..10, true)])
        .await
        .expect("apply");
    assert_eq!(flags, Applied::Flags(vec![vec![true; 10]]));
    // The next owner re-consumes from 0 in differently cut batches: 0..4, 4..15.
    let a = store
        .apply(3, 1, 1, &[messages(&key, 0..4, true)])
        .await
        .expect("replay a");
    let b = store
        .apply(3, 1, 1, &[messages(&key, 4..15, true)])
        .await
        .expect("replay b");
    let (Applied::Flags(a), Applied::Flags(b)) = (a, b) else {
        panic!("the owner's own epoch was refused");
    };
    assert!(
        a[0].iter().chain(&b[0]).all(|counted| *counted),
        "replayed messages still count"
    );
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(
        f.totals,
        vec![(3, 1, 15)],
        "15 distinct offsets, each applied once"
    );
    assert_eq!(f.days, vec![(3, 1, day(), 15)]);

    // The same eventId at a new offset is a duplicate; its first message is not.
    let mut dup = messages(&key, 15..16, false);
    dup.messages[0].event_id = Some("e2".into());
    let flags = store.apply(3, 1, 1, &[dup]).await.expect("duplicate");
    assert_eq!(flags, Applied::Flags(vec![vec![false]]));
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(f.totals, vec![(3, 1, 15)], "duplicate not counted");

    // Writing generation 2 drops generation 1's fields (Postgres has them by then).
    store
        .apply(3, 2, 1, &[messages(&key, 16..18, false)])
        .await
        .expect("gen 2");
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(f.totals, vec![(3, 2, 2)]);
    println!(
        "replay over 3 differently cut batches: 15 of 15 offsets counted once; 1 duplicate refused"
    );
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_flush_under_an_old_epoch_writes_nothing() {
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

    let mut deltas = BTreeMap::new();
    deltas.insert(
        "resource:fenced".to_owned(),
        KeyDelta {
            namespace: "resource".into(),
            entity_id: "fenced".into(),
            path: None,
            total: 5,
            days: [(day(), 5)].into_iter().collect(),
        },
    );
    let commit = |c: &viewpipe_store::Claim| PartitionCommit {
        partition: 0,
        epoch: c.epoch,
        next_offset: 5,
        gen: c.flushed_gen + 1,
        flush_seq: 0,
    };
    let refused = postgres::flush(&stack.db, &scope, &deltas, &[commit(&old)]).await;
    assert!(
        matches!(refused, Err(FlushError::Fenced(ref p)) if p == &vec![0]),
        "{refused:?}"
    );
    assert!(stack
        .rows("SELECT key, total FROM view_counter_total")
        .await
        .expect("rows")
        .is_empty());

    postgres::flush(&stack.db, &scope, &deltas, &[commit(&new)])
        .await
        .expect("owner flush");
    assert_eq!(
        stack
            .rows("SELECT key, total FROM view_counter_total")
            .await
            .expect("rows"),
        vec![("resource:fenced".to_owned(), 5)]
    );
    let again = postgres::claim(&stack.db, &scope, 0).await.expect("claim");
    assert_eq!(
        (again.next_offset, again.flushed_gen),
        (Some(5), 1),
        "offset and generation moved with the counts"
    );
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn redis_refuses_a_writer_that_lost_its_partition() {
    let stack = Stack::start().await.expect("stack");
    let (store, mut conn) = store(&stack.redis_prefix).await;
    let key = ContentKey::new("resource", "fenced-in-redis");

    // The old owner (epoch 1) counted offsets 0..5 in generation 1 and died.
    let old = store.apply(3, 1, 1, &[messages(&key, 0..5, false)]).await;
    assert!(matches!(old, Ok(Applied::Flags(_))), "{old:?}");
    // The new owner (epoch 2) re-counts them in the same generation: nothing doubles.
    let new = store.apply(3, 1, 2, &[messages(&key, 0..8, false)]).await;
    assert!(matches!(new, Ok(Applied::Flags(_))), "{new:?}");
    // The old owner, still running, is refused; so is any write to an older generation.
    let zombie = store.apply(3, 1, 1, &[messages(&key, 8..20, false)]).await;
    assert_eq!(zombie.expect("zombie"), Applied::Stale);
    store
        .apply(3, 2, 2, &[messages(&key, 8..9, false)])
        .await
        .expect("gen 2");
    let older_gen = store.apply(3, 1, 2, &[messages(&key, 9..10, false)]).await;
    assert_eq!(older_gen.expect("older gen"), Applied::Stale);

    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(
        f.totals,
        vec![(3, 2, 1)],
        "generation 1 was sealed and dropped"
    );
    println!("stale epoch and stale generation writes refused by Redis");
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_new_generation_counts_offsets_a_zombie_applied_to_the_old_one() {
    let stack = Stack::start().await.expect("stack");
    let (store, mut conn) = store(&stack.redis_prefix).await;
    let key = ContentKey::new("resource", "ahead");
    // A previous owner got as far as offset 9 in generation 1 before dying.
    store
        .apply(0, 1, 1, &[messages(&key, 0..10, true)])
        .await
        .expect("old owner");
    // The new owner flushed generation 1 at offset 6 and goes on in generation 2: the
    // offsets 6..10 must count there, although the hash has seen them.
    let flags = store
        .apply(0, 2, 2, &[messages(&key, 6..12, true)])
        .await
        .expect("new generation");
    assert_eq!(flags, Applied::Flags(vec![vec![true; 6]]));
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(f.totals, vec![(0, 2, 6)]);
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn restore_rewrites_lost_counts_from_memory() {
    let stack = Stack::start().await.expect("stack");
    let (store, mut conn) = store(&stack.redis_prefix).await;
    let key = ContentKey::new("course", "restored");
    store
        .apply(5, 3, 1, &[messages(&key, 0..10, false)])
        .await
        .expect("apply");
    // Redis loses everything; one more batch lands before the owner notices.
    let () = redis::cmd("DEL")
        .arg(store.layout().counts(key.as_str()))
        .query_async(&mut conn)
        .await
        .expect("del");
    store
        .apply(5, 3, 1, &[messages(&key, 10..12, false)])
        .await
        .expect("after loss");
    assert_eq!(
        fields(&mut conn, store.layout(), &key).await.totals,
        vec![(5, 3, 2)]
    );

    // The owner's memory holds all 12; restoring writes them as they are.
    let memory: std::collections::HashMap<String, KeyDelta> = [(
        key.as_str().to_owned(),
        KeyDelta {
            namespace: "course".into(),
            entity_id: "restored".into(),
            path: None,
            total: 12,
            days: [(day(), 12)].into_iter().collect(),
        },
    )]
    .into_iter()
    .collect();
    let restored = store.restore(5, 3, 1, 11, &memory).await.expect("restore");
    assert_eq!(restored, Applied::Flags(Vec::new()));
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(f.totals, vec![(5, 3, 12)]);
    assert_eq!(f.days, vec![(5, 3, day(), 12)]);
    assert_eq!(
        store.live_epochs(&[5, 6]).await.expect("marks"),
        vec![Some(1), None]
    );
    // Restoring twice, or replaying an offset afterwards, changes nothing.
    store.restore(5, 3, 1, 11, &memory).await.expect("again");
    store
        .apply(5, 3, 1, &[messages(&key, 11..12, false)])
        .await
        .expect("replay");
    assert_eq!(
        fields(&mut conn, store.layout(), &key).await.totals,
        vec![(5, 3, 12)]
    );
    // A newer owner's counts are not overwritten by an old one's memory.
    store
        .apply(5, 3, 2, &[messages(&key, 12..13, false)])
        .await
        .expect("new owner");
    assert_eq!(
        store.restore(5, 3, 1, 11, &memory).await.expect("stale"),
        Applied::Stale
    );
    println!("restore after loss: 12 of 12 views back, idempotent, fenced");
    stack.cleanup().await.expect("cleanup");
}
