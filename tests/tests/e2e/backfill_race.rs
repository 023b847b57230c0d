//! A month's rebuild beside live flushes and other runs, interleaved on purpose
//! against a real Postgres: a flush that writes a new row of the month while the
//! rebuild runs cannot leave it beside the replay; a flush of another month does not
//! wait on the rebuild's total rows while the month's rows are written; a rebuild
//! keeps the paths of existing keys; and a run skips a month only for a rebuild that
//! read the replay at least as far as it did.
//!
//! The interleavings are forced by a blocker: a session holding an uncommitted
//! visitor row, which any transaction that writes that row waits for. The tests wait
//! for sessions to be seen waiting in `pg_stat_activity` before taking each step.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde_json::json;

use aggregator::store::backfill::{self, Month};
use aggregator::store::postgres::{
    self, FlushError, FlushOutcome, LogMarks, PartitionCommit, Scope,
};
use aggregator::store::Counts;
use viewpipe_schema::entities::JobStatus;
use viewpipe_tests::{eventually, Stack};

const KEY: &str = "resource:raced";
const REPLAY: &str = "views.replay";

fn scope(stack: &Stack) -> Scope {
    Scope {
        group: stack.group.clone(),
        topic: "views".into(),
    }
}

fn day_of(month: Month, day: u64) -> NaiveDate {
    month.first_day() + chrono::Days::new(day - 1)
}

/// A live flush of `counts` as partition 0's next generation.
async fn live_flush(
    db: &DatabaseConnection,
    scope: &Scope,
    counts: &Counts,
) -> Result<FlushOutcome, FlushError> {
    let c = postgres::claim(db, scope, 0).await?;
    let commit = PartitionCommit {
        partition: 0,
        epoch: c.epoch,
        next_offset: c.next_offset.unwrap_or(0) + 1,
        extends: None,
        gen: c.flushed_gen + 1,
        seals: true,
        flush_seq: 0,
        marks: LogMarks::default(),
        event_clock: None,
    };
    postgres::flush(db, scope, &[counts], &[commit]).await
}

/// An uncommitted visitor row of `key` and `day`: whoever writes that row waits until
/// the returned transaction ends.
async fn block_visitor_row(stack: &Stack, key: &str, day: NaiveDate) -> DatabaseTransaction {
    let txn = stack.db.begin().await.expect("begin");
    txn.execute(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "INSERT INTO view_visitors_daily (key, day, visitors, sketch) VALUES ($1, $2, 0, '')",
        vec![key.into(), day.into()],
    ))
    .await
    .expect("the blocking row");
    txn
}

