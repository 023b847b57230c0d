//! `POST /api/views` and `GET /api/views`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use rdkafka::producer::FutureRecord;

use viewpipe_runtime::health::Dependency;
use viewpipe_schema::event::{check_content_id, check_content_type, CONTENT_ID_RULE};
use viewpipe_schema::{ContentKey, FieldError, View};

use crate::api::{CountResponse, Dropped, ErrorBody, ViewAccepted};
use crate::error::ApiError;
use crate::extract::{JsonBytes, RawQuery};
use crate::metrics as m;
use crate::protect::access::{CountVisible, ReadAccess, WriteAccess};
use crate::protect::{self, refused_by};
use crate::visitor::Visit;
use crate::AppState;

/// Longest wait for the broker's acknowledgement before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the count a POST answers with (see `Reader::total_within`).
const POST_COUNT_WAIT: Duration = Duration::from_millis(250);

/// Count one view.
///
/// Validates the view, publishes it to Kafka and answers once the broker has
/// acknowledged it durably (acks=all). The answer carries the key's count only
/// for a caller allowed to read it: where `READ_KEY` is set, the request must carry
/// the read key too (else `count` is null). A known crawler's view dropped by
/// `BOT_FILTER=drop` is answered 202 with `dropped: "crawler"` and no count.
///
/// The body is JSON, sent as `application/json` or as `text/plain` (what
/// `navigator.sendBeacon(url, JSON.stringify(view))` sends: a browser posts it to
/// any origin without a CORS preflight). With `VISITOR_HASH=on`, a view without a
/// `sessionId` sent as `text/plain` or with an `Origin` header gets a cookieless
/// `visitorId` in the published event.
#[utoipa::path(
    post,
    path = "/api/views",
    tag = "views",
    request_body(description = "One view, as JSON; `text/plain` holding the same JSON is read alike",
        content((View = "application/json"), (View = "text/plain"))),
    responses(
        (status = 202, description = "Published and acknowledged", body = ViewAccepted),
        (status = 400, description = "Invalid view; the error names the field", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within BODY_READ_TIMEOUT (body_timeout)", body = ErrorBody),
        (status = 415, description = "Content-Type is neither JSON nor text/plain", body = ErrorBody),
        (status = 503, description = "Broker unavailable or producer queue full; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn post_view(
    State(state): State<AppState>,
    access: WriteAccess,
    CountVisible(count_visible): CountVisible,
    visit: Visit,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<ViewAccepted>), ApiError> {
    let now = Utc::now();
    let input = admit_one(
        &state,
        &access,
        View::from_api(&body, &state.namespaces, now),
        now,
    )?;
    let key = input.key();
    if access.bot {
        // Answered as if accepted, so the crawler does not retry, and saying so: a
        // count here would read as if the view had been counted.
        protect::count_bot_views(&state.namespaces, &input.content_type, 1);
        return Ok((
            StatusCode::ACCEPTED,
            Json(ViewAccepted {
                success: true,
                count: None,
                dropped: Some(Dropped::Crawler),
            }),
        ));
    }
    broker_available(&state)?;
    let event = event_of(input, now, &state, &access, &visit).await;
    let count = async {
        if count_visible {
            count_for_answer(&state, &key).await
        } else {
            None
        }
    };
    let (count, published) = count_then_publish(count, publish(&state, &key, &event)).await;
    published?;
    metrics::counter!(m::EVENTS, "result" => "accepted").increment(1);
    let count = count.map(|n| n + 1);
    Ok((
        StatusCode::ACCEPTED,
        Json(ViewAccepted {
            success: true,
            count,
            dropped: None,
        }),
    ))
}

/// A single view's way in, for `POST /api/views` and the pixel: the view validated
/// (`MAX_EVENT_AGE` included; counted as rejected otherwise), then the write key's
/// namespaces and the rate limits. A crawler's view passes too (`access.bot`); the
/// caller drops it.
pub(crate) fn admit_one<'a>(
    state: &AppState,
    access: &WriteAccess,
    view: Result<View<'a>, FieldError>,
    now: chrono::DateTime<Utc>,
) -> Result<View<'a>, ApiError> {
    let input = view
        .and_then(|input| state.max_event_age.check(&input, now).map(|()| input))
        .inspect_err(|_| {
            metrics::counter!(m::EVENTS, "result" => "rejected").increment(1);
        })?;
    access
        .may_write(&state.protect, &input.content_type)
        .map_err(refused_by)?;
    access.admit(&state.protect, 1)?;
    Ok(input)
}

/// Reads the count a POST answers with to its end, then publishes. Read beside the
/// publish, the count could already hold the view (the aggregator may consume it
/// while the read runs), and the answer, the count plus this view, would then count
/// it twice: the next GET would look like a decrease. Read first, the answer is at
/// most what GET says once the view is consumed. The read costs the POST at most
/// `POST_COUNT_WAIT`.
async fn count_then_publish<C, P>(count: C, publish: P) -> (Option<i64>, P::Output)
where
    C: std::future::Future<Output = Option<i64>>,
    P: std::future::Future,
{
    let count = count.await;
    (count, publish.await)
}

