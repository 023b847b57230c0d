//! Pruning beside live flushes: totals and recent days stay exact.

use super::*;
use viewpipe_tests::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_beside_live_flushes_keeps_totals_and_recent_days_exact() {
    let stack = Stack::start().await.expect("stack");
    let now = Utc::now();
    let today = now.date_naive();
    let cutoff = days_ago(today, RETAIN_DAILY);

    // History through the pipeline, counted by an aggregator that prunes nothing.
    let mut history = Vec::new();
    for i in 0..OLD_KEYS {
        for age in PRUNED_AGES {
            history.push((format!("old{i}"), moment(days_ago(today, age), now)));
        }
    }
    for i in 0..KEPT_KEYS {
        for age in KEPT_AGES {
            history.push((format!("old{i}"), moment(days_ago(today, age), now)));
        }
    }
    let first = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200"), ("RETAIN_JOBS_DAYS", "0")])
        .await
        .expect("aggregator");
    produce(&stack, "views", &history).await;
    stack
        .wait_flushed_total(history.len() as i64, Duration::from_secs(90))
        .await
        .expect("history flushed");
    first.stop(Duration::from_secs(20)).await.expect("stopped");

    // What no flush in this tree writes yet: visitor sketches (stand-in bytes),
    // salts, and jobs of every state and age.
    stack
        .db
        .execute_unprepared(&format!(
            "INSERT INTO view_visitors_daily (key, day, visitors, sketch)
             SELECT 'resource:old' || i, DATE '{today}' - a, 1 + i % 7, decode('00ff', 'hex')
             FROM generate_series(0, {}) i, unnest(ARRAY[40, 30, 20, 10, 3, 0]) a;
             INSERT INTO visitor_salts (day, salt)
             SELECT DATE '{today}' - a, decode(md5(a::text), 'hex')
             FROM unnest(ARRAY[5, 2, 1, 0, -1]) a;
             INSERT INTO jobs (kind, consumer_group, status, params, result, error,
                               created_at, finished_at) VALUES {}",
            OLD_KEYS - 1,
            JOBS.map(|(row, _, _)| row).join(", ")
        ))
        .await
        .expect("seed");
    let visitors_kept_before =
        daily_rows(&stack, "view_visitors_daily", &format!("day >= '{cutoff}'")).await;
    let totals_before = stack.totals().await.expect("totals");
    let kept_before = daily_rows(&stack, "view_counter_daily", &format!("day >= '{cutoff}'")).await;
    let pruned_before_rows = count(
        &stack,
        &format!("SELECT count(*) FROM view_counter_daily WHERE day < '{cutoff}'"),
    )
    .await;
    assert_eq!(pruned_before_rows, (OLD_KEYS * PRUNED_AGES.len()) as i64);
    let gone_job: String = stack
        .rows("SELECT id::text, 0::int8 FROM jobs WHERE params->>'tag' = 'flush-done-40d'")
        .await
        .expect("job id")[0]
        .0
        .clone();

    // The pruning aggregator, with views arriving all the while.
    let aggregator = stack
        .spawn_aggregator_process(&[
            ("FLUSH_INTERVAL_MS", "200"),
            ("RETAIN_DAILY_DAYS", &RETAIN_DAILY.to_string()),
            ("RETAIN_JOBS_DAYS", "30"),
            ("RETENTION_INTERVAL", "300ms"),
        ])
        .await
        .expect("pruning aggregator");
    let ingest = stack
        .spawn_ingest(&[("ADMIN_TOKEN", TOKEN)])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    // One view through, so that the aggregator holds its partitions before the
    // traffic starts (the first run has pruned the history's old days by then).
    let probe = live_view(1, today, now);
    let r = api
        .post(ingest.url("/api/views"))
        .json(&json!({"contentType": "resource", "contentId": probe.0,
                      "occurredAt": probe.1.to_rfc3339()}))
        .send()
        .await
        .expect("probe");
    assert_eq!(r.status().as_u16(), 202);
    let probe_sum = totals_before.values().sum::<i64>() + 1;
    stack
        .wait_flushed_total(probe_sum, Duration::from_secs(60))
        .await
        .expect("the probe flushed");
    let page = scrape(&aggregator).await;
    let pruned_daily_at_start = pruned_count(&page, Table::CounterDaily);
    let flushes_at_start = flush_stats(&page);

    // Live views over HTTP for TRAFFIC, and meanwhile bursts of late views straight to
    // the topic: each writes BURST_ROWS daily rows of pruned days, which the flushes
    // write and the pruner deletes in batches while the live views go on.
    let until = Instant::now() + TRAFFIC;
    let posters: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(post_live(
                api.clone(),
                ingest.url("/api/views"),
                w,
                4,
                until,
                now,
            ))
        })
        .collect();
    let mut bursts = Vec::new();
    for b in 0..BURSTS {
        tokio::time::sleep(TRAFFIC / (BURSTS as u32 + 1)).await;
        let burst: Vec<_> = (0..BURST_ROWS)
            .map(|n| {
                let key = format!("burst{b}-{}", n / 10);
                (key, moment(days_ago(today, 21 + (n % 10) as i64), now))
            })
            .collect();
        produce(&stack, "views", &burst).await;
        bursts.extend(burst);
    }
    let mut sent: Vec<(String, NaiveDate)> = Vec::new();
    for p in posters {
        sent.extend(p.await.expect("poster"));
    }
    let posted = sent.len();
    sent.push((format!("resource:{}", probe.0), probe.1.date_naive()));
    sent.extend(
        bursts
            .iter()
            .map(|(id, at)| (format!("resource:{id}"), at.date_naive())),
    );
    let late = sent.iter().filter(|(_, d)| *d < cutoff).count();

    let mut totals_want = totals_before.clone();
    let mut kept_want = kept_before.clone();
    for (key, day) in &sent {
        *totals_want.entry(key.clone()).or_default() += 1;
        if *day >= cutoff {
            *kept_want.entry((key.clone(), *day)).or_default() += 1;
        }
    }
    let want_sum: i64 = totals_want.values().sum();
    stack
        .wait_flushed_total(want_sum, Duration::from_secs(60))
        .await
        .expect("live views flushed");
    // Late views recreate rows of pruned days; the next run deletes them again.
    let pruned_sql = |table: &str| format!("SELECT count(*) FROM {table} WHERE day < '{cutoff}'");
    let what = format!("daily rows before {cutoff} are pruned again");
    eventually(Duration::from_secs(20), &what, || async {
        match count(&stack, &pruned_sql("view_counter_daily")).await {
            0 => Ok(()),
            left => Err(format!("{left} rows")),
        }
    })
    .await;

    // Totals keep every view; kept days are exact; pruned days are gone.
    assert_eq!(stack.totals().await.expect("totals"), totals_want);
    assert_eq!(
        daily_rows(&stack, "view_counter_daily", "true").await,
        kept_want,
        "daily rows from {cutoff} on are exactly the views of those days"
    );
    assert_eq!(count(&stack, &pruned_sql("view_visitors_daily")).await, 0);
    assert_eq!(
        daily_rows(&stack, "view_visitors_daily", "true").await,
        visitors_kept_before,
        "visitor rows of kept days intact"
    );
    let mark = retention::pruned_before(&stack.db).await.expect("mark");
    assert_eq!(mark, Some(cutoff), "the mark names the cutoff");
    let salts = stack
        .rows("SELECT day::text, 0::int8 FROM visitor_salts ORDER BY day")
        .await
        .expect("salts");
    let salts: Vec<String> = salts.into_iter().map(|(d, _)| d).collect();
    let want_salts: Vec<String> = [1, 0, -1]
        .iter()
        .map(|a| days_ago(today, *a).to_string())
        .collect();
    assert_eq!(salts, want_salts, "salts of yesterday on only");
    let jobs = stack
        .rows("SELECT params->>'tag', 0::int8 FROM jobs WHERE params ? 'tag' ORDER BY 1")
        .await
        .expect("jobs");
    let mut kept_jobs: Vec<&str> = JOBS
        .iter()
        .filter(|(_, _, kept)| *kept)
        .map(|(_, tag, _)| *tag)
        .collect();
    kept_jobs.sort_unstable();
    let left: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        left, kept_jobs,
        "old finished jobs gone, open ones and the month's newest rebuild kept"
    );

    // Over HTTP: the pruned job is gone, a key's count is its total.
    let job = api
        .get(ingest.url(&format!("/api/jobs/{gone_job}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("job");
    assert_eq!(
        job.status().as_u16(),
        404,
        "a pruned job is no longer found"
    );
    let got: serde_json::Value = api
        .get(ingest.url("/api/views?contentType=resource&contentId=old7"))
        .send()
        .await
        .expect("count")
        .json()
        .await
        .expect("json");
    assert_eq!(
        got["count"].as_i64(),
        totals_want.get("resource:old7").copied(),
        "GET answers the total"
    );

    // The aggregator's own metrics and log.
    let page = scrape(&aggregator).await;
    let pruned = |table: Table| pruned_count(&page, table);
    let pruned_daily = pruned(Table::CounterDaily);
    assert!(pruned_daily >= pruned_before_rows, "{pruned_daily}");
    assert_eq!(
        pruned(Table::VisitorsDaily),
        (OLD_KEYS * PRUNED_AGES.len()) as i64
    );
    assert_eq!(pruned(Table::Jobs), 4);
    assert_eq!(pruned(Table::VisitorSalts), 2);
    let during = flush_stats(&page).since(&flushes_at_start);
    let pruned_during = pruned_daily - pruned_daily_at_start;
    assert!(
        pruned_during >= (BURSTS * BURST_ROWS) as i64,
        "the bursts' rows were pruned during the traffic: {pruned_during}"
    );
    assert!(during.count >= 10.0, "flushes went on: {during:?}");
    // The default flush interval is 5 s; a debug build on a shared machine needs
    // some room below that.
    assert_eq!(
        during.over_2_5s, 0.0,
        "no flush took 2.5 s or more beside the pruning: {during:?}"
    );
    let mean_ms = during.sum / during.count * 1000.0;

    // A month retention pruned is refused by the backfill, and nothing moves.
    let month = Month::of(days_ago(today, 40));
    let m = month.to_string();
    let (code, out, err) = stack
        .command("aggregator", &["backfill", "--from", &m, "--to", &m])
        .await
        .expect("backfill");
    assert_eq!(code, 1, "{out}\n{err}");
    let refusal = out
        .lines()
        .find(|l| l.starts_with(&format!("{m}: refused: daily rows before {cutoff}")))
        .unwrap_or_else(|| panic!("{m} refused for retention: {out}"))
        .to_owned();
    assert_eq!(stack.totals().await.expect("totals"), totals_want);

    // Shutdown is prompt while pruning runs every 300 ms.
    let log_path = aggregator.log_path.clone();
    let stopping = Instant::now();
    let status = aggregator
        .terminate(Duration::from_secs(20))
        .await
        .expect("stopped");
    let stop_ms = stopping.elapsed().as_millis();
    assert!(status.success(), "{status}");
    assert!(stop_ms < 10_000, "stopped in {stop_ms} ms");
    let log = std::fs::read_to_string(&log_path).expect("log");
    let runs = log.lines().filter(|l| l.contains("retention run")).count();
    let first_run = log
        .lines()
        .find(|l| l.contains("retention run") && !l.contains("view_counter_daily=0"))
        .expect("a run that deleted daily rows")
        .to_owned();
    assert!(
        first_run.contains("view_visitors_daily=9000"),
        "{first_run}"
    );
    assert!(runs >= 5, "{runs} runs logged");

    eprintln!(
        "retention: {} history views; then for {TRAFFIC:?} {posted} live views over HTTP ({late} views of pruned days in all, {} in {BURSTS} bursts) while pruning every 300 ms: {pruned_during} daily rows pruned meanwhile, {pruned_daily} in all (history: {pruned_before_rows} before cutoff {cutoff}), {} visitor rows, 4 of 8 jobs, 2 of 5 salts; {} totals exact (sum {want_sum}), {} kept daily rows exact; {} flushes meanwhile, mean {mean_ms:.1} ms, {} of them >= 1 s; {runs} runs logged; stopped in {stop_ms} ms; backfill: {}",
        history.len(),
        bursts.len(),
        pruned(Table::VisitorsDaily),
        totals_want.len(),
        kept_want.len(),
        during.count,
        during.over_1s,
        refusal.split(" (RETAIN").next().unwrap_or_default(),
    );
    eprintln!("retention: first run logged: {}", first_run.trim());
}
