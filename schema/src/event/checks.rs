//! The field checks: each reads one field and says, by name, what is wrong with it.

use chrono::{DateTime, Utc};

use super::{FieldError, CONTENT_ID_RULE, MAX_PATH_CHARS, MAX_TOKEN_LEN};
use crate::key::{is_valid_content_id, Namespaces, MAX_CONTENT_ID_LEN};

pub(super) fn required<'s>(
    name: &'static str,
    value: Option<&'s str>,
) -> Result<&'s str, FieldError> {
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

/// `path`: at most 2048 characters, no control characters ([`rules::PATH`](crate::rules::PATH)).
pub(super) fn check_path(value: Option<&str>) -> Result<Option<&str>, FieldError> {
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
/// ([`rules::SESSION_ID`](crate::rules::SESSION_ID), [`rules::EVENT_ID`](crate::rules::EVENT_ID)).
pub(super) fn check_token<'s>(
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
pub(super) fn check_timestamp(
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
pub(super) fn check_strict_timestamp(
    name: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    if value.is_some_and(|v| !matches!(v.as_bytes().get(10), Some(b'T' | b't'))) {
        return Err(timestamp_error(name));
    }
    check_timestamp(name, value)
}

pub(super) fn timestamp_error(name: &'static str) -> FieldError {
    FieldError::new(
        name,
        "invalid_value",
        "must be an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
    )
}

/// Keeps echoed client input short in error messages.
pub(super) fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}
