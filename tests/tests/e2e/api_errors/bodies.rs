//! Bodies: content types and sizes, and batches.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    let mut c = Vec::new();
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
    c
}
