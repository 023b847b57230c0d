//! `GET /api/views/daily` and `GET /api/views/top`: counts over UTC days.

use axum::extract::State;
use axum::Json;

use viewpipe_schema::FieldError;

use crate::api::{DailyResponse, DayCount, ErrorBody, TopItem, TopResponse};
use crate::error::ApiError;
use crate::extract::RawQuery;
use crate::protect::access::ReadAccess;
use crate::read::sql;
use crate::routes::params;
use crate::routes::views::{check_namespace, key_from_query};
use crate::AppState;

/// How long a `/top` read may go unanswered.
const TOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// A key's views and unique visitors per UTC day.
///
/// One entry per day, ascending and zero-filled, pending counts included. Either
/// `days` (1..=366, default 30) ending today, or `from` and `to` (at most 366 days).
/// `visitors` is an estimate of the distinct sessions (`sessionId`, else the
/// ingest's `visitorId`) that viewed the key that day, as of the aggregators' last
/// flush: views still pending add to `count` but not yet to `visitors`.
#[utoipa::path(
    get,
    path = "/api/views/daily",
    tag = "views",
    params(
        ("contentId" = String, Query, description = "The content's id"),
        ("contentType" = String, Query, description = "One of NAMESPACES"),
        ("days" = Option<i64>, Query, description = "1..=366, default 30; the range ends today (UTC)"),
        ("from" = Option<String>, Query, description = "First day, YYYY-MM-DD (instead of days)"),
        ("to" = Option<String>, Query, description = "Last day, YYYY-MM-DD (instead of days; default today)"),
    ),
    responses(
        (status = 200, body = DailyResponse),
        (status = 400, description = "Missing or invalid parameter", body = ErrorBody),
        (status = 503, description = "A store is unavailable or recovering", body = ErrorBody),
    )
)]
pub(crate) async fn get_daily(
    State(state): State<AppState>,
    _access: ReadAccess,
    query: RawQuery,
) -> Result<Json<DailyResponse>, ApiError> {
    let key = key_from_query(&state, &query)?;
    let (from, to) = params::range(&query, params::DAYS.default)?;
    let days = state
        .reader
        .daily(&key, from, to)
        .await
        .map_err(|e| ApiError::store("daily read", e))?;
    Ok(Json(DailyResponse {
        content_id: key.content_id().to_owned(),
        content_type: key.content_type().to_owned(),
        days: days
            .into_iter()
            .map(|d| DayCount {
                day: d.day,
                count: d.count,
                visitors: d.visitors,
            })
            .collect(),
    }))
}

/// The most viewed content of a namespace.
///
/// Over the UTC days `from..=to` (default today), count descending, ties by
/// `contentId` ascending. Counts come from Postgres, so views of the last
/// `FLUSH_INTERVAL_MS` may not be in them yet.
#[utoipa::path(
    get,
    path = "/api/views/top",
    tag = "views",
    params(
        ("contentType" = String, Query, description = "One of NAMESPACES"),
        ("from" = Option<String>, Query, description = "First day, YYYY-MM-DD (default today)"),
        ("to" = Option<String>, Query, description = "Last day, YYYY-MM-DD (default today)"),
        ("limit" = Option<i64>, Query, description = "1..=100, default 10"),
    ),
    responses(
        (status = 200, body = TopResponse),
        (status = 400, description = "Missing or invalid parameter", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable, or MAX_TOP_READS top reads are running (busy)", body = ErrorBody),
    )
)]
pub(crate) async fn get_top(
    State(state): State<AppState>,
    _access: ReadAccess,
    query: RawQuery,
) -> Result<Json<TopResponse>, ApiError> {
    let namespace = query
        .get("contentType")
        .ok_or_else(|| FieldError::new("contentType", "missing_field", "is required"))?;
    check_namespace(&state, namespace)?;
    if query.get("days").is_some() {
        return Err(FieldError::new(
            "days",
            "unknown_parameter",
            "top takes from and to, not days",
        )
        .into());
    }
    let (from, to) = params::range(&query, 1)?;
    let limit = params::int(&query, &params::LIMIT)?;
    // Held until the scan ends: at most MAX_TOP_READS run at once.
    let _permit = state.protect.top_read()?;
    // A year of a busy namespace is a big scan: longer than a point read, and still
    // bounded should the connection go silent.
    let top = sql::top(&state.db, namespace, from, to, limit as u32);
    let rows = viewpipe_runtime::deadline::within(TOP_DEADLINE, top)
        .await
        .map_err(|e| ApiError::store("top read", e))?;
    Ok(Json(TopResponse {
        items: rows
            .into_iter()
            .map(|(content_id, count)| TopItem { content_id, count })
            .collect(),
    }))
}
