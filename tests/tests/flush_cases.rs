//! The flush cases of the design notes viewpipe grew from (a KV counter flushed to
//! Postgres with GETDEL + INCREMENT), rewritten for this design, against real Redis
//! and Postgres and read back through the same `Reader` the HTTP API uses:
//! increments during a flush are not lost, sequential and concurrent flushes add up,
//! zero counts are skipped, and flushed counts leave the pending state.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, TransactionTrait};

use viewpipe_schema::ContentKey;
use viewpipe_store::pending::{Layout, PendingFields, PendingStore};
use viewpipe_store::postgres::{self, KeyDelta, PartitionCommit, Scope};
use viewpipe_store::read::Reader;
use viewpipe_store::{KeyMessages, Message};
use viewpipe_tests::{redis_url, Stack};

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 19).expect("date")
}

struct Case {
    stack: Stack,
    scope: Scope,
    store: PendingStore,
    reader: Reader,
    key: ContentKey,
}

impl Case {
    /// A stack with partitions 0..3 claimed (epoch 1, generation 1) and marked live.
    async fn new() -> Self {
        let stack = Stack::start().await.expect("stack");
        let scope = Scope {
            group: stack.group.clone(),
            topic: "views".into(),
        };
        let conn = redis::Client::open(redis_url())
            .expect("redis url")
            .get_connection_manager()
            .await
            .expect("redis");
        let store = PendingStore::new(conn, Layout::new(&stack.redis_prefix).expect("prefix"));
        for p in 0..3 {
            postgres::claim(&stack.db, &scope, p).await.expect("claim");
            store
                .restore(p, 1, 1, -1, &HashMap::new())
                .await
                .expect("mark live");
        }
        let reader = Reader::new(stack.db.clone(), scope.clone(), Some(store.clone()));
        Self {
            stack,
            scope,
            store,
            reader,
            key: ContentKey::new("resource", "123"),
        }
    }

    /// Counts `offsets` of partition `p` in generation `gen` into Redis.
    async fn count(&self, p: i32, gen: i64, offsets: std::ops::Range<i64>) {
        let messages = offsets
            .map(|offset| Message {
                offset,
                day: day(),
                event_id: None,
            })
            .collect();
        self.store
            .apply(
                p,
                gen,
                1,
                &[KeyMessages {
                    key: self.key.clone(),
                    messages,
                }],
            )
            .await
            .expect("apply");
    }

    fn deltas(&self, total: i64) -> BTreeMap<String, KeyDelta> {
        [(self.key.as_str().to_owned(), delta(total))]
            .into_iter()
            .collect()
    }

    async fn flush(&self, p: i32, gen: i64, next_offset: i64, total: i64) {
        postgres::flush(
            &self.stack.db,
            &self.scope,
            &self.deltas(total),
            &[commit(p, gen, next_offset)],
        )
        .await
        .expect("flush");
    }

    async fn read(&self) -> i64 {
        self.reader.total(&self.key).await.expect("read")
    }

    async fn in_postgres(&self) -> Vec<(String, i64)> {
        self.stack
            .rows("SELECT key, total FROM view_counter_total ORDER BY key")
            .await
            .expect("rows")
    }
}

fn delta(total: i64) -> KeyDelta {
    KeyDelta {
        namespace: "resource".into(),
        entity_id: "123".into(),
        path: None,
        total,
        days: [(day(), total)].into_iter().collect(),
    }
}

fn commit(partition: i32, gen: i64, next_offset: i64) -> PartitionCommit {
    PartitionCommit {
        partition,
        epoch: 1,
        next_offset,
        gen,
        flush_seq: 0,
    }
}

