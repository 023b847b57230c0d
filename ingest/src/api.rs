//! The shapes the API answers with, shared by the handlers and the OpenAPI document
//! (so the two cannot disagree).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use viewpipe_schema::entities::{JobKind, JobStatus};

/// `POST /api/views` answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ViewAccepted {
    pub success: bool,
    /// The key's count including this view. Null when it could not be read in
    /// time, when `READ_KEY` is set and the request does not carry the read key
    /// (as a read would: Bearer, `X-Viewpipe-Key` or `?key=`), and for a view
    /// dropped as a crawler's.
    pub count: Option<i64>,
    /// Present when the view was answered but not counted: `crawler`, a known
    /// crawler's view dropped by `BOT_FILTER=drop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
}

/// Why an answered view was not counted.
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Dropped {
    /// A known crawler's User-Agent, with `BOT_FILTER=drop`.
    Crawler,
}

/// `GET /api/views` answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct CountResponse {
    pub count: i64,
}

/// A key to read, in `POST /api/views/counts`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRef {
    #[schema(example = "resource")]
    pub content_type: String,
    #[schema(example = "f538f5c5-1a72-4804-8eb1-3f05cea64874")]
    pub content_id: String,
}

/// `POST /api/views/counts` body: the keys to read.
#[derive(Serialize, ToSchema)]
pub(crate) struct CountsRequest {
    /// 1 to 100 keys; a key may be asked more than once.
    #[schema(min_items = 1, max_items = 100)]
    pub keys: Vec<KeyRef>,
}

/// One key's count in `POST /api/views/counts`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyCount {
    pub content_type: String,
    pub content_id: String,
    pub count: i64,
}

/// `POST /api/views/counts` answer: one count per key asked, in the order asked.
#[derive(Serialize, ToSchema)]
pub(crate) struct CountsResponse {
    pub counts: Vec<KeyCount>,
}

/// Why one element of a batch was not accepted.
#[derive(Serialize, ToSchema)]
pub(crate) struct Rejection {
    /// Position in the array (or among the non-blank NDJSON lines), from 0.
    pub index: usize,
    pub error: ErrorDetail,
}

/// `POST /api/views/batch` answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct BatchAccepted {
    pub success: bool,
    /// Views published and acknowledged by the broker.
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

/// One UTC day of a key's series.
#[derive(Serialize, ToSchema)]
pub(crate) struct DayCount {
    #[schema(value_type = String, format = Date, example = "2026-11-20")]
    pub day: NaiveDate,
    /// Views that day, pending ones included.
    pub count: i64,
    /// Distinct visitors that day (`sessionId`, else `visitorId`; views with neither
    /// have none), estimated: exact but for rare hash collisions up to about 3,000
    /// per day, within about 1% (standard error 0.81%) beyond. As of the last flush
    /// (`FLUSH_INTERVAL_MS`), so it may trail `count`, and never above it; 0 when no
    /// flushed view of the day carried a visitor.
    #[schema(minimum = 0)]
    pub visitors: i64,
}

/// `GET /api/views/daily` answer: one entry per UTC day, ascending, zero-filled.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DailyResponse {
    pub content_id: String,
    pub content_type: String,
    pub days: Vec<DayCount>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopItem {
    pub content_id: String,
    pub count: i64,
}

/// `GET /api/views/top` answer: count descending, ties by `contentId` ascending.
#[derive(Serialize, ToSchema)]
pub(crate) struct TopResponse {
    pub items: Vec<TopItem>,
}

/// `POST /api/views/flush` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FlushResponse {
    pub success: bool,
    pub job_id: Uuid,
    /// Rows written by the flushes that answered (absent with `?wait=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flushed: Option<i64>,
}

/// `GET /api/jobs/{id}` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobResponse {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The error inside every error body.
#[derive(Serialize, ToSchema, Clone)]
pub struct ErrorDetail {
    /// Stable, snake_case.
    #[schema(example = "missing_field")]
    pub code: String,
    /// For a person.
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every error: `{"success":false,"error":{..}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub success: bool,
    pub error: ErrorDetail,
}
