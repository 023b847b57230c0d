//! Counting from a browser without writing code, in a real headless Chromium: the
//! script (`/v.js`) embedded in pages of another origin, counting the load, single-
//! page navigations and manual calls; the image pixel (`/p.gif`); a `text/plain`
//! beacon; Do Not Track respected on request. Then, over plain HTTP, the rules of
//! the pixel, of `text/plain` bodies and of cookieless visitor ids (who gets one,
//! that every ingest derives the same, the salts kept two days), and a view still
//! published without one while Postgres gives no salt.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::ClientConfig;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{json, Value};

use ingest::protect::client::ClientAddr;
use ingest::visitor::{derive, Salt};
use viewpipe_tests::browser::{chromium_binary, chromium_version, Chromium, PageServer, Profile};
use viewpipe_tests::chaos::metric;
use viewpipe_tests::openapi::Api;
use viewpipe_tests::{log_dir, Stack, PARTITIONS};

mod rules;

const NAMESPACES: (&str, &str) = ("NAMESPACES", "page,resource");
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const WEB_KEY: &str = "web-key-0123456789abcdef";

/// Every event in the views topic, as (message key, event JSON), once all `n`
/// were read.
async fn events(stack: &Stack, n: usize) -> Vec<(String, Value)> {
    let brokers = stack.broker.addr().to_string();
    let group = format!("{}-reader", stack.group);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut all = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            all.add_partition_offset("views", p, rdkafka::Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&all).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let event =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("event JSON");
                out.push((key, event));
            }
        }
        assert_eq!(out.len(), n, "events read from the views topic");
        out
    })
    .await
    .expect("reader task")
}

/// The salt Postgres holds for today (UTC).
async fn todays_salt(stack: &Stack) -> Salt {
    let row = stack
        .db
        .query_one(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT salt FROM visitor_salts WHERE day = $1",
            [Utc::now().date_naive().into()],
        ))
        .await
        .expect("salt query")
        .expect("a salt for today");
    let bytes: Vec<u8> = row.try_get("", "salt").expect("salt bytes");
    Salt::from_bytes(&bytes).expect("32 bytes")
}

/// The visitor id the ingest derives for a client on this machine.
fn local_visitor(salt: &Salt, user_agent: &str, app: Option<&str>) -> String {
    let localhost = ClientAddr::new([127, 0, 0, 1].into());
    derive(salt, &localhost, user_agent.as_bytes(), app)
}

/// Captures window errors (a script that failed to load, a thrown exception) for
/// the report.
const ERRORS: &str = r#"<script>
  var errors = [];
  addEventListener("error", function (e) {
    var target = e.target && (e.target.src || e.target.href);
    errors.push(e.message || ("failed to load " + (target || "?")));
  }, true);
  function report(fields) {
    fields.errors = errors;
    fields.userAgent = navigator.userAgent;
    fetch("/report", { method: "POST", body: JSON.stringify(fields) });
  }
</script>"#;

/// The single-page app: the two-line embed, a pixel, a manual view, navigations
/// (two to new paths, two that keep the path, one back) and a beacon of its own.
const SPA: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>a single-page app</title>
ERRORS
<script defer src="API/v.js"
        data-type="page"></script>
</head><body>
<img id="pixel" alt="" width="1" height="1"
     src="API/p.gif?contentType=page&amp;contentId=pixel-home&amp;path=%2Fspa%2Fstart">
<script>
document.addEventListener("DOMContentLoaded", function () {
  var manual = window.viewpipe ? window.viewpipe.view({ contentId: "manual-1" }) : null;
  history.pushState({}, "", "/spa/docs/intro");
  history.replaceState({}, "", "/spa/docs/intro?tab=2");
  history.pushState({}, "", "/spa/docs/intro#top");
  history.pushState({}, "", "/spa/about");
  var beacon = navigator.sendBeacon("API/api/views",
    JSON.stringify({ contentType: "page", contentId: "beacon-1", path: "/spa/beacon" }));
  var img = document.getElementById("pixel");
  var loaded = new Promise(function (done) {
    if (img.complete) { done(); } else { img.onload = done; img.onerror = done; }
  });
  var popped = new Promise(function (done) {
    addEventListener("popstate", done, { once: true });
  });
  history.back();
  Promise.all([loaded, popped]).then(function () {
    report({ page: "spa", script: typeof window.viewpipe, manual: manual, beacon: beacon,
             pixel: img.naturalWidth + "x" + img.naturalHeight, path: location.pathname });
  });
});
</script>
</body></html>"#;

