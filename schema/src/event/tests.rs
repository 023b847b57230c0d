//! The event's validation, field by field, and its JSON forms.

use super::*;
use std::borrow::Cow;

use serde_json::json;

fn ns() -> Namespaces {
    Namespaces::List(vec!["resource".into(), "course".into()])
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// Reads `body` as the API does.
fn api(body: &Value) -> Result<View<'static>, FieldError> {
    let json = serde_json::to_vec(body).expect("json");
    View::from_api(&json, &ns(), now()).map(View::into_owned)
}

fn field_of(body: Value) -> (&'static str, &'static str) {
    let err = api(&body).expect_err("must be refused");
    (err.field, err.code)
}

#[test]
fn accepts_the_contract_example() {
    let body = json!({"contentId":"f538f5c5-1a72-4804-8eb1-3f05cea64874","contentType":"resource",
        "path":"/r/x","sessionId":"s1","eventId":"e1","occurredAt":"2026-11-21T10:00:00Z"});
    let input = api(&body).expect("valid");
    assert_eq!(
        input.key().as_str(),
        "resource:f538f5c5-1a72-4804-8eb1-3f05cea64874"
    );
    let event = input.received(now());
    assert_eq!(event.event_id.as_deref(), Some("e1"));
    assert_eq!(event.day().expect("a day").to_string(), "2026-11-21");
}

#[test]
fn fills_occurred_at_and_invents_no_event_id() {
    let body = json!({"contentId":"a","contentType":"course"});
    let event = api(&body).expect("valid").received(now());
    assert_eq!(event.occurred_at, Some(now()));
    assert_eq!(event.event_id, None);
    let wire: Value = serde_json::from_slice(&event.to_json()).expect("json");
    assert!(wire.get("eventId").is_none(), "{wire}");
}

