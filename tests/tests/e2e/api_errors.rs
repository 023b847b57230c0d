//! The error model, table-driven: malformed requests of every kind get their
//! documented status and `code` (naming the field where there is one), and the
//! service answers normally afterwards.

use chrono::Utc;
use serde_json::{json, Value};

use viewpipe_tests::openapi::Api;
use viewpipe_tests::Stack;

const TOKEN: &str = "t0ken-for-tests-long-enough-for-32";

/// One malformed request and what it must get.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    auth: Option<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn post(
    name: &str,
    body: impl Into<Vec<u8>>,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name: name.to_owned(),
        method: "POST",
        path: "/api/views".into(),
        content_type: Some("application/json"),
        auth: None,
        body: body.into(),
        status: 400,
        code,
        field,
    }
}

fn view(extra: Value) -> Vec<u8> {
    let mut v = json!({"contentId": "a", "contentType": "resource"});
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            obj.insert(k.clone(), x.clone());
        }
    }
    v.to_string().into_bytes()
}

fn get(name: &str, path: &str, code: &'static str, field: Option<&'static str>) -> Case {
    Case {
        name: name.to_owned(),
        method: "GET",
        path: path.to_owned(),
        content_type: None,
        auth: None,
        body: Vec::new(),
        status: 400,
        code,
        field,
    }
}

