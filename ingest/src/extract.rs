//! Request extractors that answer in the API's error model.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde_json::Value;

use crate::error::ApiError;

/// Most bytes a single-event body may have.
pub const MAX_BODY: usize = 1024 * 1024;

/// A JSON body: 415 unless the content type is JSON or `text/plain`, 413 over the
/// limit, 400 when it does not parse.
///
/// `text/plain` is what `navigator.sendBeacon(url, JSON.stringify(view))` sends: a
/// browser posts it to another origin without a CORS preflight, so a page can count
/// views without the ingest allowing its origin. The body is read as JSON whatever
/// the charset parameter says (a beacon's string is always UTF-8).
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadJson(e.to_string()))
    }
}

/// A [`JsonBody`] kept as its bytes, checked to be JSON: for a reader that borrows
/// from it (a view).
pub(crate) struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !matches!(
            media(req.headers().get(header::CONTENT_TYPE)),
            Some(Media::Json | Media::Text)
        ) {
            return Err(ApiError::NotJson);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::unread_body(&e, "1 MiB"))?;
        // Checked as a `Value` would be read, without building one.
        viewpipe_schema::event::check_json(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
        Ok(JsonBytes(bytes))
    }
}

/// The body types the write endpoints read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Media {
    /// `application/json` or `application/*+json`.
    Json,
    /// `text/plain` holding JSON (a beacon).
    Text,
    /// `application/x-ndjson` (batches only).
    Ndjson,
}

/// The body type a `Content-Type` names, by its media type alone (parameters such
/// as `charset` are ignored); `None` for any other or none.
pub(crate) fn media(content_type: Option<&header::HeaderValue>) -> Option<Media> {
    let value = content_type.and_then(|v| v.to_str().ok())?;
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(Media::Json),
        "text/plain" => Some(Media::Text),
        "application/x-ndjson" => Some(Media::Ndjson),
        m if m.starts_with("application/") && m.ends_with("+json") => Some(Media::Json),
        _ => None,
    }
}

/// Query parameters as raw strings, each validated by the handler.
pub struct RawQuery(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for RawQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> = parse_query(query).ok_or_else(|| {
            ApiError::Invalid(viewpipe_schema::FieldError {
                field: "query",
                code: "invalid_value",
                message: "query string is not valid URL-encoded UTF-8".into(),
            })
        })?;
        Ok(RawQuery(pairs))
    }
}

impl RawQuery {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Some(out)
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_media_types() {
        let v = |s: &'static str| header::HeaderValue::from_static(s);
        let cases = [
            ("application/json", Some(Media::Json)),
            ("application/json; charset=utf-8", Some(Media::Json)),
            ("Application/JSON", Some(Media::Json)),
            ("application/merge+json", Some(Media::Json)),
            ("text/plain", Some(Media::Text)),
            ("text/plain;charset=UTF-8", Some(Media::Text)),
            ("text/plain; charset=iso-8859-1", Some(Media::Text)),
            ("application/x-ndjson", Some(Media::Ndjson)),
            ("text/html", None),
            ("text/plainx", None),
            ("application/x-www-form-urlencoded", None),
            ("multipart/form-data; boundary=x", None),
            ("", None),
        ];
        for (given, want) in cases {
            assert_eq!(media(Some(&v(given))), want, "{given}");
        }
        assert_eq!(media(None), None);
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            parse_query("a=1&b=x%3Ay+z&c"),
            Some(vec![
                ("a".into(), "1".into()),
                ("b".into(), "x:y z".into()),
                ("c".into(), "".into())
            ])
        );
        assert_eq!(parse_query("a=%ff"), None);
        assert_eq!(parse_query("a=%z"), None);
    }
}
