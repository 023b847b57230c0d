//! Client-chosen `eventId`s in Postgres (`view_event_ids`), remembered for 24 h.
//!
//! An id is decided once, by the first message that carries it for its key: the row
//! names that message (`topic:partition:offset`). The message counts, also when it is
//! consumed again after a crash (the row still names it); every other message with
//! the id is a duplicate. Deciding is its own statement, before counting: a decided
//! id whose count never reached Postgres is counted when its message is consumed
//! again, and never by another message.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use crate::sql::stmt;

/// How long an id is remembered.
pub const RETENTION: &str = "24 hours";

/// One id to decide.
pub struct Sighting<'a> {
    pub key: &'a str,
    pub event_id: &'a str,
    /// The message carrying it: `topic:partition:offset`.
    pub message: String,
}

/// Which message an id was decided for.
#[derive(FromQueryResult)]
struct Decided {
    key: String,
    event_id: String,
    first_message: String,
}

/// For each sighting: true when its message is the one that counts for the id (the
/// first within 24 h, or that first message again).
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
    // Insert the first sighting of each (key, id) in key order (no deadlocks between
    // aggregators), taking over rows older than the retention.
    db.execute(stmt(
        &format!(
            "INSERT INTO view_event_ids AS v (key, event_id, first_message, seen_at)
             SELECT DISTINCT ON (key, event_id) key, event_id, message, now()
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
                  AS u(key, event_id, message, n)
             ORDER BY key, event_id, n
             ON CONFLICT (key, event_id) DO UPDATE
                 SET first_message = EXCLUDED.first_message, seen_at = now()
                 WHERE v.seen_at < now() - interval '{RETENTION}'"
        ),
        vec![keys.clone().into(), ids.clone().into(), messages.into()],
    ))
    .await?;
    // A new statement sees every row, also one another aggregator just committed.
    let rows = Decided::find_by_statement(stmt(
        "SELECT v.key, v.event_id, v.first_message FROM view_event_ids v
         JOIN unnest($1::text[], $2::text[]) AS u(key, event_id)
           ON v.key = u.key AND v.event_id = u.event_id",
        vec![keys.into(), ids.into()],
    ))
    .all(db)
    .await?;
    let first: HashMap<(String, String), String> = rows
        .into_iter()
        .map(|r| ((r.key, r.event_id), r.first_message))
        .collect();
    Ok(sightings
        .iter()
        .map(|s| {
            first
                .get(&(s.key.to_owned(), s.event_id.to_owned()))
                .is_none_or(|m| *m == s.message)
        })
        .collect())
}

/// Forgets ids older than the retention, at most `limit` of them; returns how many.
pub async fn forget_expired(db: &impl ConnectionTrait, limit: i64) -> Result<u64, DbErr> {
    let done = db
        .execute(stmt(
            &format!(
                "DELETE FROM view_event_ids WHERE ctid IN (
                     SELECT ctid FROM view_event_ids
                     WHERE seen_at < now() - interval '{RETENTION}' LIMIT $1)"
            ),
            vec![limit.into()],
        ))
        .await?;
    Ok(done.rows_affected())
}
