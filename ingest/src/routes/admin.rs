//! Admin endpoints: `POST /api/views/flush` and `GET /api/jobs/{id}`, behind the
//! bearer token.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{request::Parts, StatusCode};
use axum::Json;
use uuid::Uuid;

use viewpipe_runtime::jobs;
use viewpipe_schema::FieldError;

use crate::api::{ErrorBody, FlushResponse, JobResponse};
use crate::error::ApiError;
use crate::extract::RawQuery;
use crate::metrics as m;
use crate::protect::access::bearer;
use crate::protect::keys::constant_time_eq;
use crate::AppState;

/// How long `POST /api/views/flush` waits for every partition to answer.
pub(crate) const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = |error: ApiError| {
            // Never the token: only that one was refused, where, and why.
            tracing::warn!(
                path = parts.uri.path(),
                code = error.code(),
                "admin request refused"
            );
            metrics::counter!(m::ADMIN_AUTH_FAILURES).increment(1);
            error
        };
        let Some(token) = &state.admin_token else {
            return Err(refused(ApiError::AdminDisabled));
        };
        let given = bearer(parts).unwrap_or_default();
        if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            Ok(Admin)
        } else {
            Err(refused(ApiError::Unauthorized))
        }
    }
}

/// Flush every aggregator.
///
/// Asks every running aggregator of the group to flush everything it has counted and
/// waits up to 30 s: after a 200, Postgres alone holds every count the aggregators
/// had consumed when the request arrived. With `?wait=false` it answers 202 at once;
/// follow the job at `GET /api/jobs/{id}`.
#[utoipa::path(
    post,
    path = "/api/views/flush",
    tag = "admin",
    params(("wait" = Option<bool>, Query, description = "false: answer 202 without waiting")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every partition flushed", body = FlushResponse),
        (status = 202, description = "Job queued (wait=false)", body = FlushResponse),
        (status = 400, description = "Invalid wait parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong token, or ADMIN_TOKEN unset", body = ErrorBody),
        (status = 503, description = "Not every partition answered within 30 s, or Postgres is down", body = ErrorBody),
    )
)]
pub(crate) async fn post_flush(
    _admin: Admin,
    State(state): State<AppState>,
    query: RawQuery,
) -> Result<(StatusCode, Json<FlushResponse>), ApiError> {
    let wait = match query.get("wait") {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(FieldError::new("wait", "invalid_value", "must be true or false").into())
        }
    };
    let store_down = |e| ApiError::store("flush job", e);
    let (id, seq) = jobs::request_flush(&state.db, &state.scope.group)
        .await
        .map_err(store_down)?;
    tracing::info!(job = %id, "flush requested");
    if !wait {
        return Ok((
            StatusCode::ACCEPTED,
            Json(FlushResponse {
                success: true,
                job_id: id,
                flushed: None,
            }),
        ));
    }
    let report = jobs::wait_for_flush(&state.db, &state.scope, id, seq, FLUSH_WAIT)
        .await
        .map_err(store_down)?;
    if !report.is_completed() {
        return Err(ApiError::FlushIncomplete(format!(
            "flush job {id} {}: {}",
            report.status,
            report.error.unwrap_or_default()
        )));
    }
    Ok((
        StatusCode::OK,
        Json(FlushResponse {
            success: true,
            job_id: id,
            flushed: Some(report.flushed),
        }),
    ))
}

/// A job's state.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The job id a flush or backfill returned")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = JobResponse),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token, or ADMIN_TOKEN unset", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Postgres is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_job(
    _admin: Admin,
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<JobResponse>, ApiError> {
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(&id).ok())
        .ok_or_else(|| FieldError::new("id", "invalid_value", "must be a job id (a UUID)"))?;
    let job = jobs::job(&state.db, id)
        .await
        .map_err(|e| ApiError::store("job read", e))?
        .ok_or(ApiError::NoSuchJob)?;
    Ok(Json(JobResponse {
        id: job.id,
        kind: job.kind,
        status: job.status,
        result: job.result,
        error: job.error,
        created_at: job.created_at,
        finished_at: job.finished_at,
    }))
}
