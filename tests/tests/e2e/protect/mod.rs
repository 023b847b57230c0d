//! Protection of the public API against the real stack: rate limits per address
//! (the TCP peer, and the address a trusted proxy's header gives) and per app,
//! write keys and the namespaces they may write, crawler views dropped, the read
//! key, and `/metrics` on a listener of its own. "Nothing published" is read from
//! the views topic's high watermarks; what was accepted is counted exactly by an
//! aggregator.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use viewpipe_tests::chaos::metric;
use viewpipe_tests::openapi::{Api, Document};
use viewpipe_tests::{view, Service, Stack};

mod keys;
mod reads;

const WEB_KEY: &str = "web-key-0123456789abcdef";
const MOBILE_KEY: &str = "mobile-key-0123456789abc";
const READ_KEY: &str = "read-key-0123456789abcdef";

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const BINGBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";

/// A client whose connections come from `ip` (any of 127/8 is this machine).
fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .expect("client")
}

/// An answer, checked against the ingest's document.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    fn retry_after(&self) -> Option<u64> {
        self.headers.get("retry-after")?.to_str().ok()?.parse().ok()
    }
}

/// Sends `request` and checks the answer against `doc` (as `Api` does, for clients
/// `Api` cannot be: one bound to a source address).
async fn send(doc: &Document, request: reqwest::RequestBuilder) -> Answer {
    let (client, request) = request.build_split();
    let request = request.expect("request");
    let (method, path) = (request.method().clone(), request.url().path().to_owned());
    let response = client.execute(request).await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    if let Err(e) = doc.check(&method, &path, status, &bytes) {
        panic!("the answer is not what /openapi.json documents: {e:#}");
    }
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Asserts a 429 as the contract says it: code, Retry-After of at least 1 second.
fn assert_limited(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 429, "{what}: {}", answer.body);
    assert_eq!(answer.code(), "rate_limited", "{what}");
    assert!(
        answer.retry_after().is_some_and(|s| s >= 1),
        "{what}: Retry-After {:?}",
        answer.headers.get("retry-after")
    );
    assert_eq!(answer.body["success"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_from_one_address_is_limited_while_others_are_served_and_counted_exactly() {
    const FLOOD: usize = 60;
    const LIMIT: usize = 20;
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[("RATE_LIMIT_PER_ADDR", "20/m")])
        .await
        .expect("ingest");
    let doc = Document::fetch(&ingest).await.expect("document");
    let url = ingest.url("/api/views");
    let batch_url = ingest.url("/api/views/batch");
    let mut accepted: BTreeMap<String, i64> = BTreeMap::new();

    // A flood from 127.0.0.1: the first 20 pass (the burst), the rest are refused
    // whole (a view refills every 3 s, so a few more may pass while it runs).
    let flooder = client_from("127.0.0.1");
    let started = Instant::now();
    let answers: Vec<(String, Answer)> = futures::stream::iter(0..FLOOD)
        .map(|i| {
            let (doc, flooder, url) = (&doc, &flooder, &url);
            async move {
                let id = format!("flood-{}", i % 5);
                let answer = send(doc, flooder.post(url).json(&view(&id))).await;
                (id, answer)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let refills = (started.elapsed().as_secs() / 3 + 1) as usize;
    let mut flood_accepted = 0;
    for (id, answer) in &answers {
        if answer.status == 202 {
            flood_accepted += 1;
            *accepted.entry(id.clone()).or_default() += 1;
        } else {
            assert_limited(answer, "flood");
        }
    }
    assert!(
        (LIMIT..=LIMIT + refills).contains(&flood_accepted),
        "{flood_accepted} of {FLOOD} flood views accepted; the limit allows {LIMIT} (+{refills} refilled)"
    );

    // Then, turn about, 127.0.0.2 is served while 127.0.0.1 stays refused (in well
    // under 3 s at most one view of 127.0.0.1 can refill).
    let other = client_from("127.0.0.2");
    let turns = Instant::now();
    let mut flooder_refused = 0;
    for _ in 0..5 {
        let answer = send(&doc, other.post(&url).json(&view("other"))).await;
        assert_eq!(answer.status, 202, "127.0.0.2: {}", answer.body);
        *accepted.entry("other".into()).or_default() += 1;
        let answer = send(&doc, flooder.post(&url).json(&view("flood-0"))).await;
        if answer.status == 202 {
            *accepted.entry("flood-0".into()).or_default() += 1;
        } else {
            assert_limited(&answer, "127.0.0.1 after its flood");
            flooder_refused += 1;
        }
    }
    if turns.elapsed() < Duration::from_secs(3) {
        assert!(
            flooder_refused >= 4,
            "127.0.0.1 refused {flooder_refused} of 5"
        );
    }

    // A batch costs its views: one larger than the burst is refused whole, and
    // says so; one that fits is taken whole.
    let third = client_from("127.0.0.3");
    let batch = |n: usize, id: &str| Value::Array(vec![view(id); n]);
    let too_big = send(&doc, third.post(&batch_url).json(&batch(21, "b"))).await;
    assert_limited(&too_big, "batch of 21");
    let message = too_big.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("21 views, more than the limit"),
        "{message}"
    );
    let fits = send(&doc, third.post(&batch_url).json(&batch(15, "b"))).await;
    assert_eq!(
        (fits.status, fits.body["accepted"].as_i64()),
        (202, Some(15))
    );
    *accepted.entry("b".into()).or_default() += 15;
    let over = send(&doc, third.post(&batch_url).json(&batch(8, "b"))).await;
    assert_limited(&over, "batch of 8 with 5 left");
    let rest = send(&doc, third.post(&batch_url).json(&batch(5, "b"))).await;
    assert_eq!(
        (rest.status, rest.body["accepted"].as_i64()),
        (202, Some(5))
    );
    *accepted.entry("b".into()).or_default() += 5;

    // Behind a trusted proxy: the rightmost X-Forwarded-For entry is the client.
    let proxied = stack
        .spawn_ingest(&[
            ("RATE_LIMIT_PER_ADDR", "5/m"),
            ("TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
        ])
        .await
        .expect("ingest behind a proxy");
    let proxied_doc = Document::fetch(&proxied).await.expect("document");
    let proxy = client_from("127.0.0.1");
    let purl = proxied.url("/api/views");
    let via = |forwarded: Option<&str>| {
        let request = proxy.post(&purl).json(&view("proxied"));
        match forwarded {
            Some(f) => request.header("x-forwarded-for", f),
            None => request,
        }
    };
    for i in 0..5 {
        // The client may put anything on the left; the proxy's entry is the last.
        let forwarded = format!("10.0.0.{i}, 203.0.113.7");
        let answer = send(&proxied_doc, via(Some(&forwarded))).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let limited = send(&proxied_doc, via(Some("192.0.2.99, 203.0.113.7"))).await;
    assert_limited(&limited, "sixth view of 203.0.113.7");
    let neighbour = send(&proxied_doc, via(Some("203.0.113.8"))).await;
    assert_eq!(
        neighbour.status, 202,
        "another client behind the same proxy"
    );
    let unreadable = send(&proxied_doc, via(Some("203.0.113.7, garbage"))).await;
    assert_eq!(
        unreadable.status, 202,
        "an unreadable header: the peer's budget"
    );
    let without = send(&proxied_doc, via(None)).await;
    assert_eq!(without.status, 202, "no header: the peer's budget");
    *accepted.entry("proxied".into()).or_default() += 8;

    // Every 202 is in the topic and counted, exactly; nothing refused is.
    let total: i64 = accepted.values().sum();
    assert_eq!(stack.published().await, total, "messages in the topic");
    let _aggregator = stack
        .spawn_aggregator(&[("FLUSH_INTERVAL_MS", "300")])
        .await
        .expect("aggregator");
    stack
        .wait_flushed_total(total, Duration::from_secs(60))
        .await
        .expect("flushed");
    let want: BTreeMap<String, i64> = accepted
        .iter()
        .map(|(id, n)| (format!("resource:{id}"), *n))
        .collect();
    assert_eq!(stack.totals().await.expect("totals"), want);
    println!(
        "flood of {FLOOD} from 127.0.0.1: {flood_accepted} accepted, the rest 429 with Retry-After; 127.0.0.2 served; batches cost their views (21 refused whole, 15+5 taken, 8 refused); behind X-Forwarded-For the rightmost entry is limited; {total} views accepted, {total} in the topic and in Postgres"
    );
}
