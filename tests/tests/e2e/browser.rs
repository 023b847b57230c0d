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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pixel_beacons_and_visitor_ids_follow_the_rules() {
    let stack = Stack::start().await.expect("stack");
    // Salts of three days ago and of yesterday: the first new day's salt deletes
    // the older one only.
    let today = Utc::now().date_naive();
    let yesterday_salt: [u8; 32] = rand::random();
    for (days_ago, salt) in [(3, rand::random::<[u8; 32]>()), (1, yesterday_salt)] {
        stack
            .db
            .execute(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "INSERT INTO visitor_salts (day, salt) VALUES ($1, $2)",
                [
                    (today - chrono::Duration::days(days_ago)).into(),
                    salt.to_vec().into(),
                ],
            ))
            .await
            .expect("old salt");
    }
    let a = stack.spawn_ingest(&[NAMESPACES]).await.expect("ingest a");
    let b = stack.spawn_ingest(&[NAMESPACES]).await.expect("ingest b");
    let off = stack
        .spawn_ingest(&[NAMESPACES, ("VISITOR_HASH", "off")])
        .await
        .expect("ingest without visitor ids");
    let bots = stack
        .spawn_ingest(&[NAMESPACES, ("BOT_FILTER", "drop")])
        .await
        .expect("ingest dropping crawlers");
    let keys = format!("web:{WEB_KEY}");
    let keyed = stack
        .spawn_ingest(&[NAMESPACES, ("WRITE_KEYS", keys.as_str())])
        .await
        .expect("ingest with write keys");
    let api = Api::new(&a).await;
    let keyed_api = Api::new(&keyed).await;
    let pixel = |ingest: &viewpipe_tests::Service, query: &str| {
        ingest.url(&format!("/p.gif?contentType=page&{query}"))
    };

    // The pixel: a GIF no cache keeps, for each valid load (by any ingest).
    let loads = [
        (&a, "contentId=px-a&path=%2Fmail%2F42&_=1", CHROME),
        (&b, "contentId=px-b", CHROME),
        (&a, "contentId=px-ua-b", FIREFOX),
        (&a, "contentId=px-session&sessionId=s1", CHROME),
        (&off, "contentId=px-off", CHROME),
        (&bots, "contentId=px-bot", GOOGLEBOT),
    ];
    for (ingest, query, ua) in loads {
        let r = Api::new(ingest)
            .await
            .get(pixel(ingest, query))
            .header("user-agent", ua)
            .send()
            .await
            .expect("pixel");
        assert_eq!(r.status().as_u16(), 200, "{query}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), "image/gif");
        assert_eq!(
            header("cache-control"),
            "no-store, no-cache, must-revalidate, max-age=0"
        );
        assert_eq!(header("pragma"), "no-cache");
        assert_eq!(header("expires"), "0");
        assert_eq!((r.bytes().len(), &r.bytes()[..6]), (43, &b"GIF89a"[..]));
    }
    // Write keys guard it as they guard POST.
    let r = keyed_api
        .get(pixel(&keyed, "contentId=px-key"))
        .send()
        .await
        .expect("pixel");
    assert_eq!(r.status().as_u16(), 401, "no key");
    let r = keyed_api
        .get(pixel(&keyed, &format!("contentId=px-key&key={WEB_KEY}")))
        .header("user-agent", CHROME)
        .send()
        .await
        .expect("pixel");
    assert_eq!(r.status().as_u16(), 200, "with ?key=");
    // A HEAD request counts nothing; invalid parameters are named.
    let head = reqwest::Client::new()
        .head(pixel(&a, "contentId=px-head"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status().as_u16(), 200);
    for (query, field, code) in [
        ("contentId=", "contentId", "invalid_value"),
        ("path=%2Fx", "contentId", "missing_field"),
        ("contentId=a%20b", "contentId", "invalid_value"),
        ("contentId=x&sessionId=", "sessionId", "invalid_value"),
    ] {
        let r = api.get(pixel(&a, query)).send().await.expect("pixel");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            (r.status().as_u16(), &body["error"]["field"]),
            (400, &json!(field)),
            "{query}: {body}"
        );
        assert_eq!(body["error"]["code"], code, "{query}");
    }
    let r = api
        .get(a.url("/p.gif?contentType=video&contentId=x"))
        .send()
        .await
        .expect("pixel");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), &body["error"]["code"]),
        (400, &json!("unknown_namespace"))
    );
    assert_eq!(body["error"]["field"], "contentType");

    // POSTs: a backend's JSON, a browser's JSON (Origin), beacons (text/plain).
    let view = |id: &str| json!({"contentType": "page", "contentId": id});
    let posts = [
        (
            "backend",
            "application/json",
            None,
            view("backend").to_string(),
        ),
        (
            "origin",
            "application/json",
            Some("https://site.example"),
            view("origin").to_string(),
        ),
        (
            "beacon",
            "text/plain;charset=UTF-8",
            None,
            json!({"contentType": "page", "contentId": "beacon", "path": "/b"}).to_string(),
        ),
    ];
    for (what, content_type, origin, body) in posts {
        let mut request = api
            .post(a.url("/api/views"))
            .header("content-type", content_type)
            .header("user-agent", CHROME)
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.expect("post");
        assert_eq!(r.status().as_u16(), 202, "{what}");
    }
    let batch = json!([view("batch-1"), {"contentType": "page", "contentId": "batch-2", "sessionId": "s2"}]);
    let r = api
        .post(a.url("/api/views/batch"))
        .header("content-type", "text/plain")
        .header("user-agent", CHROME)
        .body(batch.to_string())
        .send()
        .await
        .expect("batch");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (r.status().as_u16(), &body["accepted"]),
        (202, &json!(2)),
        "{body}"
    );
    // A text/plain body is held to the same rules; other types stay refused.
    for (content_type, body, status, field) in [
        (
            "text/plain",
            r#"{"contentType":"page"}"#,
            400,
            json!("contentId"),
        ),
        ("text/plain", "not json", 400, Value::Null),
        (
            "text/html",
            r#"{"contentType":"page","contentId":"x"}"#,
            415,
            Value::Null,
        ),
    ] {
        let r = api
            .post(a.url("/api/views"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("post");
        let answer: Value = r.json().await.expect("json");
        assert_eq!(
            (r.status().as_u16(), &answer["error"]["field"]),
            (status, &field),
            "{content_type} {body}: {answer}"
        );
    }

    // The script: served as it is kept in the repository, cacheable for an hour.
    let r = api.get(a.url("/v.js")).send().await.expect("v.js");
    assert_eq!(r.status().as_u16(), 200);
    let script = r.text().await.expect("text");
    assert_eq!(script, ingest::routes::script::SCRIPT);
    for (name, value) in [
        ("content-type", "text/javascript; charset=utf-8"),
        ("cache-control", "public, max-age=3600"),
    ] {
        assert_eq!(
            r.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }

    // Published: every valid view except the crawler's and the HEAD.
    let events: BTreeMap<String, Value> = events(&stack, 11)
        .await
        .into_iter()
        .map(|(_, e)| (e["contentId"].as_str().unwrap_or_default().to_owned(), e))
        .collect();
    assert_eq!(stack.published().await, 11);
    let salt = todays_salt(&stack).await;
    let chrome = local_visitor(&salt, CHROME, None);
    let visitor = |id: &str| events[id]["visitorId"].as_str().map(str::to_owned);
    for id in ["px-a", "px-b", "origin", "beacon", "batch-1"] {
        assert_eq!(visitor(id), Some(chrome.clone()), "{id}: {}", events[id]);
    }
    assert_eq!(
        visitor("px-ua-b"),
        Some(local_visitor(&salt, FIREFOX, None))
    );
    assert_ne!(visitor("px-ua-b"), Some(chrome.clone()), "another browser");
    assert_eq!(
        visitor("px-key"),
        Some(local_visitor(&salt, CHROME, Some("web")))
    );
    assert_ne!(
        visitor("px-key"),
        Some(chrome.clone()),
        "the app is part of it"
    );
    for id in ["px-session", "batch-2", "backend", "px-off"] {
        assert_eq!(visitor(id), None, "{id}: {}", events[id]);
    }
    assert_eq!(events["px-session"]["sessionId"], "s1");
    assert_eq!(events["px-a"]["path"], "/mail/42");
    assert!(!events.contains_key("px-bot") && !events.contains_key("px-head"));

    // Salts: today's (made once, shared by both ingests) and yesterday's are kept;
    // the one of three days ago is gone.
    let days: Vec<(String, i64)> = stack
        .rows("SELECT day::text, length(salt)::int8 FROM visitor_salts ORDER BY day")
        .await
        .expect("salts");
    let day = |d: chrono::NaiveDate| (d.to_string(), 32);
    assert_eq!(days, [day(today - chrono::Duration::days(1)), day(today)]);
    let kept = stack
        .rows(&format!(
            "SELECT encode(salt, 'hex'), 0::int8 FROM visitor_salts WHERE day = '{}'",
            today - chrono::Duration::days(1)
        ))
        .await
        .expect("yesterday");
    let hex: String = yesterday_salt.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(kept[0].0, hex, "yesterday's salt is left as it was");
    eprintln!(
        "pixel and beacons: 6 pixel loads answered a 43-byte GIF with no-cache headers (crawler under BOT_FILTER=drop too, not published); 401 without the write key, 200 with ?key=; HEAD counts nothing; 5 invalid queries 400 naming the field; text/plain view and batch accepted, held to the same rules (400), text/html 415; 11 views published: visitorId on pixel/Origin/text-plain views (same on two ingests, differs by User-Agent and app), none with a sessionId, from a backend, or with VISITOR_HASH=off; salts kept: yesterday and today, the one of 3 days ago deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_published_without_a_visitor_id_while_postgres_gives_no_salt() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest_process(&[NAMESPACES])
        .await
        .expect("ingest");
    let http = reqwest::Client::new();
    let load = |id: String| {
        http.get(ingest.url(&format!("/p.gif?contentType=page&contentId={id}")))
            .header("user-agent", CHROME)
            .send()
    };
    let series = |result: &str| format!("viewpipe_ingest_visitor_ids_total{{result=\"{result}\"}}");

    // The salts table is out of reach: the view is published all the same.
    let sql = |s: &'static str| stack.db.execute_unprepared(s);
    sql("ALTER TABLE visitor_salts RENAME TO visitor_salts_away")
        .await
        .expect("rename");
    let r = load("no-salt".into()).await.expect("pixel");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(metric(&ingest, &series("no_salt")).await, 1.0);
    assert_eq!(metric(&ingest, &series("derived")).await, 0.0);

    // Back in reach: within the retry interval, views get their id again.
    sql("ALTER TABLE visitor_salts_away RENAME TO visitor_salts")
        .await
        .expect("rename back");
    let started = Instant::now();
    let mut loads = 1;
    while metric(&ingest, &series("derived")).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no visitor id 15 s after the salts came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = load(format!("retry-{loads}")).await.expect("pixel");
        assert_eq!(r.status().as_u16(), 200);
        loads += 1;
    }
    let recovered = started.elapsed();
    let events = events(&stack, loads).await;
    let with_id = events
        .iter()
        .filter(|(_, e)| e["visitorId"].is_string())
        .count();
    assert_eq!(with_id, 1, "only the last view had a salt again");
    let first = events.iter().find(|(_, e)| e["contentId"] == "no-salt");
    assert!(first.is_some_and(|(_, e)| e.get("visitorId").is_none()));
    let log = std::fs::read_to_string(&ingest.log_path).expect("log");
    assert!(log.contains("no visitor salt"), "the failure is logged");
    assert!(!log.contains(CHROME), "the User-Agent reached the log");
    eprintln!(
        "no salt: the view was published without visitorId (no_salt = 1, a warning logged, no User-Agent in the log); {} views in all, ids again {:.1} s after the table came back",
        loads,
        recovered.as_secs_f64()
    );
}
