//! The broker going away and coming back, metrics, the OpenAPI document and CORS.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_broker_posts_get_503_quickly_and_both_recover() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack.spawn_ingest(&[]).await.expect("ingest");
    let http = Api::new(&ingest).await;
    let post = || {
        http.post(ingest.url("/api/views"))
            .json(&json!({"contentId": "outage", "contentType": "resource"}))
            .send()
    };
    assert_eq!(post().await.expect("post").status().as_u16(), 202);

    stack.broker.down().expect("down");
    let down_at = Instant::now();
    // The first post races the readiness probe's noticing.
    let first = {
        let (http, url) = (http.clone(), ingest.url("/api/views"));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .post(url)
                .json(&json!({"contentId": "outage", "contentType": "resource"}))
                .send()
                .await
                .expect("post while down");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry_after, body, started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let readyz_after = loop {
        let r = http
            .get(ingest.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        if r.status().as_u16() == 503 {
            let body: Value = r.json().await.expect("json");
            assert!(
                body["failing"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("kafka"))),
                "{body}"
            );
            break down_at.elapsed();
        }
        assert!(Instant::now() < deadline, "readyz never went 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Once the probe knows, a post is refused at once.
    let started = Instant::now();
    let r = post().await.expect("post");
    let fast = started.elapsed();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(fast < Duration::from_secs(1), "{fast:?}");
    let (status, retry_after, body, took) = first.await.expect("first post");
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    assert!(took < Duration::from_secs(12), "503 took {took:?}");

    stack.broker.up().expect("up");
    let up_at = Instant::now();
    eventually(Duration::from_secs(30), "recovery", || async {
        let ready = http
            .get(ingest.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        let posted = post().await.expect("post").status().as_u16();
        if ready == 200 && posted == 202 {
            Ok(())
        } else {
            Err(format!("readyz {ready}, post {posted}"))
        }
    })
    .await;
    println!(
        "broker down: first POST 503 after {:.1} s (publish timeout), /readyz 503 {:.1} s after the outage began, then POST 503 in {} ms; /readyz 200 and POST 202 again {:.1} s after the broker came back, no restart",
        took.as_secs_f64(),
        readyz_after.as_secs_f64(),
        fast.as_millis(),
        up_at.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_openapi_and_cors() {
    let stack = Stack::start().await.expect("stack");
    let aggregator = stack
        .spawn_aggregator_process(&[])
        .await
        .expect("aggregator");
    let ingest = stack
        .spawn_ingest_process(&[("CORS_ORIGINS", "https://app.example, https://other.example")])
        .await
        .expect("ingest");
    let plain = stack
        .spawn_ingest(&[("NAMESPACES", "*")])
        .await
        .expect("ingest without CORS, any namespace");
    let http = Api::new(&ingest).await;
    let r = http
        .post(ingest.url("/api/views"))
        .json(&json!({"contentId": "m", "contentType": "resource"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    let r = http
        .get(ingest.url("/api/views/nope/../x"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);

    // Metrics: every contract name, routes by template only.
    let text = |s: &Service| {
        let url = s.url("/metrics");
        async move {
            reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text")
        }
    };
    let ingest_metrics = text(&ingest).await;
    for name in [
        "viewpipe_ingest_requests_total",
        "viewpipe_ingest_request_duration_seconds",
        "viewpipe_ingest_events_total{result=\"accepted\"}",
        "viewpipe_ingest_events_total{result=\"rejected\"}",
        "viewpipe_ingest_publish_duration_seconds",
    ] {
        assert!(
            ingest_metrics.contains(name),
            "ingest /metrics lacks {name}"
        );
    }
    assert!(ingest_metrics.contains("route=\"/api/views\""));
    assert!(
        !ingest_metrics.contains("nope"),
        "raw paths must not become labels"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&aggregator, "viewpipe_aggregator_consumer_lag").await == 0.0
        && !text(&aggregator)
            .await
            .contains("viewpipe_aggregator_consumer_lag{")
    {
        assert!(Instant::now() < deadline, "no consumer lag reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let aggregator_metrics = text(&aggregator).await;
    for name in [
        "viewpipe_aggregator_events_total{result=\"counted\"}",
        "viewpipe_aggregator_events_total{result=\"duplicate\"}",
        "viewpipe_aggregator_events_total{result=\"invalid\"}",
        "viewpipe_aggregator_flush_duration_seconds",
        "viewpipe_aggregator_flushed_rows_total",
        "viewpipe_aggregator_pending_keys",
        "viewpipe_aggregator_consumer_lag{topic=\"views\",partition=\"",
        "viewpipe_aggregator_rebalances_total",
        "viewpipe_aggregator_last_flush_timestamp_seconds",
    ] {
        assert!(
            aggregator_metrics.contains(name),
            "aggregator /metrics lacks {name}"
        );
    }

    // OpenAPI: every route, and every described path answers.
    let (status, doc) = get_json(&http, ingest.url("/openapi.json")).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flat_map(|o| o.keys().cloned())
                .map(move |m| (path.clone(), m))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = [
        ("/api/views", "get"),
        ("/api/views", "post"),
        ("/api/views/batch", "post"),
        ("/api/views/daily", "get"),
        ("/api/views/top", "get"),
        ("/api/views/flush", "post"),
        ("/api/jobs/{id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/p.gif", "get"),
        ("/v.js", "get"),
        ("/api/views/counts", "post"),
        ("/api/views/badge.svg", "get"),
    ]
    .iter()
    .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
    .collect();
    assert_eq!(described, routes, "OpenAPI paths");
    // The document is this deployment's: its namespaces, or the name rule for `*`.
    let content_type = |doc: &Value| {
        doc["components"]["schemas"]["ViewRequest"]["properties"]["contentType"].clone()
    };
    assert_eq!(content_type(&doc)["enum"], json!(["resource", "course"]));
    let (_, any) = get_json(&http, plain.url("/openapi.json")).await;
    assert_eq!(content_type(&any)["enum"], Value::Null);
    assert_eq!(content_type(&any)["pattern"], "^[a-z][a-z0-9_-]{0,31}$");
    for (path, method) in &described {
        let url = ingest.url(&path.replace("{id}", "0b8f8a52-7d1c-4d6e-9d64-8f5b1e2c3a4d"));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let status = http
            .request(method, url)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert!(
            status != 404 && status != 405,
            "{path} is described but answers {status}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // CORS: a listed origin gets its preflight answered; others and the default get nothing.
    let preflight = |s: &Service, origin: &str| {
        http.request(reqwest::Method::OPTIONS, s.url("/api/views"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = |r: &Checked| {
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let r = preflight(&ingest, "https://app.example")
        .await
        .expect("preflight");
    assert_eq!(allowed(&r).as_deref(), Some("https://app.example"));
    let r = preflight(&ingest, "https://evil.example")
        .await
        .expect("preflight");
    assert_eq!(allowed(&r), None);
    let r = preflight(&plain, "https://app.example")
        .await
        .expect("preflight");
    assert_eq!(allowed(&r), None);
    let r = http
        .get(ingest.url("/api/views?contentType=resource&contentId=m"))
        .header("origin", "https://other.example")
        .send()
        .await
        .expect("get");
    assert_eq!(allowed(&r).as_deref(), Some("https://other.example"));
    println!("metrics: all {} contract names on both services; OpenAPI: {} operations, each answering; CORS: listed origins only", 14, described.len());
}
