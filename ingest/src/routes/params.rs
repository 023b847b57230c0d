//! Query parameters shared by the read endpoints, validated into the error model.

use chrono::{NaiveDate, Utc};

use viewpipe_event::FieldError;

use crate::error::ApiError;
use crate::extract::RawQuery;

/// Most days a daily or top query may span.
pub const MAX_DAYS: i64 = 366;

pub fn day(query: &RawQuery, field: &'static str) -> Result<Option<NaiveDate>, ApiError> {
    query
        .get(field)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                FieldError::new(field, "invalid_value", "must be a date as YYYY-MM-DD").into()
            })
        })
        .transpose()
}

/// An integer parameter in `min..=max`, `default` when absent.
pub fn int(
    query: &RawQuery,
    field: &'static str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, ApiError> {
    let Some(text) = query.get(field) else {
        return Ok(default);
    };
    match text.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            field,
            "invalid_value",
            format!("must be a whole number from {min} to {max}"),
        )
        .into()),
    }
}

/// A `from..=to` UTC day range: both given, or `days` (1..=366, default
/// `default_days`) ending today. Spans over 366 days and reversed ranges are refused.
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
    let days = int(query, "days", 1, MAX_DAYS, default_days)?;
    Ok((today - chrono::Duration::days(days - 1), today))
}
