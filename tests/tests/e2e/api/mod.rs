//! Every endpoint's success path against the real stack: batches (JSON and NDJSON),
//! daily series and top content, the admin flush job, CORS, the OpenAPI document,
//! metrics, and the broker going away and coming back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use serde_json::{json, Value};

use viewpipe_tests::chaos::metric;
use viewpipe_tests::openapi::{Api, Checked};
use viewpipe_tests::{eventually, Service, Stack};

mod service;

const TOKEN: &str = "t0ken-for-tests-long-enough-for-32";

async fn get_json(http: &Api, url: String) -> (u16, Value) {
    let r = http.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn days_ago(n: i64) -> NaiveDate {
    Utc::now().date_naive() - chrono::Duration::days(n)
}

fn at(days_back: i64) -> String {
    (Utc::now() - chrono::Duration::days(days_back) - chrono::Duration::minutes(1)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_daily_series_top_and_a_flush_job() {
    let stack = Stack::start().await.expect("stack");
    // No periodic flush for a minute: what Postgres gets, the flush job puts there.
    let aggregator = stack
        .spawn_aggregator_process(&[("FLUSH_INTERVAL_MS", "60000")])
        .await
        .expect("aggregator");
    let ingest = stack
        .spawn_ingest(&[("ADMIN_TOKEN", TOKEN)])
        .await
        .expect("ingest");
    let http = Api::new(&ingest).await;

    // A JSON batch: 6 valid views over 3 days of key "b1", two invalid entries.
    let mut items: Vec<Value> = (0..6)
        .map(|i| json!({"contentId": "b1", "contentType": "resource", "occurredAt": at(i % 3)}))
        .collect();
    items.insert(1, json!({"contentId": "bad id", "contentType": "resource"}));
    items.insert(4, json!("not an object"));
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&items)
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["accepted"], 6, "{body}");
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().unwrap_or(-1),
                r["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![(1, "invalid_value".into()), (4, "invalid_type".into())]
    );

    // A batch with no valid view is answered like any other: 202, nothing
    // accepted, every element listed (as the document says).
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&json!([{"contentId": "b0", "contentType": "resource", "sessionId": 7}, 5]))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["accepted"], 0, "{body}");
    let indexes: Vec<i64> = body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(|r| r["index"].as_i64())
        .collect();
    assert_eq!(indexes, vec![0, 1], "{body}");

    // NDJSON: 3 views of "b2" (one with a blank line around it), one broken line.
    let ndjson = format!(
        "{}\n\n{}\n{{broken\n{}\n",
        json!({"contentId": "b2", "contentType": "resource"}),
        json!({"contentId": "b2", "contentType": "resource", "eventId": "n1"}),
        json!({"contentId": "b2", "contentType": "resource", "occurredAt": at(1)}),
    );
    let r = http
        .post(ingest.url("/api/views/batch"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .expect("ndjson");
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (
            body["accepted"].as_i64(),
            body["rejected"][0]["index"].as_i64()
        ),
        (Some(3), Some(2)),
        "{body}"
    );
    assert_eq!(body["rejected"][0]["error"]["code"], "invalid_json");

    // Pending counts (nothing flushed yet) show in GET and in the daily series.
    ingest.wait_count("resource", "b1", 6).await;
    ingest.wait_count("resource", "b2", 3).await;
    let flushed = stack
        .rows("SELECT key, total FROM view_counter_total")
        .await
        .expect("rows");
    assert!(flushed.is_empty(), "nothing flushed yet: {flushed:?}");
    let (status, daily) = get_json(
        &http,
        ingest.url("/api/views/daily?contentType=resource&contentId=b1&days=4"),
    )
    .await;
    assert_eq!(status, 200);
    let series: Vec<(String, i64)> = daily["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap_or("").to_owned(),
                d["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: Vec<(String, i64)> = [(3, 0), (2, 2), (1, 2), (0, 2)]
        .iter()
        .map(|(n, c)| (days_ago(*n).to_string(), *c))
        .collect();
    assert_eq!(
        series, want,
        "zero-filled, ascending, ending today, pending included"
    );
    assert_eq!(
        (daily["contentId"].as_str(), daily["contentType"].as_str()),
        (Some("b1"), Some("resource"))
    );
    let (_, ranged) = get_json(
        &http,
        ingest.url(&format!(
            "/api/views/daily?contentType=resource&contentId=b2&from={}&to={}",
            days_ago(1),
            days_ago(1)
        )),
    )
    .await;
    // Nothing flushed yet: no visitors recorded (they arrive with the flush).
    assert_eq!(
        ranged["days"],
        json!([{"day": days_ago(1).to_string(), "count": 1, "visitors": 0}])
    );
    let (_, default_days) = get_json(
        &http,
        ingest.url("/api/views/daily?contentType=resource&contentId=never"),
    )
    .await;
    assert_eq!(default_days["days"].as_array().map(Vec::len), Some(30));

    // The flush job: 202 with wait=false, seen queued or running, then completed.
    let r = http
        .post(ingest.url("/api/views/flush?wait=false"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("flush");
    assert_eq!(r.status().as_u16(), 202);
    let job_id = r.json::<Value>().await.expect("json")["jobId"]
        .as_str()
        .expect("jobId")
        .to_owned();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .get(ingest.url(&format!("/api/jobs/{job_id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("job");
        assert_eq!(r.status().as_u16(), 200);
        let job: Value = r.json().await.expect("json");
        let status = job["status"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "completed" {
            assert_eq!(job["kind"], "flush");
            assert!(
                job["finishedAt"].is_string() && job["createdAt"].is_string(),
                "{job}"
            );
            assert!(
                job["result"]["flushed"].as_i64().is_some_and(|n| n >= 2),
                "{job}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "job stuck: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        matches!(seen[0].as_str(), "queued" | "running"),
        "statuses seen: {seen:?}"
    );
    // Postgres alone now holds the counts.
    let rows = stack
        .rows("SELECT key, total FROM view_counter_total ORDER BY key")
        .await
        .expect("rows");
    assert_eq!(
        rows,
        vec![("resource:b1".into(), 6), ("resource:b2".into(), 3)]
    );

    // More views, then a waiting flush: 200 and the rows it wrote.
    for id in ["t-c", "t-a", "t-b", "t-a", "t-b", "t-b", "t-c", "t-d"] {
        let r = http
            .post(ingest.url("/api/views"))
            .json(&json!({"contentId": id, "contentType": "resource"}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 202);
    }
    ingest.wait_count("resource", "t-d", 1).await;
    ingest.wait_count("resource", "t-b", 3).await;
    let r = http
        .post(ingest.url("/api/views/flush"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("flush");
    assert_eq!(r.status().as_u16(), 200);
    let done: Value = r.json().await.expect("json");
    assert_eq!(done["success"], true);
    assert!(
        done["flushed"].as_i64().is_some_and(|n| n >= 8),
        "total and daily rows of 4 keys: {done}"
    );
    let in_pg = stack
        .rows(
            "SELECT key, total FROM view_counter_total WHERE key LIKE 'resource:t-%' ORDER BY key",
        )
        .await
        .expect("rows");
    assert_eq!(
        in_pg,
        vec![
            ("resource:t-a".into(), 2),
            ("resource:t-b".into(), 3),
            ("resource:t-c".into(), 2),
            ("resource:t-d".into(), 1)
        ]
    );

    // Top over today: count descending, ties by contentId; limit.
    let (status, top) = get_json(
        &http,
        ingest.url("/api/views/top?contentType=resource&limit=4"),
    )
    .await;
    assert_eq!(status, 200);
    let items: Vec<(String, i64)> = top["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["contentId"].as_str().unwrap_or("").to_owned(),
                i["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let want: Vec<(String, i64)> = [("t-b", 3), ("b1", 2), ("b2", 2), ("t-a", 2)]
        .iter()
        .map(|(id, n)| ((*id).to_owned(), *n))
        .collect();
    assert_eq!(items, want);
    let (_, range) = get_json(
        &http,
        ingest.url(&format!(
            "/api/views/top?contentType=resource&from={}&to={}",
            days_ago(2),
            days_ago(0)
        )),
    )
    .await;
    assert_eq!(range["items"][0], json!({"contentId": "b1", "count": 6}));
    let (_, empty) = get_json(&http, ingest.url("/api/views/top?contentType=course")).await;
    assert_eq!(empty, json!({"items": []}));

    let counted = metric(
        &aggregator,
        "viewpipe_aggregator_events_total{result=\"counted\"}",
    )
    .await;
    assert_eq!(counted, 17.0);
    println!("API: batch 6+3 accepted with 3 rejections by index; daily zero-filled with pending counts; flush job statuses {seen:?}; top ordered with ties by id");
}
