//! `MAX_EVENT_AGE`: how far in the past a view's `occurredAt` may lie when it comes
//! through the API.
//!
//! The live topic carries today's views; history belongs on the replay topic, where
//! `aggregator backfill` rebuilds the months it touches. A view stamped months or
//! centuries back and sent to the live API would be counted into a day that no
//! rebuild expects to change, so the API refuses it and says where history goes.
//! `ingest publish` loads history and does not apply this limit.

use chrono::{DateTime, Duration, Utc};

use viewpipe_schema::{FieldError, View};

/// The longest `MAX_EVENT_AGE` may be: a hundred years, so that every setting keeps
/// year-0001 timestamps out and `now - age` stays far from chrono's range ends.
const MAX_DAYS: i64 = 36500;

/// `MAX_EVENT_AGE`: a whole number with its unit, `d`, `h`, `m` or `s` (`30d`,
/// `72h`), from one minute to a hundred years.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxEventAge {
    age: Duration,
    /// The setting as given, for messages and the OpenAPI document.
    amount: i64,
    unit: char,
}

impl Default for MaxEventAge {
    fn default() -> Self {
        Self {
            age: Duration::days(30),
            amount: 30,
            unit: 'd',
        }
    }
}

impl std::str::FromStr for MaxEventAge {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || {
            format!(
                "{s:?} is not an age: expected a whole number and d, h, m or s, e.g. 30d or 72h"
            )
        };
        let unit = text.chars().last().ok_or_else(bad)?;
        let amount: i64 = text[..text.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| bad())?;
        let age = match unit {
            'd' => Duration::try_days(amount),
            'h' => Duration::try_hours(amount),
            'm' => Duration::try_minutes(amount),
            's' => Duration::try_seconds(amount),
            _ => return Err(bad()),
        }
        .ok_or_else(bad)?;
        if age < Duration::minutes(1) || age > Duration::days(MAX_DAYS) {
            return Err(format!(
                "{s:?}: MAX_EVENT_AGE must be from 1m to {MAX_DAYS}d (older history goes through `ingest publish` and `aggregator backfill`)"
            ));
        }
        Ok(Self { age, amount, unit })
    }
}

impl std::fmt::Display for MaxEventAge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.amount, self.unit)
    }
}

impl MaxEventAge {
    /// Refuses a view whose `occurredAt` is older than `now` minus the age (`too_old`).
    /// A view without `occurredAt` happened `now`.
    pub fn check(&self, input: &View<'_>, now: DateTime<Utc>) -> Result<(), FieldError> {
        match input.occurred_at {
            Some(at) if at < now - self.age => Err(FieldError::new(
                "occurredAt",
                "too_old",
                format!(
                    "must not be more than {self} in the past (MAX_EVENT_AGE); load older history \
                     with `ingest publish --topic views.replay` and `aggregator backfill`"
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(s: &str) -> MaxEventAge {
        s.parse().expect("age")
    }

    fn at(occurred_at: &str) -> View<'static> {
        View {
            content_type: "resource".into(),
            content_id: "a".into(),
            path: None,
            session_id: None,
            event_id: None,
            occurred_at: Some(occurred_at.parse().expect("timestamp")),
            visitor_id: None,
            received_at: None,
        }
    }

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!(age("30d"), MaxEventAge::default());
        assert_eq!(age("72h").age, Duration::hours(72));
        assert_eq!(age(" 90m ").to_string(), "90m");
        assert_eq!(age("36500d").age, Duration::days(36500));
        for bad in [
            "",
            "30",
            "d",
            "30w",
            "-1d",
            "1.5d",
            "30s",
            "36501d",
            "99999999999999d",
        ] {
            let err = bad.parse::<MaxEventAge>().expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn views_older_than_the_age_are_refused_and_told_where_history_goes() {
        let now: DateTime<Utc> = "2026-11-21T10:00:00Z".parse().expect("now");
        let limit = MaxEventAge::default();
        assert!(limit.check(&at("2026-10-22T10:00:00Z"), now).is_ok());
        for old in ["2026-10-22T09:59:59Z", "0001-01-01T00:00:00Z"] {
            let err = limit.check(&at(old), now).expect_err(old);
            assert_eq!((err.field, err.code), ("occurredAt", "too_old"));
            assert!(err.message.contains("30d"), "{err}");
            assert!(err.message.contains("aggregator backfill"), "{err}");
        }
        let mut now_view = at("2026-11-21T10:00:00Z");
        now_view.occurred_at = None;
        assert!(limit.check(&now_view, now).is_ok(), "no occurredAt: now");
    }
}
