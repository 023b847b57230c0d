//! The store's building blocks against real Redis and Postgres: the idempotent
//! apply that crash recovery relies on, and the epoch fence of the flush.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use viewpipe_schema::ContentKey;
use viewpipe_store::pending::{Layout, PendingFields, PendingStore};
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
        .apply(3, 1, &[messages(&key, 0..10, true)])
        .await
        .expect("apply");
    assert_eq!(flags, vec![vec![true; 10]]);
    // The next owner re-consumes from 0 in differently cut batches: 0..4, 4..15.
    let a = store
        .apply(3, 1, &[messages(&key, 0..4, true)])
        .await
        .expect("replay a");
    let b = store
        .apply(3, 1, &[messages(&key, 4..15, true)])
        .await
        .expect("replay b");
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
    let flags = store.apply(3, 1, &[dup]).await.expect("duplicate");
    assert_eq!(flags, vec![vec![false]]);
    let f = fields(&mut conn, store.layout(), &key).await;
    assert_eq!(f.totals, vec![(3, 1, 15)], "duplicate not counted");

    // Writing generation 2 drops generation 1's fields (Postgres has them by then).
    store
        .apply(3, 2, &[messages(&key, 16..18, false)])
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
