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
use viewpipe_tests::{Service, Stack};

const WEB_KEY: &str = "web-key-0123456789abcdef";
const MOBILE_KEY: &str = "mobile-key-0123456789abc";
const READ_KEY: &str = "read-key-0123456789abcdef";

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const BINGBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";

fn view(id: &str) -> Value {
    json!({"contentId": id, "contentType": "resource"})
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_are_required_and_limit_namespaces_and_apps() {
    let stack = Stack::start().await.expect("stack");
    let keys = format!("web:{WEB_KEY},mobile:{MOBILE_KEY}:course");
    let ingest = stack
        .spawn_ingest(&[("WRITE_KEYS", keys.as_str())])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    let url = ingest.url("/api/views");
    let batch_url = ingest.url("/api/views/batch");
    let code = |body: &Value| {
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Refused before anything is read or published.
    let refusals = [
        ("no key", url.clone(), None, "missing_write_key"),
        (
            "empty key",
            format!("{url}?key="),
            None,
            "missing_write_key",
        ),
        (
            "wrong header",
            url.clone(),
            Some("wrong-key-0123456789abcdef"),
            "invalid_write_key",
        ),
        (
            "key prefix",
            url.clone(),
            Some(&WEB_KEY[..16]),
            "invalid_write_key",
        ),
        (
            "wrong query",
            format!("{url}?key=wrong-key-0123456789abc"),
            None,
            "invalid_write_key",
        ),
        ("batch no key", batch_url.clone(), None, "missing_write_key"),
        (
            "batch wrong key",
            batch_url.clone(),
            Some("nope"),
            "invalid_write_key",
        ),
    ];
    for (what, target, key, want) in &refusals {
        let body = if target.ends_with("batch") {
            json!([view("x")])
        } else {
            view("x")
        };
        let mut request = api.post(target.as_str()).json(&body);
        if let Some(key) = key {
            request = request.header("x-viewpipe-key", *key);
        }
        let r = request.send().await.expect("post");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            (r.status().as_u16(), code(&body)),
            (401, (*want).to_owned()),
            "{what}: {body}"
        );
        assert!(r.headers().contains_key("www-authenticate"), "{what}");
    }
    // The key is checked before the body: a broken body without a key is a 401.
    let r = api
        .post(&url)
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    // A key limited to `course` may not write `resource`.
    let r = api
        .post(&url)
        .header("x-viewpipe-key", MOBILE_KEY)
        .json(&view("r1"))
        .send()
        .await
        .expect("post");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), code(&body)),
        (403, "namespace_not_allowed".into()),
        "{body}"
    );
    assert_eq!(body["error"]["field"], "contentType");
    assert_eq!(stack.published().await, 0, "nothing refused was published");

    // The right keys: header or query, and a limited key in its namespace.
    for request in [
        api.post(&url)
            .header("x-viewpipe-key", WEB_KEY)
            .json(&view("w1")),
        api.post(format!("{url}?key={WEB_KEY}")).json(&view("w1")),
        api.post(&url)
            .header("x-viewpipe-key", MOBILE_KEY)
            .json(&json!({"contentId": "c1", "contentType": "course"})),
    ] {
        let r = request.send().await.expect("post");
        assert_eq!(r.status().as_u16(), 202);
    }
    // In a batch, an element the key may not write is rejected; the others count.
    let r = api
        .post(&batch_url)
        .header("x-viewpipe-key", MOBILE_KEY)
        .json(&json!([
            {"contentId": "c1", "contentType": "course"},
            {"contentId": "r1", "contentType": "resource"},
            {"contentId": "c2", "contentType": "course"},
            {"contentType": "course"},
        ]))
        .send()
        .await
        .expect("batch");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), body["accepted"].as_i64()),
        (202, Some(2)),
        "{body}"
    );
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["index"].as_i64().unwrap_or(-1), code(r)))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "namespace_not_allowed".into()),
            (3, "missing_field".into())
        ]
    );
    assert_eq!(stack.published().await, 5);

    // RATE_LIMIT_PER_KEY: per app, whatever the address.
    let limited = stack
        .spawn_ingest(&[("WRITE_KEYS", keys.as_str()), ("RATE_LIMIT_PER_KEY", "4/m")])
        .await
        .expect("ingest with a per-app limit");
    let doc = Document::fetch(&limited).await.expect("document");
    let lurl = limited.url("/api/views");
    let mut statuses = Vec::new();
    for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        for _ in 0..2 {
            let client = client_from(source);
            let answer = send(
                &doc,
                client
                    .post(&lurl)
                    .header("x-viewpipe-key", WEB_KEY)
                    .json(&view("w2")),
            )
            .await;
            if answer.status != 202 {
                assert_limited(&answer, "web over its limit");
                let message = answer.body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("app web"), "{message}");
                assert!(!message.contains(WEB_KEY), "the key must not be echoed");
            }
            statuses.push(answer.status);
        }
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 429, 429],
        "web's 4/m over three addresses"
    );
    let mobile = send(
        &doc,
        reqwest::Client::new()
            .post(&lurl)
            .header("x-viewpipe-key", MOBILE_KEY)
            .json(&json!({"contentId": "c3", "contentType": "course"})),
    )
    .await;
    assert_eq!(mobile.status, 202, "another app has its own budget");
    assert_eq!(stack.published().await, 10);

    // Settings that cannot work stop start-up, naming the setting and not the key.
    for (settings, says) in [
        (vec![("RATE_LIMIT_PER_KEY", "5/s")], "RATE_LIMIT_PER_KEY"),
        (
            vec![("WRITE_KEYS", "web:web-key-0123456789abcdef:video")],
            "WRITE_KEYS names namespace \"video\"",
        ),
        (
            vec![("WRITE_KEYS", "web:short-secret")],
            "WRITE_KEYS: entry 1 (app web)",
        ),
    ] {
        let Err(e) = stack.spawn_ingest(&settings).await else {
            panic!("{settings:?} started");
        };
        let e = format!("{e:#}");
        assert!(e.contains(says), "{settings:?}: {e}");
        assert!(!e.contains("short-secret"), "{e}");
    }
    println!(
        "write keys: {} refusals 401 before reading the body, 403 outside the key's namespaces, nothing published; header and ?key= accepted; batch element refused by namespace; per-app limit across addresses; bad settings stop start-up",
        refusals.len() + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_views_are_answered_but_not_published_with_bot_filter_drop() {
    let stack = Stack::start().await.expect("stack");
    let dropping = stack
        .spawn_ingest_process(&[("BOT_FILTER", "drop")])
        .await
        .expect("ingest dropping crawler views");
    let api = Api::new(&dropping).await;
    let post = |ingest: &Service, ua: &str, body: Value| {
        api.post(ingest.url("/api/views"))
            .header("user-agent", ua)
            .json(&body)
            .send()
    };

    let r = post(&dropping, GOOGLEBOT, view("page"))
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202, "crawlers are not told");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["success"], true);
    assert!(
        body["count"] == json!(0) || body["count"].is_null(),
        "the key's count without the view: {body}"
    );
    let r = api
        .post(dropping.url("/api/views/batch"))
        .header("user-agent", BINGBOT)
        .json(&json!([view("page"), view("page"), view("other"), {"contentId": "x"}]))
        .send()
        .await
        .expect("batch");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), body["accepted"].as_i64()),
        (202, Some(3)),
        "{body}"
    );
    assert_eq!(body["rejected"][0]["index"], 3);
    assert_eq!(stack.published().await, 0, "no crawler view published");
    let series = "viewpipe_ingest_bot_views_total{content_type=\"resource\"}";
    assert_eq!(metric(&dropping, series).await, 4.0, "{series}");

    // People's browsers, and an application's own HTTP client, are counted.
    for ua in [CHROME, SAFARI, FIREFOX, "curl/8.5.0"] {
        let r = post(&dropping, ua, view("page")).await.expect("post");
        assert_eq!(r.status().as_u16(), 202, "{ua}");
    }
    assert_eq!(stack.published().await, 4);
    assert_eq!(metric(&dropping, series).await, 4.0, "{series}");

    // BOT_FILTER=off (the default) counts crawlers too.
    let counting = stack.spawn_ingest(&[]).await.expect("ingest");
    let r = post(&counting, GOOGLEBOT, view("page"))
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(stack.published().await, 5);
    println!("BOT_FILTER=drop: 4 crawler views answered 202 (single and batch), none published, {series} = 4; Chrome, Safari, Firefox and curl published; BOT_FILTER=off publishes Googlebot's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_key_guards_counts_when_set() {
    let stack = Stack::start().await.expect("stack");
    let guarded = stack
        .spawn_ingest(&[("READ_KEY", READ_KEY)])
        .await
        .expect("ingest with a read key");
    let open = stack.spawn_ingest(&[]).await.expect("ingest without");
    let api = Api::new(&guarded).await;
    let open_api = Api::new(&open).await;
    let reads = [
        "/api/views?contentType=resource&contentId=a",
        "/api/views/daily?contentType=resource&contentId=a&days=3",
        "/api/views/top?contentType=resource",
    ];
    let mut checked = 0;
    for path in reads {
        let url = guarded.url(path);
        let wrong = "wrong-key-0123456789abcdef";
        for (what, request, status, code) in [
            ("no key", api.get(&url), 401, "missing_read_key"),
            (
                "Basic auth",
                api.get(&url).header("authorization", "Basic dXNlcjpwYXNz"),
                401,
                "missing_read_key",
            ),
            (
                "wrong bearer",
                api.get(&url).bearer_auth(wrong),
                401,
                "invalid_read_key",
            ),
            (
                "wrong header",
                api.get(&url).header("x-viewpipe-key", wrong),
                401,
                "invalid_read_key",
            ),
            (
                "wrong query",
                api.get(format!("{url}&key={wrong}")),
                401,
                "invalid_read_key",
            ),
            ("bearer", api.get(&url).bearer_auth(READ_KEY), 200, ""),
            (
                "header",
                api.get(&url).header("x-viewpipe-key", READ_KEY),
                200,
                "",
            ),
            ("query", api.get(format!("{url}&key={READ_KEY}")), 200, ""),
        ] {
            let r = request.send().await.expect("get");
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let got = body["error"]["code"].as_str().unwrap_or_default();
            assert_eq!(
                (r.status().as_u16(), got),
                (status, code),
                "{path} {what}: {body}"
            );
            checked += 1;
        }
        // Without READ_KEY a `key` parameter is ignored, as any unknown one is.
        let r = open_api
            .get(open.url(&format!("{path}&key=anything")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path} on the open ingest");
    }
    // Writes, health and the document stay open.
    let r = api
        .post(guarded.url("/api/views"))
        .json(&view("a"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    for path in ["/healthz", "/openapi.json", "/metrics"] {
        let r = api.get(guarded.url(path)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    println!("READ_KEY: {checked} reads over 3 routes answered as documented (401 missing/invalid, 200 with Bearer, header or ?key=); `key` ignored without READ_KEY; writes and operations open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_with_metrics_addr() {
    let stack = Stack::start().await.expect("stack");
    let metrics_addr = viewpipe_tests::free_addr();
    let ingest = stack
        .spawn_ingest_process(&[("METRICS_ADDR", metrics_addr.to_string().as_str())])
        .await
        .expect("ingest");
    let api = Api::new(&ingest).await;
    let r = api
        .get(ingest.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 404, "/metrics is not on the API port");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    for path in ["/healthz", "/readyz"] {
        let r = api.get(ingest.url(path)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path} stays on the API port");
    }
    let doc: Value = reqwest::get(ingest.url("/openapi.json"))
        .await
        .expect("document")
        .json()
        .await
        .expect("json");
    assert!(
        doc["paths"]["/metrics"].is_null(),
        "the document leaves it out"
    );

    let on_metrics = |path: &str| reqwest::get(format!("http://{metrics_addr}{path}"));
    let r = on_metrics("/metrics").await.expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.expect("text");
    assert!(text.contains("viewpipe_ingest_requests_total"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("viewpipe_ingest_requests_total")
                && l.contains("route=\"/metrics\"")
                && l.contains("status=\"404\"")),
        "the public 404 is counted: {text}"
    );
    for path in ["/healthz", "/readyz"] {
        let r = on_metrics(path).await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path} on METRICS_ADDR");
    }
    let r = on_metrics("/api/views?contentType=resource&contentId=a")
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404, "the API is not on METRICS_ADDR");

    // SIGTERM stops both listeners.
    let status = ingest
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(metrics_addr).await.is_err(),
        "METRICS_ADDR still listening after the ingest exited"
    );

    // In-process: METRICS_ADDR port 0, the chosen address from App::metrics_addr,
    // and both listeners closed by the shutdown token.
    let (api_addr, metrics_addr) = in_process_with_metrics_addr(&stack).await;
    for addr in [api_addr, metrics_addr] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still listening after shutdown"
        );
    }
    println!("METRICS_ADDR: /metrics 404 on the API port and 200 on its own listener with /healthz and /readyz; SIGTERM and the shutdown token close both");
}

/// Builds an ingest with `METRICS_ADDR=127.0.0.1:0`, reads `/metrics` and `/readyz`
/// on the address it chose, stops it, and returns both addresses.
async fn in_process_with_metrics_addr(stack: &Stack) -> (SocketAddr, SocketAddr) {
    let mut args = vec!["ingest".to_owned()];
    for (k, v) in stack.env() {
        if !matches!(k.as_str(), "RUST_LOG" | "KAFKA_SESSION_TIMEOUT_MS") {
            args.push(format!("--{}={v}", k.to_lowercase().replace('_', "-")));
        }
    }
    args.extend([
        "--ingest-addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
    ]);
    let cli = <ingest::settings::Cli as clap::Parser>::try_parse_from(args).expect("settings");
    // A recorder of its own (not installed): this test reads only that it is served.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let shutdown = viewpipe_runtime::Shutdown::default();
    let app = ingest::App::build(cli.settings, prometheus, shutdown.clone())
        .await
        .expect("ingest");
    let api_addr = app.local_addr().expect("api addr");
    let metrics_addr = app.metrics_addr().expect("METRICS_ADDR is served");
    assert_ne!(metrics_addr.port(), 0);
    let task = tokio::spawn(app.run_until_stopped());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("http://{metrics_addr}/readyz"))
            .await
            .map(|r| r.status().as_u16());
        if matches!(ready, Ok(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready on {metrics_addr}: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    let r = reqwest::get(format!("http://{api_addr}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 404);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stopped in time")
        .expect("task")
        .expect("clean stop");
    (api_addr, metrics_addr)
}
