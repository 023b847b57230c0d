//! What a write may cost and what it may learn: a batch is bounded while it is read
//! (memory, CPU, and the rate limit counting refused batches), a write's answer
//! carries a count only for a caller allowed to read it, and `occurredAt` is bounded
//! below by `MAX_EVENT_AGE` on the API but not for `ingest publish`.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use viewpipe_tests::openapi::Api;
use viewpipe_tests::{view, Stack};

const READ_KEY: &str = "read-key-0123456789abcdef";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// A batch body's limit, 10 MiB.
const MAX_BODY: usize = 10 * 1024 * 1024;
/// How much more than at start the ingest may hold at its peak.
const RSS_BOUND_MIB: u64 = 150;
/// How long `/healthz` may take meanwhile.
const HEALTH_BOUND: Duration = Duration::from_millis(100);

fn days_ago(days: i64) -> String {
    (Utc::now() - chrono::Duration::days(days)).to_rfc3339()
}

/// Sends a batch's head, then its body a byte every 300 ms, until aborted.
async fn trickle(addr: std::net::SocketAddr) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "POST /api/views/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {MAX_BODY}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while stream.write_all(b"x").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_ten_mib_of_lines_costs_bounded_memory_and_health_stays_quick() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack.spawn_ingest_process(&[]).await.expect("ingest");
    let http = reqwest::Client::new();
    let health = ingest.url("/healthz");
    // Warm the connection pool and the handler.
    http.get(&health).send().await.expect("healthz");
    let start_kib = ingest.peak_rss_kib().expect("peak RSS");

    // 20 clients sending a batch's body a byte every 300 ms all along.
    let slow: Vec<_> = (0..20)
        .map(|_| tokio::spawn(trickle(ingest.addr)))
        .collect();
    // 5,242,880 lines of `x`: exactly 10 MiB, so within the byte limit.
    let body = "x\n".repeat(MAX_BODY / 2);
    let floods: Vec<_> = (0..3)
        .map(|_| {
            let request = http
                .post(ingest.url("/api/views/batch"))
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .timeout(Duration::from_secs(120));
            tokio::spawn(async move {
                let r = request.send().await.expect("batch");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, body)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut polls = 0;
    let watched = Instant::now();
    while !floods.iter().all(tokio::task::JoinHandle::is_finished)
        || watched.elapsed() < Duration::from_secs(3)
    {
        let asked = Instant::now();
        let r = http
            .get(&health)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status().as_u16(), 200);
        slowest = slowest.max(asked.elapsed());
        polls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for flood in floods {
        let (status, body) = flood.await.expect("flood task");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("too_many_events")),
            "{body}"
        );
    }
    let peak_kib = ingest.peak_rss_kib().expect("peak RSS");
    let grew_mib = peak_kib.saturating_sub(start_kib) / 1024;
    slow.iter().for_each(tokio::task::JoinHandle::abort);
    println!(
        "3 x 10 MiB NDJSON of `x` lines beside 20 clients trickling a body: peak RSS {} MiB -> {} MiB (+{grew_mib} MiB); /healthz slowest {slowest:?} over {polls} polls",
        start_kib / 1024,
        peak_kib / 1024,
    );
    assert!(
        grew_mib < RSS_BOUND_MIB,
        "peak RSS grew {grew_mib} MiB, bound {RSS_BOUND_MIB} MiB"
    );
    assert!(
        slowest < HEALTH_BOUND,
        "/healthz took {slowest:?}, bound {HEALTH_BOUND:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_count_against_the_rate_limit() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[("RATE_LIMIT_PER_ADDR", "1500/m")])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    let too_many = Value::Array(vec![view("a"); 1001]);
    let batch = |body: &Value| api.post(ingest.url("/api/views/batch")).json(body).send();
    // Refused whole, each still costs what was read: 1001 views, then 1 for a body
    // that does not parse, then what is left of the 1500.
    let mut answers = Vec::new();
    for body in [&too_many, &json!("not a batch"), &too_many, &too_many] {
        let r = batch(body).await.expect("batch");
        let body: Value = r.json().await.expect("json");
        answers.push((
            r.status().as_u16(),
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let codes: Vec<_> = answers.iter().map(|(s, c)| (*s, c.as_str())).collect();
    assert_eq!(
        codes,
        [
            (400, "too_many_events"),
            (400, "invalid_type"),
            (400, "too_many_events"),
            (429, "rate_limited"),
        ]
    );
    // The budget is spent: valid views wait too. (It refills at 25 views a second:
    // 500 views need 20 s of it, far more than this takes.)
    let r = batch(&Value::Array(vec![view("a"); 500]))
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(stack.published().await, 0);
    println!(
        "RATE_LIMIT_PER_ADDR=1500/m: refused batches answered {codes:?}, then a valid batch of 500 views 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answers_the_count_only_to_a_caller_that_may_read_it() {
    let stack = Stack::start().await.expect("stack");
    let guarded = stack
        .spawn_ingest(&[("READ_KEY", READ_KEY)])
        .await
        .expect("ingest with a read key");
    let api = Api::new(&guarded).await;
    let post = || api.post(guarded.url("/api/views")).json(&view("a"));
    let mut answers = Vec::new();
    for (what, request) in [
        ("no key", post()),
        (
            "wrong key",
            post().bearer_auth("wrong-key-0123456789abcdef"),
        ),
        ("bearer", post().bearer_auth(READ_KEY)),
        ("header", post().header("x-viewpipe-key", READ_KEY)),
    ] {
        let r = request.send().await.expect("post");
        assert_eq!(r.status().as_u16(), 202, "{what}");
        let body: Value = r.json().await.expect("json");
        answers.push((what, body));
    }
    let with_key = api
        .post(guarded.url(&format!("/api/views?key={READ_KEY}")))
        .json(&view("a"))
        .send()
        .await
        .expect("post");
    answers.push(("query", with_key.json().await.expect("json")));
    for (what, body) in &answers {
        let may_read = !matches!(*what, "no key" | "wrong key");
        assert_eq!(body["success"], true, "{what}: {body}");
        assert!(
            body.get("count").is_some(),
            "{what}: the field stays: {body}"
        );
        assert_eq!(body["count"].is_i64(), may_read, "{what}: {body}");
    }
    assert_eq!(stack.published().await, 5, "every view was published");

    let dropping = stack
        .spawn_ingest(&[("BOT_FILTER", "drop")])
        .await
        .expect("ingest dropping crawlers");
    let api = Api::new(&dropping).await;
    let r = api
        .post(dropping.url("/api/views"))
        .header("user-agent", GOOGLEBOT)
        .json(&view("a"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        json!({"success": true, "count": null, "dropped": "crawler"})
    );
    assert_eq!(stack.published().await, 5, "the crawler's view was not");
    println!("READ_KEY: POST answered {answers:?}; BOT_FILTER=drop + Googlebot answered {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_older_than_max_event_age_are_refused_but_publish_loads_history() {
    let stack = Stack::start().await.expect("stack");
    // The stack's services accept a hundred years back; this ingest the default, 30 days.
    let ingest = stack
        .spawn_ingest(&[("MAX_EVENT_AGE", "30d")])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    let at = |when: &str| json!({"contentId": "a", "contentType": "resource", "occurredAt": when});
    for old in [days_ago(31), "0001-01-01T00:00:00Z".to_owned()] {
        let r = api
            .post(ingest.url("/api/views"))
            .json(&at(&old))
            .send()
            .await
            .expect("post");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            (
                r.status().as_u16(),
                &body["error"]["code"],
                &body["error"]["field"]
            ),
            (400, &json!("too_old"), &json!("occurredAt")),
            "{old}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        for needle in [
            "30d",
            "ingest publish --topic views.replay",
            "aggregator backfill",
        ] {
            assert!(message.contains(needle), "{needle} in {message}");
        }
    }
    let r = api
        .post(ingest.url("/api/views"))
        .json(&at(&days_ago(29)))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202, "29 days back is within");
    let r = api
        .post(ingest.url("/api/views/batch"))
        .json(&json!([
            at(&days_ago(1)),
            at("0001-01-01T00:00:00Z"),
            at(&days_ago(400))
        ]))
        .send()
        .await
        .expect("batch");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["accepted"], 1, "{body}");
    let rejected: Vec<_> = body["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["index"].as_i64(), r["error"]["code"].as_str()))
        .collect();
    assert_eq!(
        rejected,
        [(Some(1), Some("too_old")), (Some(2), Some("too_old"))]
    );
    assert_eq!(stack.published().await, 2);

    // The document says the limit this ingest runs with.
    let short = stack
        .spawn_ingest(&[("MAX_EVENT_AGE", "72h")])
        .await
        .expect("ingest");
    let doc: Value = reqwest::get(short.url("/openapi.json"))
        .await
        .expect("document")
        .json()
        .await
        .expect("json");
    let described = doc
        .pointer("/components/schemas/ViewRequest/properties/occurredAt/description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        described.contains("72h") && described.contains("too_old"),
        "{described}"
    );
    let r = Api::new(&short)
        .await
        .post(short.url("/api/views"))
        .json(&at(&days_ago(4)))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400, "4 days is over 72h");

    // History goes through `ingest publish`, which applies no age.
    let dir = std::env::temp_dir().join(format!("vp-age-{}", stack.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("history.ndjson");
    std::fs::write(
        &file,
        format!("{}\n{}\n", at("2019-03-01T10:00:00Z"), at(&days_ago(400))),
    )
    .expect("history");
    let (code, out, err) = stack
        .command(
            "ingest",
            &[
                "publish",
                "--topic",
                "views.replay",
                file.to_str().expect("path"),
            ],
        )
        .await
        .expect("publish");
    assert_eq!(code, 0, "publish: {out}\n{err}");
    assert!(out.contains("published 2 events"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    println!("MAX_EVENT_AGE=30d: 31 days back and year 0001 refused too_old (single and batch), 29 days accepted; 72h stated in the document; ingest publish loaded 2019 and 400 days back");
}
