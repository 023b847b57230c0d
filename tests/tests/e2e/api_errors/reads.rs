//! Reads: the count, daily and top parameters.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    let mut c = Vec::new();
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
    c
}
