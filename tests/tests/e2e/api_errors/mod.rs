//! The error model, table-driven: malformed requests of every kind get their
//! documented status and `code` (naming the field where there is one), and the
//! service answers normally afterwards.

use chrono::Utc;
use serde_json::{json, Value};

use viewpipe_tests::openapi::Api;
use viewpipe_tests::Stack;

mod admin;
mod bodies;
mod reads;
mod views;

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
    let mut c = views::cases();
    c.extend(bodies::cases());
    c.extend(reads::cases());
    c.extend(admin::cases());
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
