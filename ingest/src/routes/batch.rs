//! `POST /api/views/batch`: many views in one request, each validated on its own.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};

use viewpipe_schema::View;

use crate::api::{BatchAccepted, ErrorBody, ErrorDetail, Rejection};
use crate::error::ApiError;
use crate::extract::{media, Media};
use crate::metrics as m;
use crate::protect;
use crate::protect::access::WriteAccess;
use crate::routes::batch_read::{read_elements, ElementError, Refusal};
use crate::routes::views::{broker_available, publish};
use crate::visitor::Visit;
use crate::AppState;

/// Most views in one batch.
pub(crate) const MAX_EVENTS: usize = 1000;
/// Most bytes a batch body may have.
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// A batch body as sent, at most [`MAX_BODY`] bytes, and whether it is NDJSON; its
/// elements are read by [`read_elements`] as the handler validates them.
pub(crate) struct BatchBody {
    bytes: Bytes,
    ndjson: bool,
}

impl<S: Send + Sync> FromRequest<S> for BatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A JSON array, also as `text/plain` (a beacon), or NDJSON.
        let ndjson = match media(req.headers().get(header::CONTENT_TYPE)) {
            Some(Media::Ndjson) => true,
            Some(Media::Json | Media::Text) => false,
            None => return Err(ApiError::NotJson),
        };
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::unread_body(&e, "10 MiB"))?;
        Ok(BatchBody { bytes, ndjson })
    }
}

/// One element checked as `POST /api/views` checks a view (`MAX_EVENT_AGE`
/// included), before the write key's namespaces.
fn validate<'b>(
    state: &AppState,
    index: usize,
    element: Result<&'b [u8], ElementError>,
    now: DateTime<Utc>,
) -> Result<View<'b>, Rejection> {
    let json = element.map_err(|(code, message)| rejection(index, code, message, None))?;
    View::from_api(json, &state.namespaces, now)
        .and_then(|input| state.max_event_age.check(&input, now).map(|()| input))
        .map_err(|e| rejection(index, e.code, e.to_string(), Some(e.field)))
}

/// A batch refused whole (not a batch, empty, too many views, over 10 MiB) still
/// costs what was read of it, at least one view, so a client cannot send such
/// bodies without limit: once its budget is spent it is answered 429 instead.
fn refused(state: &AppState, access: &WriteAccess, refusal: Refusal) -> ApiError {
    match access.charge(&state.protect, refusal.read.max(1)) {
        Ok(()) => refusal.error,
        Err(limited) => limited,
    }
}

fn rejection(index: usize, code: &str, message: String, field: Option<&str>) -> Rejection {
    Rejection {
        index,
        error: ErrorDetail {
            code: code.to_owned(),
            message,
            field: field.map(str::to_owned),
        },
    }
}

