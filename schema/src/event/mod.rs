//! The view: one type, [`View`], that is the API's request body, its schema in the
//! OpenAPI document (`ViewRequest`) and, with what the ingest adds when it admits a
//! view, the Kafka value (event JSON version 1).
//!
//! A view is read field by field ([`object`]), borrowing its strings from the input
//! where the JSON has no escapes, so that every refusal names the field and says
//! what was wrong with it. What the aggregator counts of a Kafka value, under rules
//! of its own, is [`crate::counted`].

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::ser::SerializeStruct;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::key::{ContentKey, Namespaces};
use crate::rules;

mod checks;
mod object;
#[cfg(test)]
mod tests;

pub use checks::{check_content_id, check_content_type};
use checks::{check_path, check_strict_timestamp, check_timestamp, check_token};
pub use object::check_json;
use object::Object;

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

/// One view. Only `contentType` and `contentId` are required on the API; the ingest
/// fills `occurredAt` (when the client left it out), `receivedAt` and, for a browser's
/// view without a `sessionId`, `visitorId` before it publishes the view.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(
    as = ViewRequest,
    description = "One view, as a client posts it. Only `contentId` and `contentType` are required;\n\
                   `null` is the same as leaving a field out. Fields the API does not know are\n\
                   ignored. The body may be at most 1 MiB."
)]
pub struct View<'a> {
    /// The content's id.
    #[schema(value_type = String, example = "f538f5c5-1a72-4804-8eb1-3f05cea64874")]
    pub content_id: Cow<'a, str>,
    /// The content's namespace.
    #[schema(value_type = String, example = "resource")]
    pub content_type: Cow<'a, str>,
    /// The page the view happened on; the key keeps the latest.
    #[schema(value_type = Option<String>)]
    pub path: Option<Cow<'a, str>>,
    /// The client's session.
    #[schema(value_type = Option<String>)]
    pub session_id: Option<Cow<'a, str>>,
    /// Views of a key with the same id count once within 24 h (retry a lost answer
    /// with the same id). Absent: the view is counted once as sent, with no repeat
    /// detection.
    #[schema(value_type = Option<String>)]
    pub event_id: Option<Cow<'a, str>>,
    /// When the view happened.
    pub occurred_at: Option<DateTime<Utc>>,
    /// A cookieless visitor id the ingest derived (a daily-rotating salted hash), for
    /// unique visitors when the client sent no `sessionId`. Not taken from the API.
    #[schema(ignore)]
    pub visitor_id: Option<Cow<'a, str>>,
    /// When the ingest received the view. Not taken from the API.
    #[schema(ignore)]
    pub received_at: Option<DateTime<Utc>>,
}

impl<'a> View<'a> {
    /// Reads and checks a view as the API takes it, a JSON object. `json` should
    /// have passed [`check_json`] first, as every body the ingest reads has: other
    /// bytes are refused, but not always as `invalid_json`. `now` bounds
    /// `occurredAt`. `visitorId` and `receivedAt` are the ingest's and are ignored.
    pub fn from_api(
        json: &'a [u8],
        namespaces: &Namespaces,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        let object = Object::parse(json).map_err(|e| match e {
            EventError::Field(f) => f,
            EventError::NotJson(message) => FieldError::new("body", "invalid_json", message),
            _ => FieldError::new(
                "body",
                "invalid_type",
                "expected a JSON object describing one view",
            ),
        })?;
        Self::from_api_fields(object, namespaces, now)
    }

    /// [`View::from_api`] for a view given as query parameters (the pixel).
    pub fn from_query(
        get: impl Fn(&str) -> Option<&'a str>,
        namespaces: &Namespaces,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        Self::from_api_fields(Object::from_query(get), namespaces, now)
    }

