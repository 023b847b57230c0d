//! The view event: the API's object form ([`ViewInput`]) and the Kafka JSON v1 form
//! ([`ViewEvent`]), with the contract's validation.
//!
//! Validation works on a parsed `serde_json::Value` rather than a derived struct so
//! that every refusal names the field and says what was wrong with it.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::key::{is_valid_content_id, ContentKey, Namespaces, MAX_CONTENT_ID_LEN};
use crate::rules;

/// The event JSON version this build writes and reads.
pub const EVENT_VERSION: u64 = 1;
pub const MAX_PATH_CHARS: usize = rules::PATH.max_chars;
pub const MAX_TOKEN_LEN: usize = rules::EVENT_ID.max_chars;
/// How far in the future `occurredAt` may be, to allow for client clock skew.
pub const MAX_FUTURE_SKEW: chrono::Duration =
    chrono::Duration::minutes(rules::MAX_FUTURE_SKEW_MINUTES);
/// What a valid `contentId` is, as [`check_content_id`] refuses one.
pub const CONTENT_ID_RULE: &str = rules::CONTENT_ID.message;

/// Why one field of an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's name as the client spelled it, e.g. `contentId`.
    pub field: &'static str,
    /// A stable snake_case code for programs.
    pub code: &'static str,
    /// A sentence for a person.
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            code,
            message: message.into(),
        }
    }
}

/// Why a Kafka message could not be used as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("unsupported event version {0} (this build reads version {EVENT_VERSION})")]
    Version(String),
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl EventError {
    /// A short stable code, used for the DLQ `error` header prefix and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::NotJson(_) => "invalid_json",
            EventError::NotObject => "invalid_type",
            EventError::Version(_) => "unsupported_version",
            EventError::Field(f) => f.code,
        }
    }
}

/// A view as a client posts it: only `contentId` and `contentType` are required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewInput {
    pub content_type: String,
    pub content_id: String,
    pub path: Option<String>,
    pub session_id: Option<String>,
    pub event_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
}

impl ViewInput {
    /// Validates the API object form. `now` bounds `occurredAt`.
    pub fn from_json(
        value: &Value,
        namespaces: &Namespaces,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        let obj = value.as_object().ok_or_else(|| {
            FieldError::new(
                "body",
                "invalid_type",
                "expected a JSON object describing one view",
            )
        })?;
        let fields = Fields(obj);
        let content_type = fields.content_type(namespaces)?;
        let content_id = fields.content_id()?;
        let path = fields.path()?;
        let session_id = fields.token("sessionId")?;
        let event_id = fields.token("eventId")?;
        let occurred_at = check_strict_timestamp("occurredAt", fields.string("occurredAt")?)?;
        if let Some(at) = occurred_at {
            if at > now + MAX_FUTURE_SKEW {
                return Err(FieldError::new(
                    "occurredAt",
                    "in_future",
                    format!(
                        "must not be more than {} minutes in the future",
                        rules::MAX_FUTURE_SKEW_MINUTES
                    ),
                ));
            }
        }
        Ok(Self {
            content_type,
            content_id,
            path,
            session_id,
            event_id,
            occurred_at,
        })
    }

    /// Turns the input into the event the ingest publishes, filling `occurredAt`
    /// when the client left it out. An `eventId` is kept only when the client chose
    /// one: an id nobody can send again protects nothing and would cost memory per
    /// event wherever ids are remembered.
    pub fn into_event(self, received_at: DateTime<Utc>) -> ViewEvent {
        ViewEvent {
            v: EVENT_VERSION,
            event_id: self.event_id,
            occurred_at: self.occurred_at.unwrap_or(received_at),
            content_type: self.content_type,
            content_id: self.content_id,
            path: self.path,
            session_id: self.session_id,
            visitor_id: None,
            received_at: Some(received_at),
        }
    }

    pub fn key(&self) -> ContentKey {
        ContentKey::new(&self.content_type, &self.content_id)
    }
}

/// The event as it travels through Kafka (JSON version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewEvent {
    pub v: u64,
    /// The client's idempotency key, if it chose one (omitted otherwise; messages of
    /// older ingests carry one the ingest made up, which still parse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub content_type: String,
    pub content_id: String,
    pub path: Option<String>,
    pub session_id: Option<String>,
    /// A cookieless visitor id the ingest derived (a daily-rotating salted hash), for
    /// unique visitors when the client sent no `sessionId`. Omitted when absent;
    /// older aggregators ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub occurred_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub received_at: Option<DateTime<Utc>>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn rfc3339_opt<S: serde::Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        None => s.serialize_none(),
    }
}

impl ViewEvent {
    /// Parses and validates a message value read from Kafka.
    pub fn from_slice(bytes: &[u8], namespaces: &Namespaces) -> Result<Self, EventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EventError::NotJson(e.to_string()))?;
        let fields = Fields(event_object(&value)?);
        Ok(Self {
            v: EVENT_VERSION,
            event_id: fields.token("eventId")?,
            content_type: fields.content_type(namespaces)?,
            content_id: fields.content_id()?,
            path: fields.path()?,
            session_id: fields.token("sessionId")?,
            visitor_id: fields.token("visitorId")?,
            occurred_at: fields.timestamp("occurredAt")?.ok_or_else(|| {
                FieldError::new("occurredAt", "missing_field", "is required in event JSON")
            })?,
            received_at: fields.timestamp("receivedAt")?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and timestamps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn key(&self) -> ContentKey {
        ContentKey::new(&self.content_type, &self.content_id)
    }

    /// The UTC day the view counts towards.
    pub fn day(&self) -> NaiveDate {
        self.occurred_at.date_naive()
    }
}

/// The object of an event JSON value of this build's version.
pub(crate) fn event_object(value: &Value) -> Result<&Map<String, Value>, EventError> {
    let obj = value.as_object().ok_or(EventError::NotObject)?;
    match obj.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(EVENT_VERSION) => Ok(obj),
        Some(other) => Err(EventError::Version(other.to_string())),
        None => Err(EventError::Version("(missing)".to_owned())),
    }
}