/// Waits until `n` sessions of the test's database wait for a lock.
async fn until_waiting(stack: &Stack, n: i64) {
    let what = format!("{n} sessions waiting for a lock");
    eventually(Duration::from_secs(20), &what, || async {
        let rows = stack
            .rows(
                "SELECT 'waiting', count(*)::int8 FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
            .expect("pg_stat_activity");
        let waiting = rows.first().map_or(0, |r| r.1);
        if waiting >= n {
            Ok(())
        } else {
            Err(format!("{waiting} waiting"))
        }
    })
    .await;
}

/// The daily rows of `month`, as `key|day` and count.
async fn month_rows(stack: &Stack, month: Month) -> Vec<(String, i64)> {
    stack
        .rows(&format!(
            "SELECT key || '|' || day::text, count FROM view_counter_daily
             WHERE day >= '{}' AND day < '{}' ORDER BY key, day",
            month.first_day(),
            month.next().first_day()
        ))
        .await
        .expect("daily rows")
}

/// Every key's total row, as `key=path` and total.
async fn totals_with_paths(stack: &Stack) -> Vec<(String, i64)> {
    stack
        .rows(
            "SELECT key || '=' || COALESCE(path, ''), total FROM view_counter_total
             ORDER BY key",
        )
        .await
        .expect("total rows")
}

/// A flush commits a new daily row of the month after the rebuild's transaction
/// began. Before the month lock, the rebuild's DELETE did not see the row, its
/// upsert then added the replay's views onto it, and the month held the flush's
/// views beside the replay's right after the rebuild committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_racing_a_rebuild_leaves_nothing_beside_the_replay() {
    let stack = Stack::start().await.expect("stack");
    let scope = scope(&stack);
    let month: Month = "2024-05".parse().expect("month");
    let day = day_of(month, 10);
    let job = backfill::create_job(&stack.db, month, REPLAY)
        .await
        .expect("job");
    let mut live = Counts::default();
    for visitor in 1..=3 {
        live.add_view(KEY, day, Some("/live"), Some(visitor));
    }
    let mut replay = Counts::default();
    for _ in 0..5 {
        replay.add(KEY, day, Some("/live"));
    }

    let blocker = block_visitor_row(&stack, KEY, day).await;
    let flush = tokio::spawn({
        let (db, scope) = (stack.db.clone(), scope.clone());
        async move { live_flush(&db, &scope, &live).await }
    });
    // The flush wrote its new daily row and waits for the visitor row.
    until_waiting(&stack, 1).await;
    let rebuild = tokio::spawn({
        let db = stack.db.clone();
        async move {
            let result = |_: &backfill::Rebuilt| json!({"outcome": "rebuilt"});
            backfill::rebuild_month(&db, month, &replay, job, &result).await
        }
    });
    // The rebuild's transaction began and waits for the flush.
    until_waiting(&stack, 2).await;
    blocker.rollback().await.expect("let the flush go");
    flush.await.expect("flush task").expect("flush");
    let rebuilt = rebuild.await.expect("rebuild task").expect("rebuild");

    let daily = month_rows(&stack, month).await;
    let totals = totals_with_paths(&stack).await;
    println!(
        "flush racing a rebuild: live 3 views on {day}, replay 5; rebuild removed {} rows ({} views), wrote {}; month after {daily:?}, totals {totals:?}",
        rebuilt.rows_removed, rebuilt.views_removed, rebuilt.rows_written
    );
    assert_eq!(
        daily,
        vec![(format!("{KEY}|{day}"), 5)],
        "the month is the replay's"
    );
    assert_eq!(totals, vec![(format!("{KEY}=/live"), 5)], "total = Σ daily");
}