/// Count many views.
///
/// A JSON array of 1 to 1000 views, or NDJSON (`Content-Type: application/x-ndjson`,
/// one view per non-blank line); the body may be at most 10 MiB. Each view is
/// checked on its own: valid views are published and acknowledged by the broker
/// before the answer (202), and invalid ones (and any the broker did not
/// acknowledge) are listed by index without failing the others. A batch with no
/// valid view is no exception: it publishes nothing and answers 202 with
/// `accepted: 0` and every element in `rejected`. Where write keys are required, an
/// element of a namespace the key may not write is listed with
/// `namespace_not_allowed`; where rate limits apply, each element costs one view.
/// The elements are read and checked one by one, and the reading stops at the
/// 1001st (answered `too_many_events`, the rest unread). A batch refused whole
/// (400, 413, 415) costs the elements read before it was refused, at least one
/// view: once the budget is spent such a batch is answered 429.
/// Sent as `text/plain` or with an `Origin` header (by a browser), views without a
/// `sessionId` get a cookieless `visitorId` (`VISITOR_HASH=on`).
#[utoipa::path(
    post,
    path = "/api/views/batch",
    tag = "views",
    request_body(description = "A JSON array (also sent as text/plain, as a beacon sends it), or NDJSON with Content-Type: application/x-ndjson",
        content((Vec<View> = "application/json"), (Vec<View> = "text/plain"))),
    responses(
        (status = 202, description = "Valid views acknowledged; the rest listed by index (all of them when none is valid, with accepted 0)", body = BatchAccepted),
        (status = 400, description = "Not an array (or NDJSON), empty, or over 1000 views", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within BODY_READ_TIMEOUT (body_timeout)", body = ErrorBody),
        (status = 415, description = "Content-Type is neither JSON, text/plain nor NDJSON", body = ErrorBody),
        (status = 503, description = "Broker unavailable; no view was accepted", body = ErrorBody),
    )
)]
pub(crate) async fn post_batch(
    State(state): State<AppState>,
    access: WriteAccess,
    visit: Visit,
    body: Result<BatchBody, ApiError>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let now = Utc::now();
    let body = match body {
        Ok(body) => body,
        Err(error) => return Err(refused(&state, &access, Refusal { error, read: 0 })),
    };
    let mut items = Vec::new();
    let read = read_elements(&body.bytes, body.ndjson, |index, element| {
        items.push(validate(&state, index, element, now));
    });
    let count = match read {
        Ok(count) => count,
        Err(refusal) => return Err(refused(&state, &access, refusal)),
    };
    // Every element costs one view, valid or not: the batch is admitted whole or
    // refused whole.
    access.admit(&state.protect, count)?;
    if !access.bot {
        broker_available(&state)?;
    }
    let mut rejected = Vec::new();
    let mut valid = Vec::with_capacity(items.len());
    let mut not_allowed = 0;
    for (index, item) in items.into_iter().enumerate() {
        let parsed = item.and_then(|input| {
            let allowed = access.may_write(&state.protect, &input.content_type);
            allowed.map(|()| input).map_err(|e| {
                not_allowed += 1;
                Rejection {
                    index,
                    error: e.detail(),
                }
            })
        });
        match parsed {
            Ok(input) => valid.push((index, input.key(), input.received(now))),
            Err(r) => rejected.push(r),
        }
    }
    metrics::counter!(m::EVENTS, "result" => "rejected").increment(rejected.len() as u64);
    if not_allowed > 0 {
        metrics::counter!(m::REFUSALS, "reason" => "namespace_not_allowed").increment(not_allowed);
    }
    if access.bot {
        // Answered as if accepted, so the crawler does not retry.
        for (_, _, event) in &valid {
            protect::count_bot_views(&state.namespaces, &event.content_type, 1);
        }
        return Ok((
            StatusCode::ACCEPTED,
            Json(BatchAccepted {
                success: true,
                accepted: valid.len(),
                rejected,
            }),
        ));
    }
    // One browser sent them all: one visitor id for those without a session.
    if valid.iter().any(|(_, _, e)| e.session_id.is_none()) {
        if let Some(id) = visit.id(&state, &access).await {
            for (_, _, event) in valid.iter_mut().filter(|(_, _, e)| e.session_id.is_none()) {
                event.visitor_id = Some(id.clone().into());
            }
        }
    }
    let outcomes = futures::future::join_all(
        valid
            .iter()
            .map(|(_, key, event)| publish(&state, key, event)),
    )
    .await;
    let mut accepted = 0;
    for ((index, _, _), outcome) in valid.iter().zip(outcomes) {
        match outcome {
            Ok(()) => accepted += 1,
            Err(e) => rejected.push(rejection(*index, e.code(), e.to_string(), None)),
        }
    }
    metrics::counter!(m::EVENTS, "result" => "accepted").increment(accepted as u64);
    if accepted == 0 && !valid.is_empty() {
        return Err(ApiError::BrokerUnavailable);
    }
    rejected.sort_by_key(|r| r.index);
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            success: true,
            accepted,
            rejected,
        }),
    ))
}
