//! `GET /p.gif`: a view counted by loading an image, for pages that run no script
//! and for e-mail.

use axum::extract::State;
use axum::http::{header, HeaderName, Method};
use axum::response::Response;
use chrono::Utc;
use viewpipe_schema::View;

use crate::api::ErrorBody;
use crate::error::ApiError;
use crate::extract::RawQuery;
use crate::metrics as m;
use crate::protect;
use crate::protect::access::WriteAccess;
use crate::routes::embeddable;
use crate::routes::views::{admit_one, broker_available, event_of, publish};
use crate::visitor::Visit;
use crate::AppState;

/// The query parameters a pixel reads: the fields of a view, by the same names.
/// `occurredAt` is left out: a pixel is counted when it is loaded.
const FIELDS: [&str; 5] = ["contentType", "contentId", "path", "sessionId", "eventId"];

/// A transparent 1x1 GIF: header `GIF89a`; a 1x1 screen with a 2-colour table
/// (black, white); a graphic control extension marking colour 0 transparent; one
/// 1x1 image whose LZW data (minimum code size 2) is clear, index 0, end; trailer.
const GIF: &[u8] = &[
    b'G', b'I', b'F', b'8', b'9', b'a', // signature and version
    0x01, 0x00, 0x01, 0x00, // width 1, height 1
    0x80, 0x00, 0x00, // global colour table of 2 entries; background 0; aspect 0
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // the table: black, white
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // transparency: index 0
    0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image at 0,0, 1x1
    0x02, 0x02, 0x44, 0x01, 0x00, // LZW: code size 2, one 2-byte block, end
    0x3b, // trailer
];

/// Headers that keep every load of the pixel reaching the ingest: no browser,
/// proxy or mail client may answer it from a cache.
const NO_CACHE: [(HeaderName, &str); 3] = [
    (
        header::CACHE_CONTROL,
        "no-store, no-cache, must-revalidate, max-age=0",
    ),
    (header::PRAGMA, "no-cache"),
    (header::EXPIRES, "0"),
];

/// Count one view with an image.
///
/// `<img src="https://views.example.com/p.gif?contentType=page&contentId=home"
/// alt="" width="1" height="1">`: publishes one view exactly as `POST /api/views`
/// does (same rules, same write key, rate limits and crawler filter, answered once
/// the broker acknowledged it), then answers a transparent 1x1 GIF that no cache
/// may keep. The view's fields are query parameters of the same names; others are
/// ignored (a cache-busting `?_=123` too). Where `WRITE_KEYS` is set the key is
/// `key=<write key>`. A crawler's view dropped by `BOT_FILTER=drop` gets the GIF
/// too. With `VISITOR_HASH=on`, a view without `sessionId` gets a cookieless
/// `visitorId`. A `HEAD` request answers the headers and counts nothing.
#[utoipa::path(
    get,
    path = "/p.gif",
    tag = "browser",
    params(
        ("contentType" = String, Query, description = "The content's namespace"),
        ("contentId" = String, Query, description = "The content's id"),
        ("path" = Option<String>, Query, description = "The page the view happened on"),
        ("sessionId" = Option<String>, Query, description = "The client's session"),
        ("eventId" = Option<String>, Query, description = "Views of a key with the same id count once within 24 h (e.g. one per e-mail recipient)"),
    ),
    responses(
        (status = 200, description = "Published and acknowledged (or dropped as a crawler's): a transparent 1x1 GIF",
            content_type = "image/gif", body = String,
            headers(
                ("Cache-Control" = String, description = "no-store, no-cache, must-revalidate, max-age=0"),
                ("Pragma" = String, description = "no-cache"),
                ("Expires" = String, description = "0"),
            )),
        (status = 400, description = "Missing or invalid parameter; the error names it", body = ErrorBody),
        (status = 503, description = "Broker unavailable or producer queue full; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn get_pixel(
    State(state): State<AppState>,
    method: Method,
    access: WriteAccess,
    visit: Visit,
    query: RawQuery,
) -> Result<Response, ApiError> {
    if method == Method::HEAD {
        return Ok(gif());
    }
    let now = Utc::now();
    let fields = |name: &str| FIELDS.contains(&name).then(|| query.get(name)).flatten();
    let view = View::from_query(fields, &state.namespaces, now);
    let input = admit_one(&state, &access, view, now)?;
    if access.bot {
        protect::count_bot_views(&state.namespaces, &input.content_type, 1);
        return Ok(gif());
    }
    broker_available(&state)?;
    let key = input.key();
    let event = event_of(input, now, &state, &access, &visit).await;
    publish(&state, &key, &event).await?;
    metrics::counter!(m::EVENTS, "result" => "accepted").increment(1);
    Ok(gif())
}

fn gif() -> Response {
    embeddable(GIF, "image/gif", &NO_CACHE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gif_is_a_transparent_1x1_image() {
        assert_eq!(GIF.len(), 43);
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!((GIF[6], GIF[8]), (1, 1), "1x1");
        // The graphic control extension's flags: transparency on, index 0.
        assert_eq!((GIF[19], GIF[20], GIF[22] & 1, GIF[25]), (0x21, 0xf9, 1, 0));
        assert_eq!(GIF.last(), Some(&0x3b));
    }
}
