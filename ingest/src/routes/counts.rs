//! `POST /api/views/counts`: the counts of many keys in one request.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use viewpipe_schema::event::{check_content_id, check_content_type};
use viewpipe_schema::{ContentKey, FieldError};

use crate::api::{CountsRequest, CountsResponse, ErrorBody, KeyCount};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::protect::access::ReadAccess;
use crate::AppState;

/// Most keys one request may ask for.
pub(crate) const MAX_KEYS: usize = 100;

/// Read many keys' counts.
///
/// The counts of up to 100 keys, in the order asked (a key asked twice is answered
/// twice), each as `GET /api/views` would answer it: every view the aggregators
/// have consumed, pending ones included, never lower than an earlier read. All keys
/// are read together: one Redis round trip and one Postgres statement. A read with
/// `READ_KEY` and `READ_RATE_LIMIT_PER_ADDR`, costing one read however many keys it
/// asks for. The body may also be sent as `text/plain`.
#[utoipa::path(
    post,
    path = "/api/views/counts",
    tag = "views",
    request_body(content = CountsRequest, content_type = "application/json"),
    responses(
        (status = 200, body = CountsResponse),
        (status = 400, description = "Not an object with 1 to 100 valid keys; the error names the key", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within BODY_READ_TIMEOUT (body_timeout)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Content-Type is neither JSON nor text/plain", body = ErrorBody),
        (status = 503, description = "A store is unavailable or recovering; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn post_counts(
    State(state): State<AppState>,
    _access: ReadAccess,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<CountsResponse>, ApiError> {
    let JsonBody(body) = body?;
    let keys = keys(&state, &body)?;
    let totals = state
        .reader
        .totals(&keys)
        .await
        .map_err(|e| ApiError::store("counts read", e))?;
    let counts = keys
        .iter()
        .zip(totals)
        .map(|(key, count)| KeyCount {
            content_type: key.content_type().to_owned(),
            content_id: key.content_id().to_owned(),
            count,
        })
        .collect();
    Ok(Json(CountsResponse { counts }))
}

/// The keys of a `CountsRequest`, each checked as `GET /api/views` checks its
/// parameters; an error names the key by its index.
fn keys(state: &AppState, body: &Value) -> Result<Vec<ContentKey>, ApiError> {
    let invalid = |code, message: String| FieldError::new("keys", code, message);
    let list = match body.get("keys") {
        None | Some(Value::Null) => {
            return Err(FieldError::new("keys", "missing_field", "is required").into())
        }
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("invalid_type", "must be an array of keys".into()).into()),
    };
    if list.is_empty() {
        return Err(invalid("empty_keys", "holds no key; ask for 1 to 100".into()).into());
    }
    if list.len() > MAX_KEYS {
        let message = format!("holds {} keys; at most {MAX_KEYS} are allowed", list.len());
        return Err(invalid("too_many_keys", message).into());
    }
    list.iter()
        .enumerate()
        .map(|(i, key)| {
            let text = |field| key.get(field).and_then(Value::as_str);
            let checked = check_content_type(text("contentType"), &state.namespaces)
                .and_then(|ns| check_content_id(text("contentId")).map(|id| (ns, id)));
            checked
                .map(|(ns, id)| ContentKey::new(ns, id))
                .map_err(|e| {
                    invalid(e.code, format!("keys[{i}].{}: {}", e.field, e.message)).into()
                })
        })
        .collect()
}
