//! The backfill refusing pruned months, and the retention mark and the pruners'
//! lock under contention.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_refuses_months_retention_pruned_and_rebuilds_the_rest() {
    let stack = Stack::start().await.expect("stack");
    let at = |d: &str| -> DateTime<Utc> { format!("{d}T10:00:00Z").parse().expect("moment") };
    let views = |spec: &[(&str, &str, usize)]| -> Vec<(String, DateTime<Utc>)> {
        spec.iter()
            .flat_map(|(id, day, n)| std::iter::repeat_n((id.to_string(), at(day)), *n))
            .collect()
    };
    // Live counts of three months, flushed.
    let aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let live = views(&[
        ("k1", "2025-01-20", 7),
        ("k1", "2025-02-20", 5),
        ("k1", "2025-03-10", 3),
        ("k2", "2025-03-12", 2),
    ]);
    produce(&stack, "views", &live).await;
    stack
        .wait_flushed_total(17, Duration::from_secs(60))
        .await
        .expect("flushed");
    aggregator
        .stop(Duration::from_secs(20))
        .await
        .expect("stopped");

    // Retention as of 2025-03-01 with 14 days: rows before 2025-02-15 go.
    let settings = RetentionSettings {
        retain_daily_days: 14,
        retain_jobs_days: 0,
        retention_interval: Duration::from_secs(3600),
    };
    let as_of = at("2025-03-01");
    let run = aggregator::retention::prune(&stack.db, &settings, as_of, &Shutdown::default())
        .await
        .expect("prune");
    let feb15 = NaiveDate::from_ymd_opt(2025, 2, 15).expect("day");
    assert_eq!(run.daily_before, Some(feb15));
    assert_eq!(run.deleted_from(Table::CounterDaily), 1, "{run:?}");

    // The replay holds more than the live counts did, in every month.
    let replay = views(&[
        ("k1", "2025-01-20", 9),
        ("k1", "2025-02-20", 6),
        ("k1", "2025-03-10", 4),
        ("k2", "2025-03-12", 2),
    ]);
    produce(&stack, "views.replay", &replay).await;
    let (code, out, err) = stack
        .command(
            "aggregator",
            &["backfill", "--from", "2025-01", "--to", "2025-03"],
        )
        .await
        .expect("backfill");
    assert_eq!(code, 1, "some months refused: {out}\n{err}");
    for m in ["2025-01", "2025-02"] {
        assert!(
            out.contains(&format!(
                "{m}: refused: daily rows before 2025-02-15 were deleted by retention"
            )),
            "{m}: {out}"
        );
    }
    assert!(out.contains("2025-03: rebuilt"), "{out}");
    // Without the refusal, k1 would gain January's 9 replayed views a second time.
    let totals = stack.totals().await.expect("totals");
    assert_eq!(totals.get("resource:k1"), Some(&(15 - 3 + 4)), "{totals:?}");
    assert_eq!(totals.get("resource:k2"), Some(&2));
    let daily = daily_rows(&stack, "view_counter_daily", "true").await;
    let day = |d: &str| d.parse::<NaiveDate>().expect("day");
    let want: Daily = [
        (("resource:k1".to_owned(), day("2025-02-20")), 5),
        (("resource:k1".to_owned(), day("2025-03-10")), 4),
        (("resource:k2".to_owned(), day("2025-03-12")), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(daily, want, "February untouched, March rebuilt");
    let refused = stack
        .rows(
            "SELECT params->>'month', 0::int8 FROM jobs
             WHERE kind = 'backfill' AND status = 'failed' AND result->>'outcome' = 'refused'
               AND error LIKE '%RETAIN_DAILY_DAYS%' ORDER BY 1",
        )
        .await
        .expect("jobs");
    let refused: Vec<&str> = refused.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        refused,
        ["2025-01", "2025-02"],
        "the refusals are in the jobs"
    );

    // The rebuild checks the mark itself, in its transaction (not only the early
    // check of `aggregator backfill`).
    let feb: Month = "2025-02".parse().expect("month");
    let job = backfill::create_job(&stack.db, feb, "views.replay")
        .await
        .expect("job");
    let lock = MonthLock::acquire(&stack.db_url, feb, Duration::ZERO)
        .await
        .expect("try")
        .expect("lock");
    let mut counts = aggregator::store::Counts::default();
    counts.add("resource:k1", day("2025-02-20"), None);
    let result = |_: &backfill::Rebuilt| json!({"outcome": "rebuilt"});
    let direct = backfill::rebuild_month(lock.db(), feb, &counts, job, &result).await;
    lock.release().await.expect("release");
    assert!(
        matches!(
            direct,
            Err(backfill::RebuildError::Pruned { pruned_before, .. }) if pruned_before == feb15
        ),
        "{direct:?}"
    );
    assert_eq!(
        daily_rows(&stack, "view_counter_daily", "true").await,
        want,
        "nothing changed"
    );
    eprintln!(
        "retention backfill: mark {feb15} after pruning as of 2025-03-01 (1 row); backfill 2025-01..03 exit {code}: 2 months refused, March rebuilt 3 -> 4; k1 total {} (rebuilding January and February too would make it 16 + 9 + 1 = 26); a direct rebuild of February: {}",
        totals["resource:k1"],
        direct
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .split(" (RETAIN")
            .next()
            .unwrap_or_default()
    );
}