fn cases() -> Vec<Case> {
    let future = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let mut c = vec![
        post(
            "missing contentId",
            json!({"contentType": "resource"}).to_string(),
            "missing_field",
            Some("contentId"),
        ),
        post(
            "missing contentType",
            json!({"contentId": "a"}).to_string(),
            "missing_field",
            Some("contentType"),
        ),
        post(
            "contentId a number",
            json!({"contentId": 7, "contentType": "resource"}).to_string(),
            "invalid_type",
            Some("contentId"),
        ),
        post(
            "contentId null",
            json!({"contentId": null, "contentType": "resource"}).to_string(),
            "missing_field",
            Some("contentId"),
        ),
        post(
            "contentId empty",
            view(json!({"contentId": ""})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId 129 chars",
            view(json!({"contentId": "x".repeat(129)})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId 1 MB-ish",
            view(json!({"contentId": "x".repeat(500_000)})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId with space",
            view(json!({"contentId": "a b"})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId with slash",
            view(json!({"contentId": "a/b"})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId non-ASCII",
            view(json!({"contentId": "café"})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentId control char",
            view(json!({"contentId": "a\u{7}"})),
            "invalid_value",
            Some("contentId"),
        ),
        post(
            "contentType array",
            view(json!({"contentType": ["resource"]})),
            "invalid_type",
            Some("contentType"),
        ),
        post(
            "contentType unknown",
            view(json!({"contentType": "video"})),
            "unknown_namespace",
            Some("contentType"),
        ),
        post(
            "contentType upper case",
            view(json!({"contentType": "Resource"})),
            "unknown_namespace",
            Some("contentType"),
        ),
        post(
            "contentType empty",
            view(json!({"contentType": ""})),
            "unknown_namespace",
            Some("contentType"),
        ),
        post(
            "path object",
            view(json!({"path": {}})),
            "invalid_type",
            Some("path"),
        ),
        post(
            "path 2049 chars",
            view(json!({"path": "/".repeat(2049)})),
            "too_long",
            Some("path"),
        ),
        post(
            "sessionId number",
            view(json!({"sessionId": 5})),
            "invalid_type",
            Some("sessionId"),
        ),
        post(
            "sessionId control char",
            view(json!({"sessionId": "a\u{1}"})),
            "invalid_value",
            Some("sessionId"),
        ),
        post(
            "sessionId 129 chars",
            view(json!({"sessionId": "s".repeat(129)})),
            "invalid_value",
            Some("sessionId"),
        ),
        post(
            "sessionId non-ASCII",
            view(json!({"sessionId": "ünï"})),
            "invalid_value",
            Some("sessionId"),
        ),
        post(
            "eventId bool",
            view(json!({"eventId": true})),
            "invalid_type",
            Some("eventId"),
        ),
        post(
            "eventId newline",
            view(json!({"eventId": "a\nb"})),
            "invalid_value",
            Some("eventId"),
        ),
        post(
            "eventId 129 chars",
            view(json!({"eventId": "e".repeat(129)})),
            "invalid_value",
            Some("eventId"),
        ),
        post(
            "occurredAt 10 min ahead",
            view(json!({"occurredAt": future})),
            "in_future",
            Some("occurredAt"),
        ),
        post(
            "occurredAt with a space for T",
            view(json!({"occurredAt": "2026-11-21 10:00:00Z"})),
            "invalid_value",
            Some("occurredAt"),
        ),
        post(
            "occurredAt not a date",
            view(json!({"occurredAt": "21/11/2026"})),
            "invalid_value",
            Some("occurredAt"),
        ),
        post(
            "occurredAt a number",
            view(json!({"occurredAt": 1_700_000_000})),
            "invalid_type",
            Some("occurredAt"),
        ),
        post(
            "occurredAt without zone",
            view(json!({"occurredAt": "2026-11-21T10:00:00"})),
            "invalid_value",
            Some("occurredAt"),
        ),
        post(
            "occurredAt month 13",
            view(json!({"occurredAt": "2026-13-01T00:00:00Z"})),
            "invalid_value",
            Some("occurredAt"),
        ),
        post("body an array", "[1,2]", "invalid_type", Some("body")),
        post("body a string", "\"view\"", "invalid_type", Some("body")),
        post("body null", "null", "invalid_type", Some("body")),
        post("not JSON", "{contentId: a", "invalid_json", None),
        post("empty body", "", "invalid_json", None),
        post(
            "trailing garbage",
            "{\"contentId\":\"a\",\"contentType\":\"resource\"} x",
            "invalid_json",
            None,
        ),
        post(
            "invalid UTF-8",
            b"{\"contentId\":\"\xff\xfe\",\"contentType\":\"resource\"}".to_vec(),
            "invalid_json",
            None,
        ),
        post(
            "deeply nested",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "invalid_json",
            None,
        ),
    ];
    // Content types and sizes.
    // (`text/plain` holding JSON is read as JSON: what a beacon sends.)
    let mut text = post(
        "text/html body",
        view(json!({})),
        "unsupported_media_type",
        None,
    );
    text.content_type = Some("text/html");
    text.status = 415;
    c.push(text);
    let mut none = post(
        "no content type",
        view(json!({})),
        "unsupported_media_type",
        None,
    );
    none.content_type = None;
    none.status = 415;
    c.push(none);
    let mut form = post(
        "form body",
        "contentId=a&contentType=resource",
        "unsupported_media_type",
        None,
    );
    form.content_type = Some("application/x-www-form-urlencoded");
    form.status = 415;
    c.push(form);
    let mut big = post(
        "body over 1 MiB",
        view(json!({"path": "x".repeat(1_100_000)})),
        "payload_too_large",
        None,
    );
    big.status = 413;
    c.push(big);
    // Batches.
    let batch =
        |name: &str, ct: &'static str, body: Vec<u8>, status: u16, code: &'static str| Case {
            name: name.to_owned(),
            method: "POST",
            path: "/api/views/batch".into(),
            content_type: Some(ct),
            auth: None,
            body,
            status,
            code,
            field: None,
        };
    let one = json!({"contentId": "a", "contentType": "resource"});
    c.push(batch(
        "batch an object",
        "application/json",
        one.to_string().into_bytes(),
        400,
        "invalid_type",
    ));
    c.push(batch(
        "batch empty array",
        "application/json",
        b"[]".to_vec(),
        400,
        "empty_batch",
    ));
    c.push(batch(
        "batch empty NDJSON",
        "application/x-ndjson",
        b"\n\n".to_vec(),
        400,
        "empty_batch",
    ));
    c.push(batch(
        "batch of 1001",
        "application/json",
        Value::Array(vec![one.clone(); 1001])
            .to_string()
            .into_bytes(),
        400,
        "too_many_events",
    ));
    c.push(batch(
        "batch not JSON",
        "application/json",
        b"[{".to_vec(),
        400,
        "invalid_json",
    ));
    c.push(batch(
        "batch text/html",
        "text/html",
        b"[]".to_vec(),
        415,
        "unsupported_media_type",
    ));
    c.push(batch(
        "batch over 10 MiB",
        "application/json",
        Value::Array(vec![
            json!({"contentId": "a", "contentType": "resource", "path": "p".repeat(2000)});
            6000
        ])
        .to_string()
        .into_bytes(),
        413,
        "payload_too_large",
    ));
    // Reads.
    c.extend([
        get(
            "GET without params",
            "/api/views",
            "missing_field",
            Some("contentType"),
        ),
        get(
            "GET without contentId",
            "/api/views?contentType=resource",
            "missing_field",
            Some("contentId"),
        ),
        get(
            "GET bad contentId",
            "/api/views?contentType=resource&contentId=a%20b",
            "invalid_value",
            Some("contentId"),
        ),
        get(
            "GET unknown namespace",
            "/api/views?contentType=video&contentId=a",
            "unknown_namespace",
            Some("contentType"),
        ),
        get(
            "GET bad percent-encoding",
            "/api/views?contentType=resource&contentId=%ff",
            "invalid_value",
            Some("query"),
        ),
        get(
            "daily days 0",
            "/api/views/daily?contentType=resource&contentId=a&days=0",
            "invalid_value",
            Some("days"),
        ),
        get(
            "daily days -5",
            "/api/views/daily?contentType=resource&contentId=a&days=-5",
            "invalid_value",
            Some("days"),
        ),
        get(
            "daily days 367",
            "/api/views/daily?contentType=resource&contentId=a&days=367",
            "invalid_value",
            Some("days"),
        ),
        get(
            "daily days huge",
            "/api/views/daily?contentType=resource&contentId=a&days=99999999999999999999",
            "invalid_value",
            Some("days"),
        ),
        get(
            "daily days text",
            "/api/views/daily?contentType=resource&contentId=a&days=ten",
            "invalid_value",
            Some("days"),
        ),
        get(
            "daily bad from",
            "/api/views/daily?contentType=resource&contentId=a&from=2026-02-30",
            "invalid_value",
            Some("from"),
        ),
        get(
            "daily from without zero padding",
            "/api/views/daily?contentType=resource&contentId=a&from=2026-3-01",
            "invalid_value",
            Some("from"),
        ),
        get(
            "daily from after to",
            "/api/views/daily?contentType=resource&contentId=a&from=2026-03-02&to=2026-03-01",
            "invalid_range",
            Some("from"),
        ),
        get(
            "daily 367-day range",
            "/api/views/daily?contentType=resource&contentId=a&from=2025-01-01&to=2026-01-02",
            "range_too_long",
            Some("to"),
        ),
        get(
            "daily days and from",
            "/api/views/daily?contentType=resource&contentId=a&days=3&from=2026-01-01",
            "conflicting_parameters",
            Some("days"),
        ),
        get(
            "daily missing contentId",
            "/api/views/daily?contentType=resource",
            "missing_field",
            Some("contentId"),
        ),
        get(
            "top missing contentType",
            "/api/views/top",
            "missing_field",
            Some("contentType"),
        ),
        get(
            "top unknown namespace",
            "/api/views/top?contentType=video",
            "unknown_namespace",
            Some("contentType"),
        ),
        get(
            "top limit 0",
            "/api/views/top?contentType=resource&limit=0",
            "invalid_value",
            Some("limit"),
        ),
        get(
            "top limit 101",
            "/api/views/top?contentType=resource&limit=101",
            "invalid_value",
            Some("limit"),
        ),
        get(
            "top limit -1",
            "/api/views/top?contentType=resource&limit=-1",
            "invalid_value",
            Some("limit"),
        ),
        get(
            "top bad to",
            "/api/views/top?contentType=resource&to=tomorrow",
            "invalid_value",
            Some("to"),
        ),
        get(
            "top with days",
            "/api/views/top?contentType=resource&days=7",
            "unknown_parameter",
            Some("days"),
        ),
    ]);
    // Admin.
    let admin = |name: &str,
                 method: &'static str,
                 path: &str,
                 auth: Option<String>,
                 status: u16,
                 code: &'static str| Case {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        content_type: None,
        auth,
        body: Vec::new(),
        status,
        code,
        field: None,
    };
    c.extend([
        admin(
            "flush without token",
            "POST",
            "/api/views/flush",
            None,
            401,
            "unauthorized",
        ),
        admin(
            "flush wrong token",
            "POST",
            "/api/views/flush",
            Some("Bearer wrong".into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush token prefix",
            "POST",
            "/api/views/flush",
            Some(format!("Bearer {}", &TOKEN[..4])),
            401,
            "unauthorized",
        ),
        admin(
            "flush token without Bearer",
            "POST",
            "/api/views/flush",
            Some(TOKEN.into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush basic auth",
            "POST",
            "/api/views/flush",
            Some("Basic dXNlcjpwYXNz".into()),
            401,
            "unauthorized",
        ),
        admin(
            "flush bad wait",
            "POST",
            "/api/views/flush?wait=maybe",
            Some(format!("Bearer {TOKEN}")),
            400,
            "invalid_value",
        ),
        admin(
            "job without token",
            "GET",
            "/api/jobs/0b8f8a52-7d1c-4d6e-9d64-8f5b1e2c3a4d",
            None,
            401,
            "unauthorized",
        ),
        admin(
            "job not a uuid",
            "GET",
            "/api/jobs/42",
            Some(format!("Bearer {TOKEN}")),
            400,
            "invalid_value",
        ),
        admin(
            "job unknown",
            "GET",
            "/api/jobs/0b8f8a52-7d1c-4d6e-9d64-8f5b1e2c3a4d",
            Some(format!("Bearer {TOKEN}")),
            404,
            "job_not_found",
        ),
    ]);
    // Routing.
    c.extend([
        admin("unknown route", "GET", "/api/nope", None, 404, "not_found"),
        admin("root", "GET", "/", None, 404, "not_found"),
        admin("unknown route", "GET", "/nope", None, 404, "not_found"),
        admin(
            "DELETE views",
            "DELETE",
            "/api/views",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "PUT views",
            "PUT",
            "/api/views",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "GET batch",
            "GET",
            "/api/views/batch",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "POST daily",
            "POST",
            "/api/views/daily",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "GET flush",
            "GET",
            "/api/views/flush",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "POST job",
            "POST",
            "/api/jobs/x",
            None,
            405,
            "method_not_allowed",
        ),
    ]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_documented_status_and_code() {
    let stack = Stack::start().await.expect("stack");
    let ingest = stack
        .spawn_ingest(&[("ADMIN_TOKEN", TOKEN)])
        .await
        .expect("ingest");
    let disabled = stack.spawn_ingest(&[]).await.expect("ingest without token");
    let http = Api::new(&ingest).await;
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut request = http
            .request(method, ingest.url(&case.path))
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(auth) = &case.auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let field = body["error"]["field"].as_str().map(str::to_owned);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        // The message names the field too, for a person reading it.
        let shape = body["success"] == json!(false)
            && body["error"]["message"].is_string()
            && case.field.is_none_or(|f| message.contains(f));
        if status != case.status
            || code != case.code
            || field.as_deref()
                != case
                    .field
                    .or(field.as_deref().filter(|_| case.field.is_none()))
            || !shape
        {
            failures.push(format!("{}: got {status} {code} {field:?} (retry-after {retry_after}), want {} {} {:?}; body {body}", case.name, case.status, case.code, case.field));
        }
    }
    // Admin endpoints refuse everyone while ADMIN_TOKEN is unset.
    let refused = http
        .post(disabled.url("/api/views/flush"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "admin_disabled");

    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still healthy and serving.
    let health = http
        .get(ingest.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let ok = http
        .post(ingest.url("/api/views"))
        .json(&json!({"contentId": "after", "contentType": "resource"}))
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status().as_u16(), 202);
    println!(
        "error model: {} malformed requests answered as documented; service healthy afterwards",
        cases.len() + 1
    );
}
