//! HTTP routes of the ingest.

pub mod admin;
pub mod badge;
pub mod batch;
pub(crate) mod batch_read;
pub mod counts;
pub mod params;
pub mod pixel;
pub mod script;
pub mod series;
pub mod views;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// An answer other origins' pages may embed (the script, the pixel, the badge):
/// `body` as `content_type`, with `cache` headers, and
/// `Cross-Origin-Resource-Policy: cross-origin` so that pages requiring it
/// (Cross-Origin-Embedder-Policy) may still load it.
pub(crate) fn embeddable(
    body: impl IntoResponse,
    content_type: &'static str,
    cache: &[(HeaderName, &'static str)],
) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in cache {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}