    fn from_api_fields(
        mut fields: Object<'a>,
        namespaces: &Namespaces,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldError> {
        let (content_type, content_id, path) = content(&mut fields, namespaces)?;
        let session_id = token(&mut fields, "sessionId")?;
        let event_id = token(&mut fields, "eventId")?;
        let occurred_at = fields.text("occurredAt")?;
        let occurred_at = check_strict_timestamp("occurredAt", occurred_at.as_deref())?;
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
            visitor_id: None,
            received_at: None,
        })
    }

    /// Reads and checks a message value in the Kafka form, by the ingest's rules (a
    /// history line for `ingest publish`, which checks the line is JSON first).
    /// `occurredAt` is required.
    pub fn from_event(bytes: &'a [u8], namespaces: &Namespaces) -> Result<Self, EventError> {
        Self::from_event_fields(Object::parse(bytes)?, namespaces)
    }

    /// A line of history for `ingest publish`: the Kafka form when it has `v`
    /// ([`View::from_event`]), else the API form ([`View::from_api`], `now` bounding
    /// `occurredAt`). The line should have passed [`check_json`] first.
    pub fn from_history(
        json: &'a [u8],
        namespaces: &Namespaces,
        now: DateTime<Utc>,
    ) -> Result<Self, EventError> {
        let fields = Object::parse(json)?;
        if fields.json("v").is_some() {
            Self::from_event_fields(fields, namespaces)
        } else {
            Ok(Self::from_api_fields(fields, namespaces, now)?)
        }
    }

    fn from_event_fields(
        mut fields: Object<'a>,
        namespaces: &Namespaces,
    ) -> Result<Self, EventError> {
        match fields.json("v") {
            Some(v) if v.parse::<u64>() == Ok(EVENT_VERSION) => {}
            Some(other) => return Err(EventError::Version(other)),
            None => return Err(EventError::Version("(missing)".to_owned())),
        }
        let event_id = token(&mut fields, "eventId")?;
        let (content_type, content_id, path) = content(&mut fields, namespaces)?;
        let session_id = token(&mut fields, "sessionId")?;
        let visitor_id = token(&mut fields, "visitorId")?;
        let occurred_at = fields.text("occurredAt")?;
        let occurred_at =
            check_timestamp("occurredAt", occurred_at.as_deref())?.ok_or_else(|| {
                FieldError::new("occurredAt", "missing_field", "is required in event JSON")
            })?;
        let received_at = fields.text("receivedAt")?;
        let received_at = check_timestamp("receivedAt", received_at.as_deref())?;
        Ok(Self {
            content_type,
            content_id,
            path,
            session_id,
            event_id,
            occurred_at: Some(occurred_at),
            visitor_id,
            received_at,
        })
    }

    /// The view as the ingest publishes it, received at `at`: `occurredAt` filled
    /// when the client left it out, `receivedAt` set when it is not already. An
    /// `eventId` stays only when the client chose one: an id nobody can send again
    /// protects nothing and would cost memory per event wherever ids are remembered.
    pub fn received(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at.get_or_insert(at);
        self.received_at.get_or_insert(at);
        self
    }

    /// The Kafka value (event JSON version 1), of a view the ingest has
    /// [`received`](View::received) or read in the Kafka form: both have `occurredAt`.
    pub fn to_json(&self) -> Vec<u8> {
        debug_assert!(
            self.occurred_at.is_some(),
            "a view is published once received"
        );
        // Serialising strings and timestamps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn key(&self) -> ContentKey {
        ContentKey::new(&self.content_type, &self.content_id)
    }

    /// The UTC day the view counts towards (once received, it has an `occurredAt`).
    pub fn day(&self) -> Option<NaiveDate> {
        self.occurred_at.map(|at| at.date_naive())
    }

    /// The view with its strings owned, to outlive what it was read from.
    pub fn into_owned(self) -> View<'static> {
        let own = |s: Cow<'a, str>| Cow::Owned(s.into_owned());
        View {
            content_type: own(self.content_type),
            content_id: own(self.content_id),
            path: self.path.map(own),
            session_id: self.session_id.map(own),
            event_id: self.event_id.map(own),
            occurred_at: self.occurred_at,
            visitor_id: self.visitor_id.map(own),
            received_at: self.received_at,
        }
    }
}

/// What was viewed: `contentType`, `contentId` (both required) and `path`, taken
/// and checked in that order.
type Content<'a> = (Cow<'a, str>, Cow<'a, str>, Option<Cow<'a, str>>);

fn content<'a>(
    fields: &mut Object<'a>,
    namespaces: &Namespaces,
) -> Result<Content<'a>, FieldError> {
    let content_type = fields.text("contentType")?;
    check_content_type(content_type.as_deref(), namespaces)?;
    let content_id = fields.text("contentId")?;
    check_content_id(content_id.as_deref())?;
    let path = fields.text("path")?;
    check_path(path.as_deref())?;
    // Both are there: the checks refuse a missing one.
    Ok((
        content_type.unwrap_or_default(),
        content_id.unwrap_or_default(),
        path,
    ))
}

/// A `sessionId`, `eventId` or `visitorId`: taken and checked.
fn token<'a>(
    fields: &mut Object<'a>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, FieldError> {
    let value = fields.text(name)?;
    check_token(name, value.as_deref())?;
    Ok(value)
}

/// The Kafka form: `v` first, `eventId` and `visitorId` only when present,
/// `occurredAt` as precise as given and `receivedAt` to the millisecond.
impl Serialize for View<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields =
            7 + usize::from(self.event_id.is_some()) + usize::from(self.visitor_id.is_some());
        let mut out = s.serialize_struct("View", fields)?;
        out.serialize_field("v", &EVENT_VERSION)?;
        if let Some(id) = &self.event_id {
            out.serialize_field("eventId", id)?;
        }
        out.serialize_field("contentType", &self.content_type)?;
        out.serialize_field("contentId", &self.content_id)?;
        out.serialize_field("path", &self.path)?;
        out.serialize_field("sessionId", &self.session_id)?;
        if let Some(id) = &self.visitor_id {
            out.serialize_field("visitorId", id)?;
        }
        let at = |at: &Option<DateTime<Utc>>, format| at.map(|at| at.to_rfc3339_opts(format, true));
        out.serialize_field("occurredAt", &at(&self.occurred_at, SecondsFormat::AutoSi))?;
        out.serialize_field("receivedAt", &at(&self.received_at, SecondsFormat::Millis))?;
        out.end()
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