#[tokio::test]
async fn the_mark_waits_for_no_rebuild_and_one_pruner_runs_at_a_time() {
    let stack = Stack::start().await.expect("stack");
    let day = |d: &str| d.parse::<NaiveDate>().expect("day");
    let db = &stack.db;
    assert_eq!(retention::pruned_before(db).await.expect("mark"), None);
    assert_eq!(
        retention::raise_mark(db, day("2025-02-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-02-01"))
    );

    // A rebuild's transaction share-locks the mark: raising it neither waits nor moves it.
    let other = Database::connect(&stack.db_url).await.expect("connect");
    let rebuild = other.begin().await.expect("begin");
    assert_eq!(
        retention::mark_for_rebuild(&rebuild).await.expect("mark"),
        Some(day("2025-02-01"))
    );
    let started = Instant::now();
    let held = retention::raise_mark(db, day("2025-03-01"))
        .await
        .expect("raise");
    let waited = started.elapsed();
    assert_eq!(held, Raised::HeldAt(Some(day("2025-02-01"))));
    assert!(waited < Duration::from_secs(1), "did not wait: {waited:?}");
    rebuild.commit().await.expect("commit");
    assert_eq!(
        retention::raise_mark(db, day("2025-03-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-03-01"))
    );
    assert_eq!(
        retention::raise_mark(db, day("2025-01-01"))
            .await
            .expect("raise"),
        Raised::To(day("2025-03-01")),
        "never lowered"
    );

    // Another pruner's batch in progress: ours does nothing.
    db.execute_unprepared(
        "INSERT INTO visitor_salts (day, salt) VALUES ('2025-01-01', '\\x01'), ('2025-01-02', '\\x02')",
    )
    .await
    .expect("salts");
    let salts = Target::VisitorSalts {
        before: day("2025-02-01"),
    };
    let busy = other.begin().await.expect("begin");
    busy.execute_unprepared(&format!(
        "SELECT pg_try_advisory_xact_lock({}, 0)",
        retention::LOCK_CLASS
    ))
    .await
    .expect("lock");
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Busy
    );
    assert_eq!(
        retention::raise_mark(db, day("2025-04-01"))
            .await
            .expect("raise"),
        Raised::Busy
    );
    let settings = RetentionSettings {
        retain_daily_days: 7,
        retain_jobs_days: 7,
        retention_interval: Duration::from_secs(60),
    };
    let run = aggregator::retention::prune(db, &settings, Utc::now(), &Shutdown::default())
        .await
        .expect("prune");
    assert!(run.busy && run.deleted == [0; 4], "{run:?}");
    busy.commit().await.expect("commit");

    // Shutdown stops a run before its next batch.
    let stopped = Shutdown::default();
    stopped.trigger();
    let run = aggregator::retention::prune(db, &settings, Utc::now(), &stopped)
        .await
        .expect("prune");
    assert!(run.stopped && run.deleted == [0; 4], "{run:?}");

    // In batches: the limit holds, the rest goes next.
    assert_eq!(
        retention::delete_batch(db, salts, 1).await.expect("batch"),
        Batch::Deleted(1)
    );
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Deleted(1)
    );
    assert_eq!(
        retention::delete_batch(db, salts, 10).await.expect("batch"),
        Batch::Deleted(0)
    );
    eprintln!(
        "retention mark: raising it beside a rebuild's share lock answered {held:?} in {waited:?}; a busy pruner deleted nothing; batches of 1 then the rest"
    );
    other.close().await.ok();
}
