//! `GET /api/views/badge.svg`: a key's count as a small image a README or a static
//! page embeds.

use axum::extract::State;
use axum::http::header;
use axum::response::Response;

use viewpipe_schema::FieldError;

use crate::api::ErrorBody;
use crate::error::ApiError;
use crate::extract::RawQuery;
use crate::protect::access::ReadAccess;
use crate::routes::embeddable;
use crate::routes::views::key_from_query;
use crate::AppState;

/// The label's default and its longest form, in characters.
pub(crate) const DEFAULT_LABEL: &str = "views";
pub(crate) const MAX_LABEL_CHARS: usize = 40;
const COLORS: [(&str, &str); 9] = [
    ("blue", "#007ec6"),
    ("brightgreen", "#4c1"),
    ("green", "#97ca00"),
    ("yellow", "#dfb317"),
    ("orange", "#fe7d37"),
    ("red", "#e05d44"),
    ("purple", "#8e44ad"),
    ("grey", "#555"),
    ("lightgrey", "#9f9f9f"),
];
/// The rule of `color`: a name of [`COLORS`] or 3 or 6 hex digits (no `#`, which a
/// URL would need escaped), as a pattern.
pub(crate) fn color_pattern() -> String {
    let names: Vec<&str> = COLORS.iter().map(|(name, _)| *name).collect();
    format!("^([0-9a-fA-F]{{3}}|[0-9a-fA-F]{{6}}|{})$", names.join("|"))
}

/// `style`: rounded with a soft gradient, or square and flat.
pub(crate) const STYLES: [&str; 2] = ["flat", "flat-square"];
/// How long a badge may be cached: counts change, but a badge need not be live.
/// Shared caches may keep it only while no read key guards it: one answered to a
/// request with `Authorization` must not be handed to requests without.
const CACHE_CONTROL: &str = "public, max-age=60";
const CACHE_CONTROL_KEYED: &str = "private, max-age=60";

/// A counter badge.
///
/// `<img src="https://views.example.com/api/views/badge.svg?contentType=page&contentId=home"
/// alt="views">`: an SVG image of the key's count, as `GET /api/views` reads it
/// (this counts no view; pair it with the pixel or the script to count). Options:
/// `label` (default `views`), `color` (a name such as `blue`, `brightgreen`,
/// `orange`, or hex digits such as `4c1`) and `style` (`flat`, `flat-square`).
/// Cached for 60 s (`private` while `READ_KEY` is set). A read: with `READ_KEY` set
/// it needs `?key=`, which a public page would reveal, so badges suit deployments
/// whose counts are public.
#[utoipa::path(
    get,
    path = "/api/views/badge.svg",
    tag = "browser",
    params(
        ("contentType" = String, Query, description = "The content's namespace"),
        ("contentId" = String, Query, description = "The content's id"),
        ("label" = Option<String>, Query, description = "The text on the left (default `views`)"),
        ("color" = Option<String>, Query, description = "The count's background: blue (default), brightgreen, green, yellow, orange, red, purple, grey, lightgrey, or 3 or 6 hex digits"),
        ("style" = Option<String>, Query, description = "flat (default) or flat-square"),
    ),
    responses(
        (status = 200, description = "The badge", content_type = "image/svg+xml", body = String),
        (status = 400, description = "Missing or invalid parameter; the error names it", body = ErrorBody),
        (status = 503, description = "A store is unavailable or recovering; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn get_badge(
    State(state): State<AppState>,
    _access: ReadAccess,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let key = key_from_query(&state, &query)?;
    let look = Look::from_query(&query)?;
    let count = state
        .reader
        .total(&key)
        .await
        .map_err(|e| ApiError::store("badge read", e))?;
    let cache_control = match state.protect.read_key {
        Some(_) => CACHE_CONTROL_KEYED,
        None => CACHE_CONTROL,
    };
    Ok(embeddable(
        render(&look, &grouped(count)),
        "image/svg+xml; charset=utf-8",
        &[(header::CACHE_CONTROL, cache_control)],
    ))
}

/// Whether `query`'s badge options are valid (for the document's tests).
#[cfg(test)]
pub(crate) fn check_look(query: &RawQuery) -> Result<(), FieldError> {
    Look::from_query(query).map(drop)
}

/// How a badge looks.
#[derive(Debug, PartialEq, Eq)]
struct Look {
    label: String,
    /// A CSS colour, `#` and hex digits.
    color: String,
    square: bool,
}

impl Look {
    fn from_query(query: &RawQuery) -> Result<Self, FieldError> {
        let label = query.get("label").unwrap_or(DEFAULT_LABEL);
        // XML has no place for control characters nor U+FFFE and U+FFFF.
        let unusable = |c: char| c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}');
        if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(unusable) {
            return Err(FieldError::new(
                "label",
                "invalid_value",
                format!(
                    "must be at most {MAX_LABEL_CHARS} characters, none of them control characters"
                ),
            ));
        }
        let color = match query.get("color") {
            None => COLORS[0].1.to_owned(),
            Some(given) => color(given).ok_or_else(|| {
                let names: Vec<&str> = COLORS.iter().map(|(name, _)| *name).collect();
                FieldError::new(
                    "color",
                    "invalid_value",
                    format!("must be one of {} or 3 or 6 hex digits", names.join(", ")),
                )
            })?,
        };
        let square = match query.get("style") {
            None | Some("flat") => false,
            Some("flat-square") => true,
            Some(_) => {
                return Err(FieldError::new(
                    "style",
                    "invalid_value",
                    "must be flat or flat-square",
                ))
            }
        };
        Ok(Look {
            label: label.to_owned(),
            color,
            square,
        })
    }
}