#[test]
fn the_visitor_id_is_kept_and_written_only_when_present() {
    let base =
        r#""v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z""#;
    let bad = View::from_event(format!(r#"{{{base},"visitorId":""}}"#).as_bytes(), &ns())
        .expect_err("empty id");
    assert!(bad.to_string().contains("visitorId"), "{bad}");
    let with_id = format!(r#"{{{base},"visitorId":"h1"}}"#);
    let event = View::from_event(with_id.as_bytes(), &ns()).expect("valid");
    assert_eq!(event.visitor_id.as_deref(), Some("h1"));
    let wire: Value = serde_json::from_slice(&event.to_json()).expect("json");
    assert_eq!(wire["visitorId"], "h1");
    let without = format!("{{{base}}}");
    let plain = View::from_event(without.as_bytes(), &ns()).expect("valid");
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
    assert!(api(&body).is_ok());
}

#[test]
fn wire_round_trip() {
    let event = api(&json!({"contentId":"a","contentType":"resource"}))
        .expect("valid")
        .received(now());
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
    assert_eq!(View::from_event(&bytes, &ns()).expect("parses"), event);
}

#[test]
fn wire_refusals() {
    let n = ns();
    assert_eq!(
        View::from_event(b"{not json", &n).expect_err("bad").code(),
        "invalid_json"
    );
    assert_eq!(
        View::from_event(b"[]", &n).expect_err("bad").code(),
        "invalid_type"
    );
    let v2 =
        br#"{"v":2,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
    assert_eq!(
        View::from_event(v2, &n).expect_err("bad").code(),
        "unsupported_version"
    );
    let no_at = br#"{"v":1,"contentType":"resource","contentId":"a"}"#;
    assert_eq!(
        View::from_event(no_at, &n).expect_err("bad").code(),
        "missing_field"
    );
    let ok =
        br#"{"v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
    assert!(View::from_event(ok, &n).expect("ok").event_id.is_none());
}

#[test]
fn a_view_borrows_its_text_unless_it_has_escapes() {
    let plain = br#"{"contentType":"resource","contentId":"a","path":"/x"}"#;
    let view = View::from_api(plain, &ns(), now()).expect("valid");
    assert!(matches!(view.content_id, Cow::Borrowed("a")));
    assert!(matches!(view.path, Some(Cow::Borrowed("/x"))));
    let escaped = br#"{"contentType":"resource","contentId":"a","path":"/\u00e9"}"#;
    let view = View::from_api(escaped, &ns(), now()).expect("valid");
    assert_eq!(view.path.as_deref(), Some("/é"));
}

#[test]
fn the_api_keeps_a_repeated_fields_last_value_and_ignores_the_ingests_fields() {
    let body = br#"{"contentType":"resource","contentId":5,"contentId":"b","visitorId":"forged",
        "receivedAt":"2020-01-01T00:00:00Z","v":9,"extra":{"x":[1]}}"#;
    let view = View::from_api(body, &ns(), now()).expect("valid");
    assert_eq!(view.key().as_str(), "resource:b");
    assert_eq!((view.visitor_id, view.received_at), (None, None));
    let kinds = [
        (
            json!({"contentType":"resource","contentId":{}}),
            "an object",
        ),
        (json!({"contentType":"resource","contentId":[]}), "an array"),
        (
            json!({"contentType":"resource","contentId":true}),
            "a boolean",
        ),
        (
            json!({"contentType":"resource","contentId":-1.5}),
            "a number",
        ),
    ];
    for (body, kind) in kinds {
        let err = api(&body).expect_err("not a string");
        assert_eq!(err.message, format!("must be a string, not {kind}"));
    }
    let query = View::from_query(
        |name| {
            (name == "contentType")
                .then_some("resource")
                .or((name == "contentId").then_some("q"))
        },
        &ns(),
        now(),
    )
    .expect("valid");
    assert_eq!(query.key().as_str(), "resource:q");
}

/// The Kafka forms earlier releases and direct producers wrote: each is read, and
/// what this build writes of it reads back the same, here and in the aggregator.
#[test]
fn reads_every_form_already_in_a_log_and_writes_what_it_read() {
    let forms = [
        // The first releases: an eventId the ingest made up for every view.
        r#"{"v":1,"eventId":"7b0e1f9c-8d2a-4c55-9a51-3b5f2f0f1a20","contentType":"resource","contentId":"a","path":null,"sessionId":null,"occurredAt":"2026-11-20T10:00:00.123Z","receivedAt":"2026-11-20T10:00:00.123Z"}"#,
        // Client ids only: no eventId unless the client chose one.
        r#"{"v":1,"contentType":"resource","contentId":"a","path":"/x","sessionId":"s","occurredAt":"2026-11-20T10:00:00Z","receivedAt":"2026-11-20T10:00:00.000Z"}"#,
        // Unique visitors: a visitorId the ingest derived.
        r#"{"v":1,"contentType":"resource","contentId":"a","path":null,"sessionId":null,"visitorId":"0123456789abcdef0123456789abcdef","occurredAt":"2026-11-20T10:00:00Z","receivedAt":"2026-11-20T10:00:00.000Z"}"#,
        // A direct producer: the least it may send, a space in the timestamp.
        r#"{"v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-20 10:00:00+02:00"}"#,
    ];
    for form in forms {
        let view = View::from_event(form.as_bytes(), &ns()).expect(form);
        let again = view.to_json();
        let reread = View::from_event(&again, &ns()).expect("rewritten");
        assert_eq!(reread, view, "{form}");
        let counted = crate::EventRef::parse(&again).expect("counted");
        assert_eq!(Some(counted.occurred_at), view.occurred_at, "{form}");
        assert_eq!(&*counted.content_id, "a");
    }
}

#[test]
fn check_json_takes_exactly_what_a_value_would() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let cases: [&[u8]; 8] = [
        br#"{"a":[1,2.5,"x\u00e9",null,true,{"b":{}}]}"#,
        b"\"\xff\"",
        deep.as_bytes(),
        fine.as_bytes(),
        br#"{"a":1"#,
        b"[1] x",
        b"1e400",
        b" {} ",
    ];
    for case in cases {
        assert_eq!(
            check_json(case).is_ok(),
            serde_json::from_slice::<Value>(case).is_ok(),
            "{:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert!(check_json(b"\"\xff\"").is_err() && check_json(deep.as_bytes()).is_err());
}

#[test]
fn an_unsupported_version_is_quoted_as_json_writes_it() {
    let quoted = |v: &str| {
        let event = format!(r#"{{"v":{v},"contentType":"resource","contentId":"a"}}"#);
        match View::from_event(event.as_bytes(), &ns()) {
            Err(EventError::Version(said)) => said,
            other => panic!("{v}: {other:?}"),
        }
    };
    assert_eq!(quoted("null"), "null");
    assert_eq!(quoted("1.0"), "1.0");
    assert_eq!(quoted("1.50"), "1.5");
    assert_eq!(quoted(r#""1""#), r#""1""#);
    assert_eq!(quoted("2"), "2");
    let missing = View::from_event(br#"{"contentType":"resource"}"#, &ns());
    assert!(matches!(missing, Err(EventError::Version(m)) if m == "(missing)"));
}

#[test]
fn a_history_line_is_read_in_the_form_it_has() {
    let line = |json: &'static str| View::from_history(json.as_bytes(), &ns(), now());
    let api = line(r#"{"contentType":"resource","contentId":"a"}"#).expect("the API form");
    assert_eq!(api.occurred_at, None);
    let kafka = line(r#"{"v":1,"contentType":"resource","contentId":"a"}"#);
    assert_eq!(kafka.expect_err("no occurredAt").code(), "missing_field");
    let null = line(r#"{"v":null,"contentType":"resource","contentId":"a"}"#);
    assert_eq!(null.expect_err("v null").code(), "unsupported_version");
    let future =
        line(r#"{"contentType":"resource","contentId":"a","occurredAt":"2026-11-22T10:00:00Z"}"#);
    assert_eq!(future.expect_err("in the future").code(), "in_future");
}
