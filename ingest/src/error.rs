//! The API's error model: every error is
//! `{"success":false,"error":{"code":..,"message":..}}` with one status per kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use viewpipe_schema::FieldError;

use axum::extract::rejection::BytesRejection;

use crate::api::{ErrorBody, ErrorDetail};
use crate::serve::BodyTimedOut;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error(
        "request body must be JSON (Content-Type: application/json, or text/plain holding JSON)"
    )]
    NotJson,
    #[error("request body is larger than {0}")]
    TooLarge(&'static str),
    /// The body did not arrive whole within `BODY_READ_TIMEOUT`.
    #[error("the request body did not arrive within BODY_READ_TIMEOUT ({0:?})")]
    BodyTimeout(std::time::Duration),
    /// hyper could not parse the request's head (it answers before the router).
    #[error("the request is not valid HTTP/1.1: its request line or a header could not be parsed")]
    BadRequest,
    /// The request's URI is over hyper's limit.
    #[error("the request URI is too long (at most 65534 bytes)")]
    UriTooLong,
    /// The request's headers are over hyper's read buffer or more than 100.
    #[error("the request's headers are too large (at most 100 headers in about 400 KiB)")]
    HeadersTooLarge,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The broker did not acknowledge in time, or the producer queue is full.
    #[error("the event broker is unavailable; retry shortly")]
    BrokerUnavailable,
    /// A store needed to answer is down.
    #[error("a backing store is unavailable; retry shortly")]
    StoreUnavailable,
    /// Admin endpoint without the right bearer token.
    #[error(
        "this endpoint needs `Authorization: Bearer <ADMIN_TOKEN>`; the token is missing or wrong"
    )]
    Unauthorized,
    /// Admin endpoint while `ADMIN_TOKEN` is not set.
    #[error("admin endpoints are disabled: ADMIN_TOKEN is not set on this ingest")]
    AdminDisabled,
    #[error("no job with this id")]
    NoSuchJob,
    /// `WRITE_KEYS` is set and the write carried no key.
    #[error("this endpoint needs a write key: header X-Viewpipe-Key or query parameter key")]
    MissingWriteKey,
    /// `WRITE_KEYS` is set and the key is not one of them.
    #[error("the write key is not valid")]
    InvalidWriteKey,
    /// The write key may not write this namespace.
    #[error("contentType: the write key of app {app} may not write {namespace:?}")]
    NamespaceNotAllowed { app: String, namespace: String },
    /// Over a rate limit: nothing of the request was published.
    #[error("{message}")]
    RateLimited { retry_after: u64, message: String },
    /// `READ_KEY` is set and the read carried no key.
    #[error("this endpoint needs the read key: Authorization: Bearer <key>, header X-Viewpipe-Key or query parameter key")]
    MissingReadKey,
    /// `READ_KEY` is set and the key is not it.
    #[error("the read key is not valid")]
    InvalidReadKey,

    /// `MAX_TOP_READS` range scans are running already.
    #[error("too many top reads are running on this ingest; retry shortly")]
    Busy,
    /// A flush job did not complete in time.
    #[error("{0}")]
    FlushIncomplete(String),
}

impl ApiError {
    /// A store failed while answering: logs why (the client only learns "retry").
    pub fn store(what: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %error, "{what} failed");
        ApiError::StoreUnavailable
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadJson(_) | ApiError::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BrokerUnavailable
            | ApiError::StoreUnavailable
            | ApiError::Busy
            | ApiError::FlushIncomplete(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized
            | ApiError::AdminDisabled
            | ApiError::MissingWriteKey
            | ApiError::InvalidWriteKey
            | ApiError::MissingReadKey
            | ApiError::InvalidReadKey => StatusCode::UNAUTHORIZED,
            ApiError::NoSuchJob => StatusCode::NOT_FOUND,
            ApiError::NamespaceNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(f) => f.code,
            ApiError::BadJson(_) => "invalid_json",
            ApiError::NotJson => "unsupported_media_type",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::BadRequest => "bad_request",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BrokerUnavailable => "broker_unavailable",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::NoSuchJob => "job_not_found",
            ApiError::FlushIncomplete(_) => "flush_incomplete",
            ApiError::Busy => "busy",
            ApiError::MissingWriteKey => "missing_write_key",
            ApiError::InvalidWriteKey => "invalid_write_key",
            ApiError::NamespaceNotAllowed { .. } => "namespace_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::MissingReadKey => "missing_read_key",
            ApiError::InvalidReadKey => "invalid_read_key",
        }
    }

    /// Why a body could not be read whole: over `limit`, past `BODY_READ_TIMEOUT`,
    /// or cut off by the client.
    pub(crate) fn unread_body(rejection: &BytesRejection, limit: &'static str) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge(limit);
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
        while let Some(error) = cause {
            if let Some(timed_out) = error.downcast_ref::<BodyTimedOut>() {
                return ApiError::BodyTimeout(timed_out.0);
            }
            cause = error.source();
        }
        ApiError::BadJson(rejection.body_text())
    }

    /// The error as it is sent, in the shape the OpenAPI document describes.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            success: false,
            error: self.detail(),
        }
    }

    /// The error's code, message and (for bad input) field.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code().to_owned(),
            message: self.to_string(),
            field: match self {
                ApiError::Invalid(f) => Some(f.field.to_owned()),
                ApiError::NamespaceNotAllowed { .. } => Some("contentType".to_owned()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let ApiError::RateLimited { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            // A write key is not a bearer token: the challenge names its header.
            let scheme = match self {
                ApiError::MissingWriteKey | ApiError::InvalidWriteKey => "X-Viewpipe-Key",
                _ => "Bearer",
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}
