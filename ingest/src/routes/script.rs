//! `GET /v.js`: the script a page embeds to count its views (`ingest/js/script/v.js`,
//! built into the binary as it is: plain JavaScript, no build step).

use axum::http::header;
use axum::response::Response;

use crate::routes::embeddable;

/// The script, as kept in the repository.
pub const SCRIPT: &str = include_str!("../../js/script/v.js");

/// The view-counting script.
///
/// Embedded with
/// `<script defer src="https://views.example.com/v.js" data-type="page"></script>`,
/// it counts one view when the page loads and one per navigation of a single-page
/// app, with `fetch` and `keepalive` (a `text/plain` POST to `/api/views`, which
/// needs no CORS preflight; `navigator.sendBeacon` where fetch is missing), and says
/// in the console why a view was refused (the error's code and message) where
/// `CORS_ORIGINS` lets the page read the answer. Attributes: `data-type` (the
/// `contentType`, required),
/// `data-id` (the `contentId`; default derived from the path: `/docs/intro/` is
/// `docs:intro`, `/` is `index`), `data-key` (the write key, where `WRITE_KEYS` is
/// set), `data-dnt="respect"` (send nothing when the browser asks not to be
/// tracked). `window.viewpipe.view(fields)` counts one more view by hand. Cached
/// for an hour.
#[utoipa::path(
    get,
    path = "/v.js",
    tag = "browser",
    responses(
        (status = 200, description = "The script", content_type = "text/javascript", body = String,
            headers(("Cache-Control" = String, description = "public, max-age=3600"))),
    )
)]
pub(crate) async fn get_script() -> Response {
    embeddable(
        SCRIPT,
        "text/javascript; charset=utf-8",
        &[(header::CACHE_CONTROL, "public, max-age=3600")],
    )
}
