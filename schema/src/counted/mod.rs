//! What the aggregator counts: a message of the `views` topic held to what counting
//! needs, and nothing more.
//!
//! Edge rules (which namespaces a deployment takes, how long a path or an id may be)
//! are the ingest's: they may differ between two releases, or two settings, during a
//! rolling deploy, and an event an ingest acknowledged must count whatever the
//! aggregator's own release or settings say (guarantee 1). So the aggregator refuses
//! only what cannot be counted:
//! - not a JSON object of version 1;
//! - no key: `contentType` or `contentId` missing, not a string, or outside the key
//!   format's characters (a lowercase letter, then `a-z 0-9 _ -`; `A-Z a-z 0-9 . _ ~ : -`),
//!   or longer than [`MAX_COUNTED_TYPE_LEN`] / [`MAX_COUNTED_ID_LEN`] bytes, past which
//!   the key no longer fits Postgres' index;
//! - no day: `occurredAt` missing or not an RFC 3339 timestamp.
//!
//! Everything else is made countable rather than refused: a `path` that is not text,
//! or holds a NUL (Postgres text cannot), is dropped, and one that is too long is cut;
//! a `sessionId` or `visitorId` that is not text is ignored (it only feeds unique
//! visitors); an `eventId` outside the ingest's rule is kept as the idempotency key
//! it is, through a digest when it is too long or not printable ASCII.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{
    event_object, EventError, FieldError, EVENT_VERSION, MAX_PATH_CHARS, MAX_TOKEN_LEN,
};

/// The longest `contentType` counted, in bytes (the ingest allows 32).
pub(crate) const MAX_COUNTED_TYPE_LEN: usize = 64;
/// The longest `contentId` counted, in bytes (the ingest allows 128). The key stays
/// well under the 2,704 bytes a Postgres B-tree entry may hold.
pub(crate) const MAX_COUNTED_ID_LEN: usize = 1024;

/// A countable event read from Kafka, borrowing its strings from the message where
/// the JSON allows (no escapes): what the aggregator needs to count it, without an
/// allocation per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub content_type: Cow<'a, str>,
    pub content_id: Cow<'a, str>,
    pub path: Option<Cow<'a, str>>,
    /// The idempotency key: the client's `eventId`, or a digest of it when it is not
    /// 1 to 128 printable ASCII characters.
    pub event_id: Option<Cow<'a, str>>,
    /// Who viewed, for unique visitors: the `sessionId`, else the `visitorId`.
    pub visitor: Option<Cow<'a, str>>,
    pub occurred_at: DateTime<Utc>,
}

/// The event JSON as serde reads it without copying: the common shape, every field
/// a string or absent. Anything else goes to [`EventRef::parse_value`].
#[derive(Deserialize)]
struct Wire<'a> {
    v: u64,
    #[serde(borrow, default, rename = "eventId", deserialize_with = "borrowed")]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "contentType", deserialize_with = "borrowed")]
    content_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "contentId", deserialize_with = "borrowed")]
    content_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "sessionId", deserialize_with = "borrowed")]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "visitorId", deserialize_with = "borrowed")]
    visitor_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "occurredAt", deserialize_with = "borrowed")]
    occurred_at: Option<Cow<'a, str>>,
}

/// An optional string that borrows from the input when it has no escapes. (serde
/// borrows a `Cow<str>` only when it is a field's whole type; inside an `Option` it
/// would copy every string.)
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

