//! The flush cases of the design notes viewpipe grew from (a KV counter flushed to
//! Postgres with GETDEL + INCREMENT), rewritten for this design, against real Redis
//! and Postgres and read back through the same `Reader` the HTTP API uses:
//! increments during a flush are not lost, sequential and concurrent flushes add up,
//! zero counts are skipped, and flushed counts leave the pending state.

use std::sync::Arc;

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, TransactionTrait};

use aggregator::store::pending::{Owner, PartitionBatch, PendingStore};
use aggregator::store::postgres::{self, PartitionCommit, Scope};
use aggregator::store::Counts;
use ingest::read::pending::PendingReader;
use ingest::read::{ReadError, Reader};
use viewpipe_schema::pending::Layout;
use viewpipe_schema::ContentKey;
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
        let layout = Layout::new(&stack.redis_prefix, &scope.group, &scope.topic).expect("prefix");
        let store = PendingStore::new(
            viewpipe_runtime::redis_conn::RedisConn::Single(conn),
            layout,
        );
        for p in 0..3 {
            postgres::claim(&stack.db, &scope, p).await.expect("claim");
            store.take_over(p, 1, 1).await.expect("fence");
            store
                .restore(p, Owner { epoch: 1, token: 0 }, 1, -1, true, &[])
                .await
                .expect("mark live");
        }
        let pending = PendingReader::new(store.connection(), store.layout().clone());
        let reader = Reader::new(stack.db.clone(), scope.clone(), Some(pending));
        Self {
            stack,
            scope,
            store,
            reader,
            key: ContentKey::new("resource", "123"),
        }
    }

    /// Counts `offsets` of partition `p` into Redis, as the first batch of generation
    /// `gen`.
    async fn count(&self, p: i32, gen: i64, offsets: std::ops::Range<i64>) {
        let batch = PartitionBatch {
            partition: p,
            epoch: 1,
            token: 0,
            gen,
            prev: -1,
            last: offsets.end - 1,
            live: true,
            counts: Arc::new(self.counts(offsets.end - offsets.start)),
        };
        self.store.apply(&[batch]).await.expect("apply");
    }

    fn counts(&self, total: i64) -> Counts {
        let mut c = Counts::default();
        c.entry(self.key.as_str()).add(day(), total);
        c
    }

    async fn flush(&self, p: i32, gen: i64, next_offset: i64, total: i64) {
        postgres::flush(
            &self.stack.db,
            &self.scope,
            &[&self.counts(total)],
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

fn commit(partition: i32, gen: i64, next_offset: i64) -> PartitionCommit {
    PartitionCommit {
        partition,
        epoch: 1,
        next_offset,
        gen,
        seals: true,
        flush_seq: 0,
        ..PartitionCommit::default()
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
        let (db, scope, counts) = (case.stack.db.clone(), case.scope.clone(), case.counts(10));
        tokio::spawn(
            async move { postgres::flush(&db, &scope, &[&counts], &[commit(0, 1, 10)]).await },
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
}

#[tokio::test]
async fn concurrent_flushes_add_up() {
    let case = Case::new().await;
    case.flush(0, 1, 100, 100).await;
    // Two partitions' owners flush the same key at the same time, ten rounds.
    for round in 0..10 {
        let gen = round + 1;
        let (counts, to) = (case.counts(10), (round + 1) * 10);
        let (commit_a, commit_b) = ([commit(1, gen, to)], [commit(2, gen, to)]);
        let both = [&counts];
        let (a, b) = tokio::join!(
            postgres::flush(&case.stack.db, &case.scope, &both, &commit_a),
            postgres::flush(&case.stack.db, &case.scope, &both, &commit_b),
        );
        a.expect("flush a");
        b.expect("flush b");
    }
    assert_eq!(
        case.in_postgres().await,
        vec![("resource:123".into(), 100 + 10 * 20)]
    );
}

#[tokio::test]
async fn zero_counts_are_skipped() {
    let case = Case::new().await;
    let mut counts = case.counts(4);
    counts.entry("resource:zero");
    counts
        .entry("resource:123")
        .add(day().pred_opt().expect("day"), 0);
    let outcome = postgres::flush(&case.stack.db, &case.scope, &[&counts], &[commit(0, 1, 4)])
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
}

/// Sessions opened by `viewpipe_runtime::db::connect` (every service's pool) run
/// with JIT off (a flush's statements are large enough for the planner to compile
/// them, which took longer than running them) and with the deadlines that keep
/// nothing waiting forever.
#[tokio::test]
async fn connect_sets_jit_off_and_deadlines() {
    let stack = Stack::start().await.expect("stack");
    let url = stack.db_url.parse().expect("database url");
    let db = viewpipe_runtime::db::connect(&url, 1)
        .await
        .expect("connect");
    let row = db
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('jit') || ' ' || current_setting('statement_timeout')
                    || ' ' || current_setting('lock_timeout') AS s",
        ))
        .await
        .expect("settings")
        .expect("a row");
    let settings: String = row.try_get("", "s").expect("text");
    assert_eq!(settings, "off 30s 10s");
}

#[tokio::test]
async fn flushed_counts_leave_the_pending_state() {
    let case = Case::new().await;
    case.count(0, 1, 0..10).await;
    case.flush(0, 1, 10, 10).await;
    // Redis still holds generation 1, but it is flushed: counted once, via Postgres.
    assert_eq!(case.read().await, 10);
    case.count(0, 2, 10..12).await;
    assert_eq!(case.read().await, 12);
    case.flush(0, 2, 12, 2).await;
    // Generation 3 shares generation 1's hash: its first write drops what was left.
    case.count(0, 3, 12..13).await;
    let mut conn = case.store.connection();
    let left: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(case.store.layout().gen(0, 3))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    let total = left
        .iter()
        .find(|(f, _)| f == "t:resource:123")
        .map(|(_, n)| *n);
    assert_eq!(total, Some(1), "only generation 3 is left there: {left:?}");
    assert_eq!(case.read().await, 13);
}

/// Redis goes back under a live mark that survived (a lagging replica promoted: an
/// older copy of the generation; an eviction: the generation gone). A reader that
/// saw the newer counts answers "recovering" rather than fewer views, until the
/// owner has rewritten the partition from memory.
#[tokio::test]
async fn reads_never_go_back_when_redis_does_under_a_surviving_mark() {
    let case = Case::new().await;
    case.count(0, 1, 0..3).await;
    assert_eq!(case.read().await, 3);
    let hash = case.store.layout().gen(0, 1);
    let mut conn = case.store.connection();
    let older: Vec<u8> = redis::cmd("DUMP")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .expect("dump");
    let next = PartitionBatch {
        partition: 0,
        epoch: 1,
        token: 0,
        gen: 1,
        prev: 2,
        last: 9,
        live: true,
        counts: Arc::new(case.counts(7)),
    };
    case.store.apply(&[next]).await.expect("apply");
    assert_eq!(case.read().await, 10);

    // A replica that had only the first batch takes over; the live mark is there.
    let () = redis::cmd("RESTORE")
        .arg(&hash)
        .arg(0)
        .arg(older)
        .arg("REPLACE")
        .query_async(&mut conn)
        .await
        .expect("restore the older copy");
    let lagging = case.reader.total(&case.key).await;
    assert!(
        matches!(lagging, Err(ReadError::Recovering(ref p)) if p == &vec![0]),
        "a lagging replica is not read: {lagging:?}"
    );
    // Evicted altogether.
    let () = redis::cmd("DEL")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .expect("evict");
    let evicted = case.reader.total(&case.key).await;
    assert!(
        matches!(evicted, Err(ReadError::Recovering(_))),
        "an evicted generation is not read: {evicted:?}"
    );
    // The owner rewrites it from memory (its upkeep notices the offset went back);
    // past the second in which reads answer at once, the count is whole again.
    case.store
        .restore(
            0,
            Owner { epoch: 1, token: 0 },
            1,
            9,
            true,
            &case.counts(10).fields(),
        )
        .await
        .expect("owner restores");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(case.read().await, 10);
}