/// Field-by-field readers over a JSON object; `null` counts as absent. The checks
/// themselves are the `check_*` functions.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &'static str) -> Result<Option<&str>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(FieldError::new(
                name,
                "invalid_type",
                format!("must be a string, not {}", json_kind(other)),
            )),
        }
    }

    fn content_type(&self, namespaces: &Namespaces) -> Result<String, FieldError> {
        check_content_type(self.string("contentType")?, namespaces).map(str::to_owned)
    }

    fn content_id(&self) -> Result<String, FieldError> {
        check_content_id(self.string("contentId")?).map(str::to_owned)
    }

    fn path(&self) -> Result<Option<String>, FieldError> {
        Ok(check_path(self.string("path")?)?.map(str::to_owned))
    }

    fn token(&self, name: &'static str) -> Result<Option<String>, FieldError> {
        Ok(check_token(name, self.string(name)?)?.map(str::to_owned))
    }

    fn timestamp(&self, name: &'static str) -> Result<Option<DateTime<Utc>>, FieldError> {
        check_timestamp(name, self.string(name)?)
    }
}

fn required<'s>(name: &'static str, value: Option<&'s str>) -> Result<&'s str, FieldError> {
    value.ok_or_else(|| FieldError::new(name, "missing_field", "is required"))
}

/// `contentType`: required, and allowed by `NAMESPACES`.
pub fn check_content_type<'s>(
    value: Option<&'s str>,
    namespaces: &Namespaces,
) -> Result<&'s str, FieldError> {
    let ns = required("contentType", value)?;
    if !namespaces.allows(ns) {
        return Err(FieldError::new(
            "contentType",
            "unknown_namespace",
            format!(
                "{:?} is not an allowed content type (allowed: {})",
                truncate(ns),
                namespaces.describe()
            ),
        ));
    }
    Ok(ns)
}

/// `contentId`: required, 1..=128 characters of `[A-Za-z0-9._~:-]`
/// ([`is_valid_content_id`]). An invalid id is refused as `invalid_value` with
/// [`CONTENT_ID_RULE`], or with its length when it is too long.
pub fn check_content_id(value: Option<&str>) -> Result<&str, FieldError> {
    let id = required("contentId", value)?;
    if !is_valid_content_id(id) {
        let message = if id.len() > MAX_CONTENT_ID_LEN {
            format!("is {} bytes long; at most 128 are allowed", id.len())
        } else {
            CONTENT_ID_RULE.to_owned()
        };
        return Err(FieldError::new("contentId", "invalid_value", message));
    }
    Ok(id)
}

/// `path`: at most 2048 characters, no control characters ([`rules::PATH`]).
fn check_path(value: Option<&str>) -> Result<Option<&str>, FieldError> {
    let Some(path) = value else {
        return Ok(None);
    };
    if path.chars().count() > MAX_PATH_CHARS {
        return Err(FieldError::new(
            "path",
            "too_long",
            format!("must be at most {MAX_PATH_CHARS} characters"),
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(FieldError::new(
            "path",
            "invalid_value",
            "must not contain control characters",
        ));
    }
    Ok(Some(path))
}

/// `sessionId` and `eventId`: 1..=128 printable ASCII characters
/// ([`rules::SESSION_ID`], [`rules::EVENT_ID`]).
fn check_token<'s>(
    name: &'static str,
    value: Option<&'s str>,
) -> Result<Option<&'s str>, FieldError> {
    let Some(token) = value else {
        return Ok(None);
    };
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(FieldError::new(
            name,
            "invalid_value",
            format!("must be 1 to {MAX_TOKEN_LEN} characters long"),
        ));
    }
    if !token.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(FieldError::new(
            name,
            "invalid_value",
            "must be printable ASCII characters only",
        ));
    }
    Ok(Some(token))
}

/// An RFC 3339 timestamp.
fn check_timestamp(
    name: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    let Some(text) = value else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(text)
        .map(|at| Some(at.with_timezone(&Utc)))
        .map_err(|_| timestamp_error(name))
}

/// An RFC 3339 timestamp with `T` between date and time, as JSON Schema's
/// `date-time` format has it: what the API accepts. Events read from Kafka may also
/// use a space there, as RFC 3339 permits and some producers write.
fn check_strict_timestamp(
    name: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    if value.is_some_and(|v| !matches!(v.as_bytes().get(10), Some(b'T' | b't'))) {
        return Err(timestamp_error(name));
    }
    check_timestamp(name, value)
}

fn timestamp_error(name: &'static str) -> FieldError {
    FieldError::new(
        name,
        "invalid_value",
        "must be an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
    )
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps echoed client input short in error messages.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
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
        let event =
            ViewEvent::from_slice(format!(r#"{{{base},"visitorId":"h1"}}"#).as_bytes(), &ns())
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
        let v2 = br#"{"v":2,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
        assert_eq!(
            ViewEvent::from_slice(v2, &n).expect_err("bad").code(),
            "unsupported_version"
        );
        let no_at = br#"{"v":1,"contentType":"resource","contentId":"a"}"#;
        assert_eq!(
            ViewEvent::from_slice(no_at, &n).expect_err("bad").code(),
            "missing_field"
        );
        let ok = br#"{"v":1,"contentType":"resource","contentId":"a","occurredAt":"2026-11-21T10:00:00Z"}"#;
        assert!(ViewEvent::from_slice(ok, &n)
            .expect("ok")
            .event_id
            .is_none());
    }
}
