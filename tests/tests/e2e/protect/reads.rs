//! Crawler views dropped, the read key, and `/metrics` on a listener of its own.

use super::*;
use viewpipe_tests::eventually;

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
    let what = format!("ready on {metrics_addr}");
    eventually(Duration::from_secs(30), &what, || async {
        match reqwest::get(format!("http://{metrics_addr}/readyz")).await {
            Ok(r) if r.status().as_u16() == 200 => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.status()))),
        }
    })
    .await;
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
