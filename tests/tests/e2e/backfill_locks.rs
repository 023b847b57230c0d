//! The backfill's month locks against a real Postgres: the seeds' eight cases.
//! Advisory locks are server-wide, so every test takes months of a year of its own.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use aggregator::store::backfill::{self, Month, MonthLock};
use viewpipe_tests::Stack;

/// A month no other test (or run) uses.
fn month() -> Month {
    let year = 3000 + rand::random::<u16>() % 5000;
    format!("{year}-0{}", 1 + rand::random::<u8>() % 9)
        .parse()
        .expect("month")
}

const NOW: Duration = Duration::ZERO;

#[tokio::test]
async fn three_workers_on_one_month_one_wins() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let tries = (0..3).map(|_| MonthLock::acquire(&stack.db_url, m, NOW));
    let locks: Vec<Option<MonthLock>> = futures::future::try_join_all(tries).await.expect("tries");
    let winners = locks.iter().filter(|l| l.is_some()).count();
    assert_eq!(winners, 1, "exactly one of three workers holds {m}");
    for lock in locks.into_iter().flatten() {
        lock.release().await.expect("release");
    }
}

#[tokio::test]
async fn a_release_lets_the_next_worker_in() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let first = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .expect("first");
    assert!(MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .is_none());
    first.release().await.expect("release");
    let second = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try");
    assert!(
        second.is_some(),
        "the next worker gets {m} once it is released"
    );
    second.expect("second").release().await.expect("release");
}

/// A month's rebuild runs its large statements on the lock's session: without JIT,
/// like every other viewpipe session.
#[tokio::test]
async fn the_lock_session_runs_without_jit() {
    use sea_orm::ConnectionTrait;
    let stack = Stack::start().await.expect("stack");
    let lock = MonthLock::acquire(&stack.db_url, month(), NOW)
        .await
        .expect("try")
        .expect("the lock");
    let row = lock
        .db()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('jit') AS jit",
        ))
        .await
        .expect("setting")
        .expect("a row");
    let jit: String = row.try_get("", "jit").expect("text");
    lock.release().await.expect("release");
    assert_eq!(jit, "off");
}

#[tokio::test]
async fn a_worker_killed_with_minus_nine_releases_its_month() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let mut holder = tokio::process::Command::new(env!("CARGO_BIN_EXE_hold-month-lock"))
        .args([stack.db_url.as_str(), &m.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("holder");
    let stdout = holder.stdout.take().expect("stdout");
    let said = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read");
    assert_eq!(said.as_deref(), Some("locked"));
    assert!(backfill::is_locked(&stack.db, m).await.expect("is locked"));
    holder.start_kill().expect("kill -9");
    holder.wait().await.expect("reaped");
    let started = Instant::now();
    let lock = MonthLock::acquire(&stack.db_url, m, Duration::from_secs(10))
        .await
        .expect("try")
        .expect("the dead worker's lock went with its connection");
    println!("lock of a killed worker free after {:?}", started.elapsed());
    lock.release().await.expect("release");
}

#[tokio::test]
async fn an_error_inside_the_locked_section_still_releases() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let outcome = backfill::with_month_lock(&stack.db_url, m, NOW, |_db| async {
        Err::<(), _>("the rebuild failed")
    })
    .await
    .expect("lock");
    assert_eq!(outcome, Some(Err("the rebuild failed")));
    assert!(!backfill::is_locked(&stack.db, m).await.expect("is locked"));
    let again = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try");
    again
        .expect("free after the error")
        .release()
        .await
        .expect("release");
}

#[tokio::test]
async fn different_months_proceed_in_parallel() {
    let stack = Stack::start().await.expect("stack");
    let first = month();
    let months = [first, first.next(), first.next().next()];
    let tries = months.map(|m| MonthLock::acquire(&stack.db_url, m, NOW));
    let locks = futures::future::try_join_all(tries).await.expect("tries");
    assert!(
        locks.iter().all(Option::is_some),
        "each month has its own lock"
    );
    for lock in locks.into_iter().flatten() {
        lock.release().await.expect("release");
    }
}

#[tokio::test]
async fn a_lock_timeout_reports_a_skip_not_an_error() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let held = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .expect("held");
    let started = Instant::now();
    let waited = MonthLock::acquire(&stack.db_url, m, Duration::from_millis(700)).await;
    assert!(matches!(waited, Ok(None)), "a skip, not an error");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "waited the whole timeout"
    );
    held.release().await.expect("release");
}

#[tokio::test]
async fn is_locked_answers_while_held_and_after() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    assert!(!backfill::is_locked(&stack.db, m).await.expect("before"));
    let lock = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .expect("held");
    assert!(backfill::is_locked(&stack.db, m).await.expect("held"));
    assert!(!backfill::is_locked(&stack.db, m.next())
        .await
        .expect("other month"));
    lock.release().await.expect("release");
    assert!(!backfill::is_locked(&stack.db, m).await.expect("after"));
}

#[tokio::test]
async fn the_lock_listing_names_the_month_and_its_backend() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let lock = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .expect("held");
    let pid: i32 = sea_orm::ConnectionTrait::query_one(
        lock.db(),
        sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SELECT pg_backend_pid()"),
    )
    .await
    .expect("pid")
    .expect("row")
    .try_get_by_index(0)
    .expect("int");
    let held = backfill::held_locks(&stack.db).await.expect("listing");
    let mine: Vec<_> = held.iter().filter(|l| l.month == m).collect();
    assert_eq!(mine.len(), 1, "{held:?}");
    assert_eq!(mine[0].pid, pid, "the holding backend");
    lock.release().await.expect("release");
    let held = backfill::held_locks(&stack.db).await.expect("listing");
    assert!(held.iter().all(|l| l.month != m), "gone once released");
}

/// A run waiting for a month's lock decides from the month's jobs whether another run
/// rebuilt it meanwhile; so the rebuild must say so before its lock goes. (It once
/// wrote its job after the release, and overlapping runs both rebuilt February.)
#[tokio::test]
async fn a_rebuilt_month_says_so_before_its_lock_is_released() {
    let stack = Stack::start().await.expect("stack");
    let m = month();
    let ours = backfill::create_job(&stack.db, m, "views.replay")
        .await
        .expect("job");
    let waiting = backfill::create_job(&stack.db, m, "views.replay")
        .await
        .expect("job");
    let mut counts = aggregator::store::Counts::default();
    counts.add("resource:a", m.first_day(), None);
    let lock = MonthLock::acquire(&stack.db_url, m, NOW)
        .await
        .expect("try")
        .expect("lock");
    let result = |_: &backfill::Rebuilt| serde_json::json!({"outcome": "rebuilt"});
    backfill::rebuild_month(lock.db(), m, &counts, ours, &result)
        .await
        .expect("rebuild");
    // The lock is still held: what the waiting run will read once it gets it.
    let seen = backfill::rebuilt_since(&stack.db, m, waiting)
        .await
        .expect("jobs");
    assert_eq!(seen, Some(ours), "the waiting run sees {m} rebuilt");
    lock.release().await.expect("release");
}
