//! Single views: every field's rule, JSON that is not a view.

use super::*;

/// A view's fields, one wrong at a time.
pub(super) fn cases() -> Vec<Case> {
    let future = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    vec![
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
    ]
}
