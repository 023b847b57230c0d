//! Counts for a whole page: `POST /api/views/counts` answers up to 100 keys as
//! `GET /api/views` answers each, pending counts included, in one request; and the
//! counter badge `GET /api/views/badge.svg`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use viewpipe_tests::openapi::Api;
use viewpipe_tests::{eventually, Service, Stack};

const READ_KEY: &str = "read-key-0123456789abcdef";

async fn single(http: &Api, ingest: &Service, id: &str) -> i64 {
    let url = ingest.url(&format!("/api/views?contentType=resource&contentId={id}"));
    let r = http
        .get(url)
        .bearer_auth(READ_KEY)
        .send()
        .await
        .expect("GET");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["count"].as_i64().unwrap_or(-1)
}

async fn many(http: &Api, ingest: &Service, keys: &[Value]) -> (u16, Value) {
    let r = http
        .post(ingest.url("/api/views/counts"))
        .bearer_auth(READ_KEY)
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .expect("counts");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn key(id: &str) -> Value {
    json!({"contentType": "resource", "contentId": id})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_keys_in_one_read_equal_a_hundred_single_reads() {
    let stack = Stack::start().await.expect("stack");
    // Flushed rarely: most counts are still pending in Redis when read.
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "60000")])
        .await
        .expect("aggregator");
    let ingest = stack
        .spawn_ingest(&[("READ_KEY", READ_KEY)])
        .await
        .expect("ingest");
    let http = Api::new(&ingest).await;
    // Key k{i} gets i % 7 views; k99 none; k5 is asked twice.
    let views: Vec<Value> = (0..99)
        .flat_map(|i| std::iter::repeat_n(key(&format!("k{i}")), i % 7))
        .collect();
    let expected_total = views.len() as i64;
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&views)
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let mut keys: Vec<Value> = (0..99).map(|i| key(&format!("k{i}"))).collect();
    keys.push(key("k5"));
    // Wait until the aggregator consumed every view (the sum of the answer, k5's
    // 5 views twice).
    let expected_sum = expected_total + 5;
    let what = format!("the counts sum to {expected_sum}");
    eventually(Duration::from_secs(30), &what, || async {
        let (status, body) = many(&http, &ingest, &keys).await;
        assert_eq!(status, 200, "{body}");
        let sum: i64 = body["counts"]
            .as_array()
            .expect("counts")
            .iter()
            .filter_map(|c| c["count"].as_i64())
            .sum();
        if sum == expected_sum {
            Ok(())
        } else {
            Err(format!("{sum}"))
        }
    })
    .await;
    // One read of 100 keys, then 100 single reads, each timed.
    let asked = Instant::now();
    let (_, body) = many(&http, &ingest, &keys).await;
    let one_read = asked.elapsed();
    let counts = body["counts"].as_array().expect("counts").clone();
    let asked = Instant::now();
    let mut singles = Vec::new();
    for k in &keys {
        singles.push(single(&http, &ingest, k["contentId"].as_str().unwrap_or("")).await);
    }
    let hundred_reads = asked.elapsed();
    println!(
        "100 keys ({expected_total} views, all pending in Redis): one POST /api/views/counts {one_read:?}, 100 sequential GET /api/views {hundred_reads:?}"
    );
    assert_eq!(counts.len(), 100);
    for (i, (c, s)) in counts.iter().zip(&singles).enumerate() {
        let id = keys[i]["contentId"].as_str().unwrap_or("");
        assert_eq!(
            (c["contentType"].as_str(), c["contentId"].as_str()),
            (Some("resource"), Some(id))
        );
        assert_eq!(c["count"].as_i64(), Some(*s), "{id}: many-keys read vs GET");
    }
    assert_eq!(counts[5]["count"], 5);
    assert_eq!(counts[99]["count"], 5, "k5 asked again");
    assert_eq!(counts[98]["count"], 0, "k98: 98 % 7 = 0 views");
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_many_keys_read_names_what_is_wrong() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[("READ_KEY", READ_KEY)])
        .await
        .expect("ingest");
    let http = Api::new(&ingest).await;
    let too_many: Vec<Value> = (0..101).map(|i| key(&format!("k{i}"))).collect();
    let cases = [
        ("no keys", json!({"keys": []}), "empty_keys", "holds no key"),
        (
            "101 keys",
            json!({"keys": too_many}),
            "too_many_keys",
            "holds 101 keys",
        ),
        (
            "not an array",
            json!({"keys": "k1"}),
            "invalid_type",
            "array",
        ),
        ("no keys field", json!({}), "missing_field", "required"),
        (
            "a bad id third",
            json!({"keys": [key("a"), key("b"), key("bad id")]}),
            "invalid_value",
            "keys[2].contentId",
        ),
        (
            "an unknown namespace",
            json!({"keys": [{"contentType": "nope", "contentId": "a"}]}),
            "unknown_namespace",
            "keys[0].contentType",
        ),
    ];
    for (what, body, code, says) in cases {
        let r = http
            .post(ingest.url("/api/views/counts"))
            .bearer_auth(READ_KEY)
            .json(&body)
            .send()
            .await
            .expect("counts");
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{what}: {answer}"
        );
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(answer["error"]["field"], "keys", "{what}");
    }
    // A read: the read key is needed.
    let r = reqwest::Client::new()
        .post(ingest.url("/api/views/counts"))
        .json(&json!({"keys": [key("a")]}))
        .send()
        .await
        .expect("counts");
    assert_eq!(r.status().as_u16(), 401);
    // A badge behind the read key is for the asker's cache alone.
    let r = http
        .get(ingest.url("/api/views/badge.svg?contentType=resource&contentId=a"))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .expect("badge");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    stack.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_badge_shows_the_count_and_may_be_cached_a_minute() {
    let stack = Stack::start().await.expect("stack");
    let _aggregator = stack.spawn_aggregator(&[]).await.expect("aggregator");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = Api::new(&ingest).await;
    let views: Vec<Value> = std::iter::repeat_n(key("badged"), 1234).collect();
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&views[..1000])
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let r = http
        .post(ingest.url("/api/views/batch"))
        .json(&views[1000..])
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let badge = ingest.url(
        "/api/views/badge.svg?contentType=resource&contentId=badged&label=reads&color=orange&style=flat-square",
    );
    let svg = eventually(Duration::from_secs(30), "the badge shows 1,234", || async {
        let r = http.get(&badge).send().await.expect("badge");
        assert_eq!(r.status().as_u16(), 200);
        let content_type = r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        let cache = r.headers()["cache-control"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(content_type, "image/svg+xml; charset=utf-8");
        assert_eq!(cache, "public, max-age=60");
        let svg = r.text().await.expect("svg");
        if svg.contains(">1,234</text>") {
            Ok(svg)
        } else {
            Err(svg)
        }
    })
    .await;
    println!("badge of 1234 views, {} bytes: {svg}", svg.len());
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.contains("aria-label=\"reads: 1,234\"") && svg.contains("#fe7d37"));
    assert!(!svg.contains("url(#s)"), "flat-square has no gradient");
    let r = http
        .get(ingest.url("/api/views/badge.svg?contentType=resource&contentId=badged&color=%23fff"))
        .send()
        .await
        .expect("badge");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["field"], "color", "{body}");
    stack.cleanup().await.expect("cleanup");
}
