//! What the aggregator reads of an event: the values the ingest accepted, and what it refuses or makes countable.

use super::*;
use crate::{Namespaces, View};

const BASE: &str =
    r#""v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z""#;

fn with(extra: &str) -> String {
    format!("{{{BASE}{extra}}}")
}

#[test]
fn counts_every_event_the_ingest_accepts_with_the_same_values() {
    let ns: Namespaces = "resource".parse().expect("namespaces");
    let cases = [
        with(""),
        r#"{"v":1,"eventId":"e\"1","contentType":"resource","contentId":"a","path":"/r/\u00e9","sessionId":null,"occurredAt":"2026-11-21T23:59:59+02:00","receivedAt":"2026-11-21T10:00:00.123Z","extra":[1]}"#.to_owned(),
        with(r#","visitorId":"h1","sessionId":"s1","path":"/x"}"#).replace("}}", "}"),
    ];
    for case in &cases {
        let owned = View::from_event(case.as_bytes(), &ns).expect("the ingest's rules");
        let counted = EventRef::parse(case.as_bytes()).expect("counted");
        assert_eq!(
            (
                &*owned.content_type,
                &*owned.content_id,
                owned.path.as_deref(),
                owned.event_id.as_deref(),
                owned.session_id.or(owned.visitor_id).as_deref(),
                owned.occurred_at.expect("required in the Kafka form")
            ),
            (
                &*counted.content_type,
                &*counted.content_id,
                counted.path.as_deref(),
                counted.event_id.as_deref(),
                counted.visitor.as_deref(),
                counted.occurred_at
            ),
            "{case}"
        );
    }
    let plain = EventRef::parse(cases[0].as_bytes()).expect("valid");
    assert!(
        matches!(plain.content_id, Cow::Borrowed(_)),
        "no copy for plain strings"
    );
}

#[test]
fn edge_rules_of_other_releases_and_settings_still_count() {
    // Each case through the borrowing reader, kept as owned values.
    fn parse(json: &str) -> EventRef<'static> {
        let e = EventRef::parse(json.as_bytes()).expect(json);
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        EventRef {
            content_type: own(e.content_type),
            content_id: own(e.content_id),
            path: e.path.map(own),
            event_id: e.event_id.map(own),
            visitor: e.visitor.map(own),
            occurred_at: e.occurred_at,
        }
    }
    // Any namespace of the key's form, longer ids than the ingest takes.
    let video = parse(&with("").replace("resource", "video"));
    assert_eq!(video.content_type, "video");
    let long_id = "x".repeat(MAX_COUNTED_ID_LEN);
    let long = parse(&with("").replace(r#""a""#, &format!("\"{long_id}\"")));
    assert_eq!(long.content_id.len(), MAX_COUNTED_ID_LEN);
    // A path that is too long is cut, one Postgres cannot store is dropped, one
    // of another type ignored.
    let path = "p".repeat(MAX_PATH_CHARS + 10);
    let cut = parse(&with(&format!(r#","path":"{path}""#)));
    assert_eq!(cut.path.map(|p| p.chars().count()), Some(MAX_PATH_CHARS));
    assert_eq!(parse(&with(r#","path":"/a\u0000b""#)).path, None);
    assert_eq!(parse(&with(r#","path":5"#)).path, None);
    // Visitor ids the ingest would refuse are ignored or kept, never refused.
    assert_eq!(parse(&with(r#","visitorId":"""#)).visitor, None);
    assert_eq!(parse(&with(r#","visitorId":7"#)).visitor, None);
    let odd = parse(&with(r#","visitorId":"\u0007h""#));
    assert_eq!(odd.visitor.as_deref(), Some("\u{7}h"));
    // eventIds: the ingest's kind is kept as it is; others by digest, so they
    // still de-duplicate.
    assert_eq!(
        parse(&with(r#","eventId":"e1""#)).event_id.as_deref(),
        Some("e1")
    );
    assert_eq!(parse(&with(r#","eventId":"""#)).event_id, None);
    let long_id = format!(r#","eventId":"{}""#, "e".repeat(300));
    let digest = parse(&with(&long_id)).event_id.expect("an id");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(parse(&with(&long_id)).event_id, Some(digest));
    assert_eq!(
        parse(&with(r#","eventId":42"#)).event_id.as_deref(),
        Some("42")
    );
    // A space for the `T`, as some producers write.
    let spaced = with("").replace("2026-11-21T10", "2026-11-21 10");
    assert_eq!(parse(&spaced).day().to_string(), "2026-11-21");
}

#[test]
fn only_what_cannot_be_counted_is_refused() {
    let code = |json: &str| {
        EventRef::parse(json.as_bytes())
            .map(|_| "counted")
            .unwrap_or_else(|e| e.code())
    };
    assert_eq!(code("not json"), "invalid_json");
    assert_eq!(code("[1]"), "invalid_type");
    assert_eq!(
        code(&with("").replace(r#""v":1"#, r#""v":2"#)),
        "unsupported_version"
    );
    assert_eq!(
        code(&with("").replace(r#""v":1,"#, "")),
        "unsupported_version"
    );
    assert_eq!(
        code(r#"{"v":1,"contentType":"resource","contentId":"a"}"#),
        "missing_field"
    );
    assert_eq!(
        code(&with("").replace("2026-11-21T10:00:00Z", "yesterday")),
        "invalid_value"
    );
    assert_eq!(
        code(&with("").replace(r#""a""#, r#""a b""#)),
        "invalid_value"
    );
    assert_eq!(code(&with("").replace(r#""a""#, "5")), "invalid_type");
    assert_eq!(
        code(&with("").replace("resource", "Re:source")),
        "invalid_value"
    );
    let too_long = "x".repeat(MAX_COUNTED_ID_LEN + 1);
    assert_eq!(
        code(&with("").replace(r#""a""#, &format!("\"{too_long}\""))),
        "invalid_value"
    );
    assert_eq!(code(&with("")), "counted");
}

#[test]
fn the_borrowing_reader_agrees_with_the_value_reader() {
    let cases = [
        with(""),
        with(r#","contentId":"b""#),
        with(r#","path":"/\u00e9","sessionId":"","visitorId":"v""#),
        with(r#","eventId":"\u0001x","path":"""#),
        with("").replace(r#""v":1"#, r#""v":1.0"#),
        with(r#","occurredAt":"2026-11-21 10:00:00+01:00""#),
    ];
    for case in &cases {
        let fast = EventRef::parse(case.as_bytes()).map_err(|e| e.to_string());
        let slow = EventRef::parse_value(case.as_bytes()).map_err(|e| e.to_string());
        assert_eq!(fast, slow, "{case}");
    }
}
