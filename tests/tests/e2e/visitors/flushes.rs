//! Visitors through racing flushes and a backfill: merges that repeat write nothing, and a backfill replaces a month's visitors.

use super::*;

/// Two flushes merging into a key-day that has no row yet: the second waits for the
/// first and merges into what it wrote, instead of inserting over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_flushes_both_keep_their_visitors_and_repeats_write_nothing() {
    let stack = Stack::start().await.expect("stack");
    let day = NaiveDate::from_ymd_opt(2026, 11, 20).expect("date");
    let counts = |ids: &[&str]| {
        let mut c = Counts::default();
        for id in ids {
            c.add_view("resource:x", day, None, Some(visitors::hash(id)));
        }
        c
    };
    let (a, b) = (counts(&["s1", "s2"]), counts(&["s2", "s3"]));
    let first = stack.db.begin().await.expect("begin");
    assert_eq!(rows::merge_into(&first, &[&a]).await.expect("merge"), 1);
    let second = tokio::spawn({
        let (db, b) = (stack.db.clone(), b.clone());
        async move {
            let txn = db.begin().await?;
            let written = rows::merge_into(&txn, &[&b]).await?;
            txn.commit().await?;
            Ok::<_, sea_orm::DbErr>(written)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second flush waits for the first's row"
    );
    first.commit().await.expect("commit");
    assert_eq!(second.await.expect("task").expect("second flush"), 1);
    let stored = stored_visitors(&stack).await;
    assert_eq!(
        stored.get(&("x".to_owned(), day)),
        Some(&3),
        "s1, s2 and s3"
    );

    // The same visitors again (a flush counted again after a crash): nothing written.
    let again = stack.db.begin().await.expect("begin");
    let written = rows::merge_into(&again, &[&a, &b]).await.expect("merge");
    again.commit().await.expect("commit");
    assert_eq!(written, 0, "no one new, no write");
    assert_eq!(stored_visitors(&stack).await, stored);
    eprintln!("visitors: two racing flushes into a new row kept all 3 visitors; merging them again wrote 0 rows");
}

/// Every stored sketch, hex, in key and day order.
async fn sketches(stack: &Stack) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Statement};
    stack
        .db
        .query_all(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT encode(sketch, 'hex') FROM view_visitors_daily ORDER BY key, day",
        ))
        .await
        .expect("sketches")
        .into_iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("hex"))
        .collect()
}

/// A backfill replaces the month's visitor rows with the replay's: a key the replay
/// lacks loses its rows there, other months are untouched, and a rerun changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_replaces_the_months_visitors_with_the_replays() {
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "200")])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let live = |id: &str, at: &str, session: &str| json!({"contentType": "resource", "contentId": id, "sessionId": session, "occurredAt": at});
    let now = Utc::now() - chrono::Duration::minutes(1);
    let today = now.to_rfc3339();
    let batch = vec![
        live("gone", "2025-01-10T10:00:00Z", "g1"),
        live("gone", "2025-01-10T11:00:00Z", "g2"),
        live("kept", "2025-01-12T10:00:00Z", "live-only"),
        live("gone", &today, "g1"),
    ];
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&batch)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    stack
        .wait_flushed_total(4, Duration::from_secs(30))
        .await
        .expect("flushed");

    // The replay: key "kept" on two January days, 40 and 25 sessions, with repeats.
    let dir = std::env::temp_dir().join(format!("vp-visitors-{}", stack.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("history.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("file"));
    for i in 0..200 {
        let (day, sessions) = if i % 2 == 0 { (12, 40) } else { (13, 25) };
        let view = json!({"contentType": "resource", "contentId": "kept",
                          "sessionId": format!("r{}", i / 2 % sessions),
                          "occurredAt": format!("2025-01-{day}T08:00:00Z")});
        writeln!(out, "{view}").expect("write");
    }
    out.flush().expect("flush");
    drop(out);
    let publish = [
        "publish",
        "--topic",
        "views.replay",
        file.to_str().expect("path"),
    ];
    let (code, out, err) = stack.command("ingest", &publish).await.expect("publish");
    assert_eq!(code, 0, "publish: {out}\n{err}");

    let backfill = ["backfill", "--from", "2025-01", "--to", "2025-01"];
    let (code, out, err) = stack
        .command("aggregator", &backfill)
        .await
        .expect("backfill");
    assert_eq!(code, 0, "backfill: {out}\n{err}");
    // Before: gone on the 10th and kept on the 12th; after: kept on the 12th and 13th.
    assert!(out.contains("visitor rows 2 -> 2"), "{out}");
    let after = stored_visitors(&stack).await;
    let jan = |d| NaiveDate::from_ymd_opt(2025, 1, d).expect("date");
    let want = BTreeMap::from([
        (("gone".to_owned(), now.date_naive()), 1),
        (("kept".to_owned(), jan(12)), 40),
        (("kept".to_owned(), jan(13)), 25),
    ]);
    assert_eq!(after, want, "January is the replay's, today is untouched");
    let before_rerun = sketches(&stack).await;
    let (code, out, err) = stack.command("aggregator", &backfill).await.expect("again");
    assert_eq!(code, 0, "backfill again: {out}\n{err}");
    assert_eq!(
        sketches(&stack).await,
        before_rerun,
        "a rerun changes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "visitors, backfill: January's visitor rows became the replay's (kept: 40 and 25; gone: none), today's row untouched, a rerun left every sketch byte-identical"
    );
}
