//! ingest publish: bad lines reported by number, and a rerun after a signal that loses nothing.

use super::*;

#[tokio::test]
async fn publish_reports_bad_lines_by_number_and_publishes_the_good() {
    let stack = Stack::start().await.expect("stack");
    let dir = std::env::temp_dir().join(format!("vp-publish-{}", stack.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("views.ndjson");
    let rejects = dir.join("rejects.ndjson");
    let ok = r#"{"contentType":"resource","contentId":"a","occurredAt":"2025-01-02T10:00:00Z"}"#;
    let lines = [
        ok,
        "{not json",
        ok,
        r#"{"v":1,"contentType":"resource","contentId":"b","occurredAt":"2025-01-02T10:00:00Z"}"#,
        r#"{"contentType":"video","contentId":"a"}"#,
        "",
        ok,
        r#"{"contentType":"resource"}"#,
        ok,
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (code, out, err) = stack
        .command(
            "ingest",
            &[
                "publish",
                "--topic",
                "views.replay",
                "--rejects",
                rejects.to_str().expect("path"),
                file.to_str().expect("path"),
            ],
        )
        .await
        .expect("publish");
    assert_eq!(code, 2, "some lines rejected: {out}\n{err}");
    assert!(out.contains("published 5 events"), "{out}");
    assert!(out.contains("rejected 3"), "{out}");
    for needle in [
        "line 2: invalid_json",
        "line 5: unknown_namespace",
        "line 8: missing_field",
    ] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
    let written = std::fs::read_to_string(&rejects).expect("rejects file");
    assert_eq!(written.lines().count(), 3, "{written}");

    // The current month is refused without --force; the lock listing answers.
    let now = chrono::Utc::now().format("%Y-%m").to_string();
    let (code, _, err) = stack
        .command("aggregator", &["backfill", "--from", &now, "--to", &now])
        .await
        .expect("backfill");
    assert_eq!(code, 1);
    assert!(
        err.contains("current month") && err.contains("--force"),
        "{err}"
    );
    let (code, out, _) = stack
        .command("aggregator", &["backfill", "--locks"])
        .await
        .expect("locks");
    assert_eq!((code, out.trim()), (0, "no backfill locks are held"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stopped_by_a_signal_says_where_and_a_rerun_from_there_loses_nothing() {
    let stack = Stack::start().await.expect("stack");
    let dir = std::env::temp_dir().join(format!("vp-publish-stop-{}", stack.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("views.ndjson");
    let lines = 400_000;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file).expect("file"));
    for i in 0..lines {
        writeln!(
            w,
            r#"{{"contentType":"resource","contentId":"s{}","occurredAt":"2025-01-02T10:00:00Z"}}"#,
            i % 100
        )
        .expect("write");
    }
    w.flush().expect("flush");
    drop(w);
    let path = file.to_str().expect("path");
    let child = tokio::process::Command::new(viewpipe_tests::bin("ingest"))
        .args(["publish", "--topic", "views.replay", path])
        .envs(stack.env())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    let out = child.wait_with_output().await.expect("publish output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let skip: u64 = stdout
        .split("resume with --skip ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("says where to resume: {stdout}"));
    assert!(skip > 0 && skip < lines, "stopped part way: {stdout}");
    let (code, again, err) = stack
        .command(
            "ingest",
            &[
                "publish",
                "--topic",
                "views.replay",
                "--skip",
                &skip.to_string(),
                path,
            ],
        )
        .await
        .expect("rerun");
    assert_eq!(code, 0, "{again}\n{err}");
    // The topic holds every line exactly once.
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.addr().to_string())
        .create()
        .expect("consumer");
    let mut held = 0;
    for p in 0..viewpipe_tests::PARTITIONS {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
            &c,
            "views.replay",
            p,
            Duration::from_secs(5),
        )
        .expect("watermarks");
        held += high - low;
    }
    assert_eq!(
        held, lines as i64,
        "first run to line {skip}, then the rest"
    );
    println!("publish interrupted at line {skip} of {lines}; the rerun with --skip {skip} published the rest; the topic holds {held}");
    let _ = std::fs::remove_dir_all(&dir);
}
