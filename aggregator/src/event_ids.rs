//! Client-chosen `eventId`s in Postgres (`view_event_ids`): guarantee 3, in event
//! time.
//!
//! An id is decided once, by the first message that carries it for its key: the row
//! names that message (`topic:partition:offset`) and its `occurredAt`. That message
//! counts, also when it is consumed again after a crash (the row still names it).
//! Any other message with the id is a duplicate when its `occurredAt` lies within
//! [`WINDOW`] of the row's, however late it is consumed: the window is measured in
//! event time, not at consume time, so a lagging consumer, a held partition or a
//! Postgres restore cannot let a retry through. A message further away in event time
//! is another view that reused the id, and counts. A row is never taken over, so a
//! verdict never changes while the row exists: deciding is its own statement, before
//! counting, and a decided id whose count never reached Postgres is decided the same
//! way when its message is consumed again.
//!
//! Rows are forgotten ([`forget_expired`]) only when no message that could be judged
//! by them can still come: the message that set the row is flushed (below its
//! partition's `next_offset`), and that partition's event clock (the newest
//! `occurredAt` flushed from it) is more than [`WINDOW`] + [`LATENESS`] past the
//! row's `occurredAt`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use viewpipe_runtime::sql::stmt;

/// Two sightings of an id whose `occurredAt` lie within this of each other are one
/// view (guarantee 3).
pub const WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// How far behind the newest events consumed a retry's `occurredAt` may lie and
/// still be de-duplicated: a retry sent days later with its original `occurredAt`
/// (an app that was offline), or produced late by another application.
pub const LATENESS: chrono::Duration = chrono::Duration::hours(72);

/// One id to decide.
pub struct Sighting<'a> {
    pub key: &'a str,
    pub event_id: &'a str,
    /// The message carrying it: `topic:partition:offset`.
    pub message: String,
    pub occurred_at: DateTime<Utc>,
}

/// Which message an id was decided for, and when that view happened.
#[derive(FromQueryResult)]
struct Decided {
    key: String,
    event_id: String,
    first_message: String,
    occurred_at: DateTime<Utc>,
}

/// For each sighting: true when its message counts for the id (it is the first
/// sighting, or that first message again, or more than [`WINDOW`] away from it in
/// event time).
pub async fn first_sightings(
    db: &impl ConnectionTrait,
    sightings: &[Sighting<'_>],
) -> Result<Vec<bool>, DbErr> {
    if sightings.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = sightings.iter().map(|s| s.key.to_owned()).collect();
    let ids: Vec<String> = sightings.iter().map(|s| s.event_id.to_owned()).collect();
    let messages: Vec<String> = sightings.iter().map(|s| s.message.clone()).collect();
    let times: Vec<DateTime<Utc>> = sightings.iter().map(|s| s.occurred_at).collect();
    // Insert the first sighting of each (key, id) in key order (no deadlocks between
    // aggregators); an id already decided keeps its row.
    db.execute(stmt(
        "INSERT INTO view_event_ids AS v (key, event_id, first_message, seen_at, occurred_at)
         SELECT DISTINCT ON (key, event_id) key, event_id, message, now(), occurred_at
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY
              AS u(key, event_id, message, occurred_at, n)
         ORDER BY key, event_id, n
         ON CONFLICT (key, event_id) DO NOTHING",
        vec![
            keys.clone().into(),
            ids.clone().into(),
            messages.into(),
            times.into(),
        ],
    ))
    .await?;
    // A new statement sees every row, also one another aggregator just committed.
    // Rows an older release wrote have no occurred_at: their seen_at stands in.
    let rows = Decided::find_by_statement(stmt(
        "SELECT v.key, v.event_id, v.first_message,
                COALESCE(v.occurred_at, v.seen_at) AS occurred_at
         FROM view_event_ids v
         JOIN unnest($1::text[], $2::text[]) AS u(key, event_id)
           ON v.key = u.key AND v.event_id = u.event_id",
        vec![keys.into(), ids.into()],
    ))
    .all(db)
    .await?;
    let first: HashMap<(String, String), (String, DateTime<Utc>)> = rows
        .into_iter()
        .map(|r| ((r.key, r.event_id), (r.first_message, r.occurred_at)))
        .collect();
    Ok(sightings
        .iter()
        .map(|s| {
            first
                .get(&(s.key.to_owned(), s.event_id.to_owned()))
                .is_none_or(|(message, at)| counts(s, message, *at))
        })
        .collect())
}

/// The verdict on a sighting of an id whose row names `first` at `first_at`.
fn counts(s: &Sighting<'_>, first: &str, first_at: DateTime<Utc>) -> bool {
    s.message == first || (s.occurred_at - first_at).abs() > WINDOW
}

/// Forgets at most `limit` ids that nothing can be judged by any more (see the
/// module's doc); returns how many.
pub async fn forget_expired(db: &impl ConnectionTrait, limit: i64) -> Result<u64, DbErr> {
    let keep = (WINDOW + LATENESS).num_seconds();
    let done = db
        .execute(stmt(
            "DELETE FROM view_event_ids WHERE ctid IN (
                 SELECT e.ctid FROM view_event_ids e
                 WHERE (e.occurred_at < now() - make_interval(secs => $2)
                        OR (e.occurred_at IS NULL AND e.seen_at < now() - make_interval(secs => $2)))
                   AND NOT EXISTS (
                       SELECT 1 FROM aggregator_partitions a
                       WHERE a.topic = split_part(e.first_message, ':', 1)
                         AND a.partition::text = split_part(e.first_message, ':', 2)
                         AND (a.next_offset < 0
                              OR a.next_offset <= split_part(e.first_message, ':', 3)::int8
                              OR COALESCE(a.event_clock, '-infinity')
                                 < COALESCE(e.occurred_at, e.seen_at) + make_interval(secs => $2)))
                 LIMIT $1)",
            vec![limit.into(), keep.into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::hours(hour)
    }

    fn sighting(message: &str, hour: i64) -> Sighting<'static> {
        Sighting {
            key: "resource:a",
            event_id: "e1",
            message: message.to_owned(),
            occurred_at: at(hour),
        }
    }

    #[test]
    fn the_window_is_in_event_time_and_the_first_message_always_counts() {
        // The first message, consumed again: counts, whenever.
        assert!(counts(&sighting("views:0:5", 100), "views:0:5", at(100)));
        // A retry with the same occurredAt, however late consumed: a duplicate.
        assert!(!counts(&sighting("views:0:9", 100), "views:0:5", at(100)));
        // Within 24 h either side: a duplicate; beyond: another view.
        assert!(!counts(&sighting("views:0:9", 124), "views:0:5", at(100)));
        assert!(!counts(&sighting("views:0:9", 76), "views:0:5", at(100)));
        assert!(counts(&sighting("views:0:9", 125), "views:0:5", at(100)));
        assert!(counts(&sighting("views:0:9", 75), "views:0:5", at(100)));
    }
}