/// A page whose browser sends Do Not Track, with the script told to respect it or
/// not: it loads, moves to another path, and (respecting) tries a manual view.
fn dnt_page(respect: bool) -> String {
    let (attribute, name) = if respect {
        (r#" data-dnt="respect""#, "respect")
    } else {
        ("", "ignored")
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>do not track</title>
<script>
  Object.defineProperty(Navigator.prototype, "doNotTrack",
    {{ get: function () {{ return "1"; }}, configurable: true }});
</script>
ERRORS
<script defer src="API/v.js" data-type="page"{attribute}></script>
</head><body><script>
document.addEventListener("DOMContentLoaded", function () {{
  history.pushState({{}}, "", "/dnt/{name}/next");
  var manual = {respect} && window.viewpipe ? window.viewpipe.view() : null;
  report({{ page: "dnt-{name}", script: typeof window.viewpipe, manual: manual,
            doNotTrack: navigator.doNotTrack }});
}});
</script></body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_browser_counts_page_loads_navigations_pixels_and_beacons_exactly() {
    chromium_binary(); // fails at once, saying how to install it, when missing
    let stack = Stack::start().await.expect("stack");
    let ingest = stack.spawn_ingest(&[NAMESPACES]).await.expect("ingest");
    let _aggregator = stack
        .spawn_aggregator(&[NAMESPACES, ("FLUSH_INTERVAL_MS", "300")])
        .await
        .expect("aggregator");
    let api_origin = ingest.url("");
    let api_origin = api_origin.trim_end_matches('/');
    let pages: HashMap<String, String> = [
        ("/spa/start", SPA.to_owned()),
        ("/dnt/respect", dnt_page(true)),
        ("/dnt/ignored", dnt_page(false)),
    ]
    .into_iter()
    .map(|(path, html)| {
        let html = html.replace("ERRORS", ERRORS).replace("API", api_origin);
        (path.to_owned(), html)
    })
    .collect();
    let mut server = PageServer::start(pages).await.expect("page server");
    // Another origin: another host name and port than the ingest's.
    let site = format!("http://localhost:{}", server.addr.port());
    let profile = Profile::new(&stack.id).expect("browser profile");

    // Each page in turn, in one browser profile: its report, then its views.
    let mut reports = BTreeMap::new();
    for (page, views_after) in [("/dnt/respect", 0), ("/dnt/ignored", 2), ("/spa/start", 9)] {
        let log = log_dir().join(format!(
            "{}-chromium{}.log",
            stack.id,
            page.replace('/', "-")
        ));
        let browser = Chromium::open(&format!("{site}{page}"), &profile, &log).expect("chromium");
        let report = server
            .report(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{page}: {e:#} (browser log: {})", log.display()));
        assert_eq!(report["errors"], json!([]), "{page}: {report}");
        assert_eq!(
            report["script"], "object",
            "{page}: v.js did not run: {report}"
        );
        if views_after == 0 {
            // Nothing may be on its way: give a stray beacon time to arrive.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stack.wait_published(views_after).await;
        browser.close().await;
        reports.insert(report["page"].as_str().unwrap_or(page).to_owned(), report);
    }
    drop(profile);
    let respect = &reports["dnt-respect"];
    assert_eq!(
        (&respect["doNotTrack"], &respect["manual"]),
        (&json!("1"), &json!(false)),
        "the script sends nothing under Do Not Track when told to respect it: {respect}"
    );
    assert_eq!(reports["dnt-ignored"]["doNotTrack"], "1");
    let spa = &reports["spa"];
    assert_eq!(
        (&spa["manual"], &spa["beacon"], &spa["pixel"], &spa["path"]),
        (
            &json!(true),
            &json!(true),
            &json!("1x1"),
            &json!("/spa/docs/intro")
        ),
        "{spa}"
    );

    // Exactly the views each page sent, with their paths.
    let events = events(&stack, 9).await;
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|(key, e)| (key.clone(), e["path"].as_str().unwrap_or("-").to_owned()))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = [
        ("page:beacon-1", "/spa/beacon"),
        ("page:dnt:ignored", "/dnt/ignored"),
        ("page:dnt:ignored:next", "/dnt/ignored/next"),
        ("page:manual-1", "/spa/start"),
        ("page:pixel-home", "/spa/start"),
        ("page:spa:about", "/spa/about"),
        ("page:spa:docs:intro", "/spa/docs/intro"),
        ("page:spa:docs:intro", "/spa/docs/intro"),
        ("page:spa:start", "/spa/start"),
    ]
    .iter()
    .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
    .collect();
    want.sort();
    assert_eq!(seen, want, "views published (key, path)");

    // One browser, one visitor: the same id on every view of three page loads, the
    // one derived from this machine's address and Chromium's User-Agent.
    let salt = todays_salt(&stack).await;
    let user_agent = spa["userAgent"].as_str().expect("the browser's User-Agent");
    let visitor = local_visitor(&salt, user_agent, None);
    for (key, event) in &events {
        assert_eq!(event["visitorId"], json!(visitor), "{key}: {event}");
        assert!(event.get("sessionId").is_none_or(Value::is_null), "{event}");
    }

    // Counted exactly, in Postgres and as GET answers.
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for (key, _) in &want {
        *counts.entry(key.clone()).or_default() += 1;
    }
    stack
        .wait_flushed_total(9, Duration::from_secs(60))
        .await
        .expect("flushed");
    assert_eq!(stack.totals().await.expect("totals"), counts);
    let latest: BTreeMap<String, String> = stack
        .db
        .query_all(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT key, path FROM view_counter_total",
        ))
        .await
        .expect("paths")
        .into_iter()
        .map(|r| {
            let key: String = r.try_get_by_index(0).expect("key");
            let path: Option<String> = r.try_get_by_index(1).expect("path");
            (key, path.unwrap_or_default())
        })
        .collect();
    assert_eq!(latest["page:spa:docs:intro"], "/spa/docs/intro");
    assert_eq!(latest["page:pixel-home"], "/spa/start");
    let api = Api::new(&ingest).await;
    for (key, n) in &counts {
        let id = key.trim_start_matches("page:");
        let r = api
            .get(ingest.url(&format!("/api/views?contentType=page&contentId={id}")))
            .send()
            .await
            .expect("get");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["count"], json!(n), "GET {key}");
    }
    eprintln!(
        "browser ({}): 3 pages from {site} with the two-line embed -> 9 views, exact in the topic, Postgres and GET: script load 1 + pushState to 2 new paths 2 (replaceState/pushState on the same path 0) + back 1 + manual view() 1, pixel 1, text/plain beacon 1, Do Not Track ignored 2 (load + navigation), Do Not Track respected 0; one visitorId on all 9 across 3 browser runs, = SHA-256(today's salt, 127.0.0.1, User-Agent)[..16]",
        chromium_version().await
    );
}
