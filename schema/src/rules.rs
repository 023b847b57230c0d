//! The rules a view's text fields must meet, stated once. The checks in
//! [`crate::event`] and [`crate::key`] take their limits from here, and the ingest's
//! OpenAPI document states the same rules as JSON Schema (`minLength`, `maxLength`,
//! `pattern`), so a client generated from the document and the service agree. The
//! ingest's tests hold every pattern to its check, character by character.

/// A text field's rule: a length in characters and the characters allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// The field's name as clients spell it.
    pub field: &'static str,
    pub min_chars: usize,
    pub max_chars: usize,
    /// The whole value as an ECMA-262 regular expression, the dialect of JSON
    /// Schema's `pattern`. Its repetition bounds repeat `min_chars..=max_chars`, so a
    /// generator that reads only the pattern keeps to the length too.
    pub pattern: &'static str,
    /// The rule in words, as refusals say it.
    pub message: &'static str,
}

/// `contentId`: part of the counter key.
pub const CONTENT_ID: TextRule = TextRule {
    field: "contentId",
    min_chars: 1,
    max_chars: 128,
    pattern: "^[A-Za-z0-9._~:-]{1,128}$",
    message: "must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ : -",
};

/// `contentType`: a namespace name. A deployment narrows it to the names of its
/// `NAMESPACES` setting unless that is `*`.
pub const CONTENT_TYPE: TextRule = TextRule {
    field: "contentType",
    min_chars: 1,
    max_chars: 32,
    pattern: "^[a-z][a-z0-9_-]{0,31}$",
    message: "must be a lowercase letter followed by up to 31 of a-z 0-9 _ -",
};

/// `path`: the page the view happened on, stored as the key's latest path. Control
/// characters (Unicode category Cc) are refused.
pub const PATH: TextRule = TextRule {
    field: "path",
    min_chars: 0,
    max_chars: 2048,
    pattern: "^[^\\x00-\\x1F\\x7F-\\x9F]{0,2048}$",
    message: "must be at most 2048 characters, none of them control characters",
};

/// `sessionId`: the client's session, printable ASCII.
pub const SESSION_ID: TextRule = TextRule {
    field: "sessionId",
    ..TOKEN
};

/// `eventId`: the client's idempotency key, printable ASCII.
pub const EVENT_ID: TextRule = TextRule {
    field: "eventId",
    ..TOKEN
};

const TOKEN: TextRule = TextRule {
    field: "",
    min_chars: 1,
    max_chars: 128,
    pattern: "^[\\x20-\\x7E]{1,128}$",
    message: "must be 1 to 128 printable ASCII characters",
};

/// `occurredAt` as the API takes it: RFC 3339 with `T` (or `t`) between date and
/// time. The pattern states the shape; the date and time must also exist (JSON
/// Schema's `date-time` format), as the service parses them.
pub const TIMESTAMP_PATTERN: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$";

/// A UTC day in a query (`from`, `to`): `YYYY-MM-DD`, a date that exists.
pub const DAY_PATTERN: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$";

/// How far in the future `occurredAt` may be, to allow for client clock skew.
pub const MAX_FUTURE_SKEW_MINUTES: i64 = 5;