/// `given` as a CSS colour: a known name, or 3 or 6 hex digits.
fn color(given: &str) -> Option<String> {
    if let Some((_, css)) = COLORS.iter().find(|(name, _)| *name == given) {
        return Some((*css).to_owned());
    }
    let hex = given.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && matches!(given.len(), 3 | 6)).then(|| format!("#{}", given.to_ascii_lowercase()))
}

/// `12345` as `12,345`.
fn grouped(count: i64) -> String {
    let digits = count.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if count < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// About how wide `text` is in 11 px Verdana, in pixels: narrow and wide letters
/// apart, close enough to size the boxes around it.
fn text_width(text: &str) -> u32 {
    let tenths: u32 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 35,
            ' ' | 'f' | 'r' | 't' | 'I' => 45,
            'm' | 'w' | 'M' | 'W' => 95,
            'A'..='Z' => 75,
            _ => 68,
        })
        .sum();
    tenths.div_ceil(10)
}

/// The SVG of a badge saying `label` on grey and `value` on `look.color`.
fn render(look: &Look, value: &str) -> String {
    let label = escape(&look.label);
    let value = escape(value);
    let (left, right) = (text_width(&look.label) + 10, text_width(&value) + 10);
    let width = left + right;
    let radius = if look.square { 0 } else { 3 };
    let gradient = if look.square {
        String::new()
    } else {
        "<linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>".to_owned()
    };
    let shine = if look.square {
        String::new()
    } else {
        format!("<rect width=\"{width}\" height=\"20\" fill=\"url(#s)\"/>")
    };
    let (lx, rx) = (left * 5, left * 10 + right * 5);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"20\" role=\"img\" aria-label=\"{label}: {value}\">\
<title>{label}: {value}</title>{gradient}\
<clipPath id=\"r\"><rect width=\"{width}\" height=\"20\" rx=\"{radius}\" fill=\"#fff\"/></clipPath>\
<g clip-path=\"url(#r)\"><rect width=\"{left}\" height=\"20\" fill=\"#555\"/><rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"{color}\"/>{shine}</g>\
<g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" font-size=\"110\" transform=\"scale(.1)\">\
<text x=\"{lx}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\">{label}</text><text x=\"{lx}\" y=\"140\">{label}</text>\
<text x=\"{rx}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\">{value}</text><text x=\"{rx}\" y=\"140\">{value}</text>\
</g></svg>",
        color = look.color,
    )
}

/// `text` safe inside an XML element or attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(query: &[(&str, &str)]) -> Result<Look, FieldError> {
        let pairs = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Look::from_query(&RawQuery(pairs))
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1234567, "1,234,567"),
        ];
        for (n, text) in cases {
            assert_eq!(grouped(n), text);
        }
    }

    #[test]
    fn options_are_checked_and_named_in_errors() {
        assert_eq!(
            look(&[]).ok(),
            Some(Look {
                label: "views".into(),
                color: "#007ec6".into(),
                square: false
            })
        );
        let custom = look(&[
            ("label", "reads"),
            ("color", "4C1"),
            ("style", "flat-square"),
        ]);
        assert_eq!(
            custom.ok(),
            Some(Look {
                label: "reads".into(),
                color: "#4c1".into(),
                square: true
            })
        );
        assert_eq!(
            look(&[("color", "orange")]).map(|l| l.color).ok(),
            Some("#fe7d37".into())
        );
        for (name, value) in [
            ("color", "#fff"),
            ("color", "12345"),
            ("color", "chartreuse"),
            ("style", "plastic"),
            ("label", &"x".repeat(41)),
            ("label", "a\nb"),
            ("label", "a\u{FFFF}"),
        ] {
            let refused = look(&[(name, value)]).err().map(|e| e.field);
            assert_eq!(refused, Some(name), "{name}={value:?}");
        }
    }

    #[test]
    fn the_label_is_escaped_and_the_boxes_fit_the_text() {
        let l = look(&[("label", "<b>&\"'")]).expect("look");
        let svg = render(&l, "1,234");
        assert!(svg.contains("&lt;b&gt;&amp;&quot;&#39;"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
        let narrow = render(&look(&[]).expect("look"), "1");
        let wide = render(&look(&[]).expect("look"), "1,234,567");
        let width = |svg: &str| {
            let start = svg.find("width=\"").map(|i| i + 7).unwrap_or(0);
            svg[start..]
                .split('"')
                .next()
                .and_then(|w| w.parse::<u32>().ok())
        };
        assert!(width(&narrow) < width(&wide), "{narrow}\n{wide}");
    }
}