impl<'a> EventRef<'a> {
    /// Reads a message value of the `views` (or replay) topic as something to count,
    /// or says why it cannot be counted. The common shape is read without copies;
    /// anything else (a field of another JSON type, duplicate fields, an invalid
    /// event) is decided by [`EventRef::parse_value`], with the same result.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EventError> {
        if let Some(event) = Self::fast(bytes) {
            return Ok(event);
        }
        Self::parse_value(bytes)
    }

    fn fast(bytes: &'a [u8]) -> Option<Self> {
        let wire: Wire<'a> = serde_json::from_slice(bytes).ok()?;
        if wire.v != EVENT_VERSION {
            return None;
        }
        counted_type(wire.content_type.as_deref()).ok()?;
        counted_id(wire.content_id.as_deref()).ok()?;
        let occurred_at = counted_time(wire.occurred_at.as_deref()).ok()?;
        Some(EventRef {
            content_type: wire.content_type?,
            content_id: wire.content_id?,
            path: wire.path.and_then(counted_path),
            event_id: wire.event_id.and_then(counted_event_id),
            visitor: wire
                .session_id
                .filter(|s| !s.is_empty())
                .or(wire.visitor_id.filter(|v| !v.is_empty())),
            occurred_at,
        })
    }

    /// [`EventRef::parse`] through a `serde_json::Value`: every shape, with errors
    /// that name the field.
    pub(crate) fn parse_value(bytes: &[u8]) -> Result<EventRef<'static>, EventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EventError::NotJson(e.to_string()))?;
        let obj = event_object(&value)?;
        let get = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let string = |name: &'static str| match get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(FieldError::new(name, "invalid_type", "must be a string")),
        };
        let text = |name: &str| match get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(Cow::Owned(s.clone())),
            _ => None,
        };
        let content_type = counted_type(string("contentType")?)?.to_owned();
        let content_id = counted_id(string("contentId")?)?.to_owned();
        let occurred_at = counted_time(string("occurredAt")?)?;
        let event_id = match get("eventId") {
            None => None,
            Some(Value::String(s)) => counted_event_id(Cow::Owned(s.clone())),
            // A number (or anything else) a producer chose is still its key.
            Some(other) => counted_event_id(Cow::Owned(other.to_string())),
        };
        Ok(EventRef {
            content_type: Cow::Owned(content_type),
            content_id: Cow::Owned(content_id),
            path: match get("path") {
                Some(Value::String(s)) => counted_path(Cow::Owned(s.clone())),
                _ => None,
            },
            event_id,
            visitor: text("sessionId").or_else(|| text("visitorId")),
            occurred_at,
        })
    }

    /// The UTC day the view counts towards.
    pub fn day(&self) -> NaiveDate {
        self.occurred_at.date_naive()
    }
}

fn missing(name: &'static str) -> FieldError {
    FieldError::new(name, "missing_field", "is required in event JSON")
}

/// `contentType`: the key format's form, any namespace.
fn counted_type(value: Option<&str>) -> Result<&str, FieldError> {
    let ns = value.ok_or_else(|| missing("contentType"))?;
    let mut bytes = ns.bytes();
    let form = matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if !form || ns.len() > MAX_COUNTED_TYPE_LEN {
        return Err(FieldError::new(
            "contentType",
            "invalid_value",
            format!("must be a lowercase letter followed by a-z 0-9 _ -, at most {MAX_COUNTED_TYPE_LEN} bytes"),
        ));
    }
    Ok(ns)
}

/// `contentId`: the key format's characters.
fn counted_id(value: Option<&str>) -> Result<&str, FieldError> {
    let id = value.ok_or_else(|| missing("contentId"))?;
    let chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'-'));
    if id.is_empty() || id.len() > MAX_COUNTED_ID_LEN || !chars {
        return Err(FieldError::new(
            "contentId",
            "invalid_value",
            format!("must be 1 to {MAX_COUNTED_ID_LEN} bytes of A-Z a-z 0-9 . _ ~ : -"),
        ));
    }
    Ok(id)
}

/// `occurredAt`: RFC 3339 (a space between date and time is fine here).
fn counted_time(value: Option<&str>) -> Result<DateTime<Utc>, FieldError> {
    let text = value.ok_or_else(|| missing("occurredAt"))?;
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                "occurredAt",
                "invalid_value",
                "must be an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
            )
        })
}

/// A path Postgres can store: none when empty or holding a NUL, cut to
/// [`MAX_PATH_CHARS`] characters when longer.
fn counted_path(path: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if path.is_empty() || path.contains('\0') {
        return None;
    }
    match path.char_indices().nth(MAX_PATH_CHARS) {
        Some((cut, _)) => Some(Cow::Owned(path[..cut].to_owned())),
        None => Some(path),
    }
}

/// The idempotency key of an `eventId`: itself when it is 1 to 128 printable ASCII
/// characters (every id the ingest accepts), else `sha256:` and the hex digest of
/// its bytes, so that a longer or stranger id still de-duplicates and stays small.
fn counted_event_id(id: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if id.is_empty() {
        return None;
    }
    if id.len() <= MAX_TOKEN_LEN && id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Some(id);
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for b in digest {
        key.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        key.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Some(Cow::Owned(key))
}

#[cfg(test)]
mod tests;
