//! Query parameters shared by the read endpoints, validated into the error model.

use chrono::{NaiveDate, Utc};

use viewpipe_schema::FieldError;

use crate::error::ApiError;
use crate::extract::RawQuery;

/// Most days a daily or top query may span.
pub(crate) const MAX_DAYS: i64 = 366;

/// A whole-number query parameter's rule, as [`int`] enforces it and the API
/// document states it (`minimum`, `maximum`, `default`).
#[derive(Debug, Clone, Copy)]
pub struct IntParam {
    pub name: &'static str,
    pub min: i64,
    pub max: i64,
    pub default: i64,
}

/// `days` of `GET /api/views/daily`: how many days, ending today.
pub const DAYS: IntParam = IntParam {
    name: "days",
    min: 1,
    max: MAX_DAYS,
    default: 30,
};

/// `limit` of `GET /api/views/top`.
pub const LIMIT: IntParam = IntParam {
    name: "limit",
    min: 1,
    max: 100,
    default: 10,
};

/// Every whole-number parameter, for the API document.
pub(crate) const INT_PARAMS: [IntParam; 2] = [DAYS, LIMIT];

/// A `YYYY-MM-DD` day that exists ([`viewpipe_schema::rules::DAY_PATTERN`]: four, two and two
/// digits; chrono alone would also take `2026-1-5` or `+2026-01-05`).
pub fn day(query: &RawQuery, field: &'static str) -> Result<Option<NaiveDate>, ApiError> {
    let Some(text) = query.get(field) else {
        return Ok(None);
    };
    let digits_at = |range: std::ops::Range<usize>| {
        text.get(range)
            .is_some_and(|part| part.bytes().all(|b| b.is_ascii_digit()))
    };
    let shaped = text.len() == 10 && digits_at(0..4) && digits_at(5..7) && digits_at(8..10);
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(day) if shaped => Ok(Some(day)),
        _ => Err(FieldError::new(field, "invalid_value", "must be a date as YYYY-MM-DD").into()),
    }
}

/// A whole-number parameter in `min..=max`, its default when absent.
pub fn int(query: &RawQuery, rule: &IntParam) -> Result<i64, ApiError> {
    let Some(text) = query.get(rule.name) else {
        return Ok(rule.default);
    };
    match text.parse::<i64>() {
        Ok(n) if (rule.min..=rule.max).contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            rule.name,
            "invalid_value",
            format!("must be a whole number from {} to {}", rule.min, rule.max),
        )
        .into()),
    }
}

/// A `from..=to` UTC day range: `from` and `to` (each defaulting to today), or
/// [`DAYS`] ending today, `default_days` when neither is given. Spans over 366 days
/// and reversed ranges are refused.
pub fn range(query: &RawQuery, default_days: i64) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let today = Utc::now().date_naive();
    let (from, to) = (day(query, "from")?, day(query, "to")?);
    if from.is_some() || to.is_some() {
        if query.get("days").is_some() {
            return Err(FieldError::new(
                "days",
                "conflicting_parameters",
                "give either days or from/to, not both",
            )
            .into());
        }
        let from = from.unwrap_or(today);
        let to = to.unwrap_or(today);
        if from > to {
            return Err(FieldError::new("from", "invalid_range", "must not be after to").into());
        }
        if (to - from).num_days() + 1 > MAX_DAYS {
            return Err(FieldError::new(
                "to",
                "range_too_long",
                format!("the range may span at most {MAX_DAYS} days"),
            )
            .into());
        }
        return Ok((from, to));
    }
    let days = int(
        query,
        &IntParam {
            default: default_days,
            ..DAYS
        },
    )?;
    Ok((today - chrono::Duration::days(days - 1), today))
}
