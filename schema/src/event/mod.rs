//! The view event: the API's object form ([`ViewInput`]) and the Kafka JSON v1 form
//! ([`ViewEvent`]), with the contract's validation.
//!
//! Validation works on a parsed `serde_json::Value` rather than a derived struct so
//! that every refusal names the field and says what was wrong with it.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::key::{ContentKey, Namespaces};
use crate::rules;

mod checks;
#[cfg(test)]
mod tests;

pub use checks::{check_content_id, check_content_type};
use checks::{check_path, check_strict_timestamp, check_timestamp, check_token, json_kind};

/// The event JSON version this build writes and reads.
pub(crate) const EVENT_VERSION: u64 = 1;
pub(crate) const MAX_PATH_CHARS: usize = rules::PATH.max_chars;
pub(crate) const MAX_TOKEN_LEN: usize = rules::EVENT_ID.max_chars;
/// How far in the future `occurredAt` may be, to allow for client clock skew.
pub(crate) const MAX_FUTURE_SKEW: chrono::Duration =
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