/// The event to publish for an admitted view, with the cookieless visitor id when
/// the view has no `sessionId` and came from a browser.
pub(crate) async fn event_of<'a>(
    input: View<'a>,
    now: chrono::DateTime<Utc>,
    state: &AppState,
    access: &WriteAccess,
    visit: &Visit,
) -> View<'a> {
    let mut event = input.received(now);
    if event.session_id.is_none() {
        event.visitor_id = visit.id(state, access).await.map(Cow::Owned);
    }
    event
}

/// The key's count as GET would answer it, for a POST's answer. It is a courtesy,
/// left out rather than holding the answer back: a store that does not answer
/// (Redis down or recovering, Postgres stalled) costs the POST at most
/// `POST_COUNT_WAIT`, and nothing while the readiness probe finds it down.
async fn count_for_answer(state: &AppState, key: &ContentKey) -> Option<i64> {
    let stores_up =
        !state.health.is_down(Dependency::Redis) && !state.health.is_down(Dependency::Postgres);
    if !stores_up {
        return None;
    }
    match tokio::time::timeout(
        POST_COUNT_WAIT,
        state.reader.total_within(key, POST_COUNT_WAIT),
    )
    .await
    {
        Ok(Ok(n)) => Some(n),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "view accepted but its count could not be read");
            None
        }
        Err(_) => {
            tracing::debug!("view accepted but its count was not read in time");
            None
        }
    }
}

/// Answers 503 at once while the readiness probe finds the broker down, rather than
/// holding the client for the whole publish timeout.
pub(crate) fn broker_available(state: &AppState) -> Result<(), ApiError> {
    if state.health.is_down(Dependency::Kafka) {
        return Err(ApiError::BrokerUnavailable);
    }
    Ok(())
}

/// Publishes one event and waits for the broker's acknowledgement (acks=all).
pub async fn publish(state: &AppState, key: &ContentKey, event: &View<'_>) -> Result<(), ApiError> {
    let payload = event.to_json();
    let record = FutureRecord::to(&state.topic)
        .key(key.as_str())
        .payload(&payload)
        .timestamp(event.occurred_at.unwrap_or_default().timestamp_millis());
    let started = Instant::now();
    let delivery = match state.producer.send_result(record) {
        Ok(delivery) => delivery,
        Err((e, _)) => {
            tracing::warn!(error = %e, "producer queue refused the event");
            return Err(ApiError::BrokerUnavailable);
        }
    };
    let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, delivery).await;
    metrics::histogram!(m::PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err((e, _)))) => {
            tracing::warn!(error = %e, "broker did not acknowledge the event");
            Err(ApiError::BrokerUnavailable)
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("no delivery report in time");
            Err(ApiError::BrokerUnavailable)
        }
    }
}

/// Read a key's count.
///
/// Every view the aggregators have consumed: flushed to Postgres or still pending in
/// Redis. 0 for a key never seen. While only views are added it never decreases.
#[utoipa::path(
    get,
    path = "/api/views",
    tag = "views",
    params(
        ("contentId" = String, Query, description = "The content's id"),
        ("contentType" = String, Query, description = "One of NAMESPACES"),
    ),
    responses(
        (status = 200, body = CountResponse),
        (status = 400, description = "Missing or invalid parameter", body = ErrorBody),
        (status = 503, description = "A store is unavailable or recovering; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn get_views(
    State(state): State<AppState>,
    _access: ReadAccess,
    query: RawQuery,
) -> Result<Json<CountResponse>, ApiError> {
    let key = key_from_query(&state, &query)?;
    let count = state
        .reader
        .total(&key)
        .await
        .map_err(|e| ApiError::store("count read", e))?;
    Ok(Json(CountResponse { count }))
}

/// Refuses a `contentType` outside `NAMESPACES`, as an event's is refused.
pub(crate) fn check_namespace(state: &AppState, namespace: &str) -> Result<(), ApiError> {
    check_content_type(Some(namespace), &state.namespaces)?;
    Ok(())
}

/// Reads and validates `contentId` and `contentType` from a query string.
pub(crate) fn key_from_query(state: &AppState, query: &RawQuery) -> Result<ContentKey, ApiError> {
    let missing = |field| FieldError::new(field, "missing_field", "is required");
    let ns = query
        .get("contentType")
        .ok_or_else(|| missing("contentType"))?;
    let id = query.get("contentId").ok_or_else(|| missing("contentId"))?;
    check_namespace(state, ns)?;
    // The event's rule; a query string is told the rule also when the id is too long.
    let id = check_content_id(Some(id)).map_err(|e| FieldError {
        message: CONTENT_ID_RULE.to_owned(),
        ..e
    })?;
    Ok(ContentKey::new(ns, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn the_answer_is_read_to_its_end_before_the_view_is_published() {
        let log = Mutex::new(Vec::new());
        let note = |what: &'static str| log.lock().map(|mut l| l.push(what)).unwrap_or(());
        let count = async {
            note("read starts");
            // A read that waits on a store (Redis, then Postgres) yields meanwhile.
            tokio::task::yield_now().await;
            note("read ends");
            Some(4)
        };
        let publish = async { note("publish") };
        let (count, ()) = count_then_publish(count, publish).await;
        assert_eq!(count, Some(4));
        let order = log.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(order, ["read starts", "read ends", "publish"]);
    }
}
