//! Over plain HTTP: the rules of the pixel, of `text/plain` bodies and of
//! cookieless visitor ids, and a view still published without one while Postgres
//! gives no salt.

use super::*;

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