#[tokio::test]
async fn views_counted_while_a_flush_is_in_progress_are_not_lost() {
    let case = Case::new().await;
    case.count(0, 1, 0..10).await;
    assert_eq!(case.read().await, 10);

    // Hold partition 0's row so the flush stalls inside its transaction.
    let blocker = case.stack.db.begin().await.expect("begin");
    blocker
        .execute_unprepared(&format!(
            "SELECT 1 FROM aggregator_partitions WHERE consumer_group = '{}' AND partition = 0 FOR UPDATE",
            case.scope.group
        ))
        .await
        .expect("lock");
    let flushing = {
        let (db, scope, deltas) = (case.stack.db.clone(), case.scope.clone(), case.deltas(10));
        tokio::spawn(
            async move { postgres::flush(&db, &scope, &deltas, &[commit(0, 1, 10)]).await },
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!flushing.is_finished(), "the flush waits for the row lock");
    // Three more views of the key arrive (on another partition) mid-flush.
    case.count(1, 1, 0..3).await;
    assert_eq!(case.read().await, 13, "read during the flush");
    blocker.commit().await.expect("release");
    flushing.await.expect("join").expect("flush");
    assert_eq!(case.read().await, 13, "read after the flush");
    assert_eq!(case.in_postgres().await, vec![("resource:123".into(), 10)]);

    case.flush(1, 1, 3, 3).await;
    assert_eq!(case.read().await, 13);
    assert_eq!(case.in_postgres().await, vec![("resource:123".into(), 13)]);
    println!("flush case: 3 views during a stalled flush kept; 13 of 13 in Postgres");
    case.stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn sequential_flushes_add_up() {
    let case = Case::new().await;
    case.count(0, 1, 0..10).await;
    case.flush(0, 1, 10, 10).await;
    case.count(0, 2, 10..15).await;
    case.flush(0, 2, 15, 5).await;
    assert_eq!(case.in_postgres().await, vec![("resource:123".into(), 15)]);
    assert_eq!(
        case.stack
            .rows("SELECT day::text, count FROM view_counter_daily")
            .await
            .expect("daily"),
        vec![(day().to_string(), 15)]
    );
    assert_eq!(case.read().await, 15);
    case.stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn concurrent_flushes_add_up() {
    let case = Case::new().await;
    case.flush(0, 1, 100, 100).await;
    // Two partitions' owners flush the same key at the same time, ten rounds.
    for round in 0..10 {
        let gen = round + 1;
        let (deltas, to) = (case.deltas(10), (round + 1) * 10);
        let (commit_a, commit_b) = ([commit(1, gen, to)], [commit(2, gen, to)]);
        let (a, b) = tokio::join!(
            postgres::flush(&case.stack.db, &case.scope, &deltas, &commit_a),
            postgres::flush(&case.stack.db, &case.scope, &deltas, &commit_b),
        );
        a.expect("flush a");
        b.expect("flush b");
    }
    assert_eq!(
        case.in_postgres().await,
        vec![("resource:123".into(), 100 + 10 * 20)]
    );
    case.stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn zero_counts_are_skipped() {
    let case = Case::new().await;
    let mut deltas = case.deltas(4);
    deltas.insert(
        "resource:zero".into(),
        KeyDelta {
            namespace: "resource".into(),
            entity_id: "zero".into(),
            total: 0,
            ..KeyDelta::default()
        },
    );
    if let Some(d) = deltas.get_mut("resource:123") {
        d.days.insert(day().pred_opt().expect("day"), 0);
    }
    let outcome = postgres::flush(&case.stack.db, &case.scope, &deltas, &[commit(0, 1, 4)])
        .await
        .expect("flush");
    assert_eq!((outcome.total_rows, outcome.daily_rows), (1, 1));
    assert_eq!(case.in_postgres().await, vec![("resource:123".into(), 4)]);
    assert_eq!(
        case.stack
            .rows("SELECT key, count FROM view_counter_daily")
            .await
            .expect("daily"),
        vec![("resource:123".into(), 4)]
    );
    case.stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn flushed_counts_leave_the_pending_state() {
    let case = Case::new().await;
    case.count(0, 1, 0..10).await;
    case.flush(0, 1, 10, 10).await;
    // Redis still holds generation 1, but it is flushed: counted once, via Postgres.
    assert_eq!(case.read().await, 10);
    // The next write of the partition drops the flushed generation's fields.
    case.count(0, 2, 10..12).await;
    let mut conn = case.store.connection();
    let raw: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(case.store.layout().counts(case.key.as_str()))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    let fields = PendingFields::parse(raw);
    assert_eq!(
        fields.totals,
        vec![(0, 2, 2)],
        "only the unflushed generation is left"
    );
    assert_eq!(case.read().await, 12);
    case.stack.cleanup().await.expect("cleanup");
}
