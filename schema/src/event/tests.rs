//! The event's validation, field by field, and its JSON forms.

use super::*;
use serde_json::json;

fn ns() -> Namespaces {
    Namespaces::List(vec!["resource".into(), "course".into()])
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

fn field_of(body: Value) -> (&'static str, &'static str) {
    let err = ViewInput::from_json(&body, &ns(), now()).expect_err("must be refused");
    (err.field, err.code)
}

#[test]
fn accepts_the_contract_example() {
    let body = json!({"contentId":"f538f5c5-1a72-4804-8eb1-3f05cea64874","contentType":"resource",
        "path":"/r/x","sessionId":"s1","eventId":"e1","occurredAt":"2026-11-21T10:00:00Z"});
    let input = ViewInput::from_json(&body, &ns(), now()).expect("valid");
    assert_eq!(
        input.key().as_str(),
        "resource:f538f5c5-1a72-4804-8eb1-3f05cea64874"
    );
    let event = input.into_event(now());
    assert_eq!(event.event_id.as_deref(), Some("e1"));
    assert_eq!(event.day().to_string(), "2026-11-21");
}

#[test]
fn fills_occurred_at_and_invents_no_event_id() {
    let body = json!({"contentId":"a","contentType":"course"});
    let event = ViewInput::from_json(&body, &ns(), now())
        .expect("valid")
        .into_event(now());
    assert_eq!(event.occurred_at, now());
    assert_eq!(event.event_id, None);
    let wire: Value = serde_json::from_slice(&event.to_json()).expect("json");
    assert!(wire.get("eventId").is_none(), "{wire}");
}

#[test]
fn the_visitor_id_is_kept_and_written_only_when_present() {
    let base =
        r#""v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z""#;
    let bad = ViewEvent::from_slice(format!(r#"{{{base},"visitorId":""}}"#).as_bytes(), &ns())
        .expect_err("empty id");
    assert!(bad.to_string().contains("visitorId"), "{bad}");
    let event = ViewEvent::from_slice(format!(r#"{{{base},"visitorId":"h1"}}"#).as_bytes(), &ns())
        .expect("valid");
    assert_eq!(event.visitor_id.as_deref(), Some("h1"));
    let wire: Value = serde_json::from_slice(&event.to_json()).expect("json");
    assert_eq!(wire["visitorId"], "h1");
    let plain = ViewEvent::from_slice(format!("{{{base}}}").as_bytes(), &ns()).expect("valid");
    let wire: Value = serde_json::from_slice(&plain.to_json()).expect("json");
    assert!(wire.get("visitorId").is_none(), "{wire}");
}

#[test]
fn names_the_bad_field() {
    assert_eq!(
        field_of(json!({"contentType":"resource"})),
        ("contentId", "missing_field")
    );
    assert_eq!(
        field_of(json!({"contentId":"a"})),
        ("contentType", "missing_field")
    );
    assert_eq!(
        field_of(json!({"contentId":5,"contentType":"resource"})),
        ("contentId", "invalid_type")
    );
    assert_eq!(
        field_of(json!({"contentId":"a","contentType":"video"})),
        ("contentType", "unknown_namespace")
    );
    assert_eq!(
        field_of(json!({"contentId":"x".repeat(129),"contentType":"resource"})),
        ("contentId", "invalid_value")
    );
    assert_eq!(
        field_of(json!({"contentId":"a","contentType":"resource","path":"p".repeat(2049)})),
        ("path", "too_long")
    );
    assert_eq!(
        field_of(json!({"contentId":"a","contentType":"resource","sessionId":"\u{7}"})),
        ("sessionId", "invalid_value")
    );
    assert_eq!(
        field_of(json!({"contentId":"a","contentType":"resource","eventId":""})),
        ("eventId", "invalid_value")
    );
    assert_eq!(
        field_of(json!({"contentId":"a","contentType":"resource","occurredAt":"yesterday"})),
        ("occurredAt", "invalid_value")
    );
    assert_eq!(
        field_of(
            json!({"contentId":"a","contentType":"resource","occurredAt":"2026-11-21T10:05:01Z"})
        ),
        ("occurredAt", "in_future")
    );
    assert_eq!(field_of(json!([1])), ("body", "invalid_type"));
}

#[test]
fn content_id_refusals_state_the_rule_or_the_length() {
    assert_eq!(check_content_id(Some("a.b_c~d:e-f")), Ok("a.b_c~d:e-f"));
    let missing = check_content_id(None).expect_err("missing");
    assert_eq!(
        (missing.code, missing.message.as_str()),
        ("missing_field", "is required")
    );
    let bad = check_content_id(Some("a b")).expect_err("bad");
    assert_eq!(
        (bad.field, bad.code, bad.message.as_str()),
        ("contentId", "invalid_value", CONTENT_ID_RULE)
    );
    let long = "x".repeat(129);
    let long = check_content_id(Some(&long)).expect_err("long");
    assert_eq!(
        (long.code, long.message.as_str()),
        (
            "invalid_value",
            "is 129 bytes long; at most 128 are allowed"
        )
    );
}

#[test]
fn five_minutes_of_skew_is_allowed() {
    let body =
        json!({"contentId":"a","contentType":"resource","occurredAt":"2026-11-21T10:05:00Z"});
    assert!(ViewInput::from_json(&body, &ns(), now()).is_ok());
}

#[test]
fn wire_round_trip() {
    let event = ViewInput::from_json(
        &json!({"contentId":"a","contentType":"resource"}),
        &ns(),
        now(),
    )
    .expect("valid")
    .into_event(now());
    let bytes = event.to_json();
    let text = String::from_utf8(bytes.clone()).expect("utf8");
    assert!(
        text.contains(r#""occurredAt":"2026-11-21T10:00:00Z""#),
        "{text}"
    );
    assert!(
        text.contains(r#""receivedAt":"2026-11-21T10:00:00.000Z""#),
        "{text}"
    );
    assert_eq!(ViewEvent::from_slice(&bytes, &ns()).expect("parses"), event);
}

#[test]
fn wire_refusals() {
    let n = ns();
    assert_eq!(
        ViewEvent::from_slice(b"{not json", &n)
            .expect_err("bad")
            .code(),
        "invalid_json"
    );
    assert_eq!(
        ViewEvent::from_slice(b"[]", &n).expect_err("bad").code(),
        "invalid_type"
    );
    let v2 =
        br#"{"v":2,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
    assert_eq!(
        ViewEvent::from_slice(v2, &n).expect_err("bad").code(),
        "unsupported_version"
    );
    let no_at = br#"{"v":1,"contentType":"resource","contentId":"a"}"#;
    assert_eq!(
        ViewEvent::from_slice(no_at, &n).expect_err("bad").code(),
        "missing_field"
    );
    let ok =
        br#"{"v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
    assert!(ViewEvent::from_slice(ok, &n)
        .expect("ok")
        .event_id
        .is_none());
}