/// While the rebuild writes its month's daily and visitor rows, a flush of another
/// month of the same key goes through: the rebuild moves the key's total only at its
/// end. The rebuild keeps an existing key's (latest) path; a key new to the table
/// takes the replay's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_moves_totals_last_and_keeps_their_paths() {
    let stack = Stack::start().await.expect("stack");
    let scope = scope(&stack);
    let month: Month = "2024-07".parse().expect("month");
    let (day, later) = (day_of(month, 3), day_of(month.next(), 4));
    const NEW_KEY: &str = "resource:only-replayed";
    let mut seen = Counts::default();
    for _ in 0..3 {
        seen.add(KEY, day, Some("/now"));
    }
    live_flush(&stack.db, &scope, &seen).await.expect("seed");
    let job = backfill::create_job(&stack.db, month, REPLAY)
        .await
        .expect("job");
    let mut replay = Counts::default();
    for visitor in 1..=5 {
        replay.add_view(KEY, day, Some("/in-2024"), Some(visitor));
    }
    for _ in 0..2 {
        replay.add(NEW_KEY, day, Some("/first"));
    }
    let mut next_month = Counts::default();
    for _ in 0..2 {
        next_month.add(KEY, later, None);
    }

    let blocker = block_visitor_row(&stack, KEY, day).await;
    let rebuild = tokio::spawn({
        let db = stack.db.clone();
        async move {
            let result = |_: &backfill::Rebuilt| json!({"outcome": "rebuilt"});
            backfill::rebuild_month(&db, month, &replay, job, &result).await
        }
    });
    // The rebuild waits for the visitor row, its daily rows written.
    until_waiting(&stack, 1).await;
    let started = Instant::now();
    let mut flush = tokio::spawn({
        let (db, scope) = (stack.db.clone(), scope.clone());
        async move { live_flush(&db, &scope, &next_month).await }
    });
    let in_time = tokio::time::timeout(Duration::from_secs(3), &mut flush)
        .await
        .ok();
    let (waited, went_through) = (started.elapsed(), in_time.is_some());
    blocker.rollback().await.expect("let the rebuild go");
    rebuild.await.expect("rebuild task").expect("rebuild");
    let flushed = match in_time {
        Some(flushed) => flushed,
        None => flush.await,
    };
    flushed.expect("flush task").expect("flush");

    let daily = month_rows(&stack, month).await;
    let totals = totals_with_paths(&stack).await;
    println!(
        "totals last: a flush of {} while the rebuild of {month} waited {}; month after {daily:?}, totals {totals:?}",
        month.next(),
        if went_through {
            format!("went through in {waited:?}")
        } else {
            format!("was still waiting after {waited:?}")
        }
    );
    assert!(
        went_through,
        "a flush of another month waited on the rebuild's total row"
    );
    assert_eq!(
        daily,
        vec![(format!("{NEW_KEY}|{day}"), 2), (format!("{KEY}|{day}"), 5)],
        "the month is the replay's"
    );
    assert_eq!(
        totals,
        vec![(format!("{NEW_KEY}=/first"), 2), (format!("{KEY}=/now"), 7),],
        "totals moved by the difference; an existing key keeps its path"
    );
}

/// Records that job `id` read the replay's partitions to `read_to`, as a run does
/// before it asks whether to skip.
async fn read(stack: &Stack, id: uuid::Uuid, read_to: serde_json::Value) {
    let result = json!({"stage": "waiting for the month's lock", "readTo": read_to});
    backfill::update_job(&stack.db, id, JobStatus::Running, result, None)
        .await
        .expect("record the read");
}

/// Run A reads the replay, then events are published and run B reads them too; A
/// rebuilds first. B must not skip the month for A's rebuild, which lacks those
/// events. Run C, which read no further than A, still skips.
#[tokio::test]
async fn a_run_skips_only_a_rebuild_that_read_the_replay_as_far() {
    let stack = Stack::start().await.expect("stack");
    let month: Month = "2024-09".parse().expect("month");
    let a = backfill::create_job(&stack.db, month, REPLAY)
        .await
        .expect("job");
    read(&stack, a, json!({"0": 10, "1": 4})).await;
    let b = backfill::create_job(&stack.db, month, REPLAY)
        .await
        .expect("job");
    read(&stack, b, json!({"0": 12, "1": 4})).await;
    let c = backfill::create_job(&stack.db, month, REPLAY)
        .await
        .expect("job");
    read(&stack, c, json!({"0": 10, "1": 3})).await;

    let mut counts = Counts::default();
    counts.add(KEY, month.first_day(), None);
    let result = |_: &backfill::Rebuilt| json!({"outcome": "rebuilt", "readTo": {"0": 10, "1": 4}});
    backfill::rebuild_month(&stack.db, month, &counts, a, &result)
        .await
        .expect("rebuild A");

    let for_b = backfill::rebuilt_since(&stack.db, month, b)
        .await
        .expect("jobs");
    let for_c = backfill::rebuilt_since(&stack.db, month, c)
        .await
        .expect("jobs");
    println!(
        "skip rule: A read to {{0: 10, 1: 4}} and rebuilt; B read to {{0: 12, 1: 4}}: {for_b:?}; C read to {{0: 10, 1: 3}}: {for_c:?}"
    );
    assert_eq!(for_b, None, "B read events A never saw: it rebuilds");
    assert_eq!(for_c, Some(a), "C read nothing A did not: it skips");
}
