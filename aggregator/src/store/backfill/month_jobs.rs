//! A month's job row (kind `backfill`): created per month and run, updated with the
//! run's stage, and read back to decide whether another run already rebuilt the
//! month and where the month's events began in the replay.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use uuid::Uuid;

use super::Month;
use viewpipe_runtime::sql::stmt;
use viewpipe_schema::entities::JobStatus;

#[derive(FromQueryResult)]
struct JobId {
    id: Uuid,
}

#[derive(FromQueryResult)]
struct FirstOffsets {
    first_offsets: Option<serde_json::Value>,
}

/// Creates a month's job row (kind `backfill`, status `queued`).
pub async fn create_job(
    db: &impl ConnectionTrait,
    month: Month,
    topic: &str,
) -> Result<Uuid, DbErr> {
    let created = JobId::find_by_statement(stmt(
        "INSERT INTO jobs (kind, status, params)
         VALUES ('backfill', 'queued', jsonb_build_object('month', $1::text, 'topic', $2::text))
         RETURNING id",
        vec![month.to_string().into(), topic.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
    Ok(created.id)
}

/// Records a job's state: `running` with progress, or its outcome
/// (`completed`/`failed`, which also sets `finished_at`).
pub async fn update_job(
    db: &impl ConnectionTrait,
    id: Uuid,
    status: JobStatus,
    result: serde_json::Value,
    error: Option<&str>,
) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE jobs SET status = $2, result = $3, error = $4,
             finished_at = CASE WHEN $2 IN ('completed', 'failed') THEN now() END
         WHERE id = $1",
        vec![
            id.into(),
            status.as_str().into(),
            result.into(),
            error.map(str::to_owned).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Another rebuild of `month` from the same topic that completed after job `ours`
/// was created, and read the replay at least as far as ours on every partition ours
/// read: it counted every event ours would, so ours may skip the month.
///
/// How far a run read is `result.readTo` (partition → the offset after the last
/// message read), recorded by the run before it asks and kept in its final result.
/// A rebuild that finished meanwhile but read less (events were published between
/// the two reads) does not count: ours rebuilds the month again.
pub async fn rebuilt_since(
    db: &impl ConnectionTrait,
    month: Month,
    ours: Uuid,
) -> Result<Option<Uuid>, DbErr> {
    let newer = JobId::find_by_statement(stmt(
        "SELECT j.id FROM jobs j, jobs o
         WHERE o.id = $2 AND j.kind = 'backfill' AND j.id <> o.id
           AND j.params->>'month' = $1 AND j.params->>'topic' = o.params->>'topic'
           AND j.status = 'completed' AND j.result->>'outcome' = 'rebuilt'
           AND j.finished_at > o.created_at
           AND NOT EXISTS (
               SELECT 1 FROM jsonb_each_text(CASE
                   WHEN jsonb_typeof(o.result->'readTo') = 'object' THEN o.result->'readTo'
                   ELSE '{}'::jsonb END) AS r(partition, read_to)
               WHERE COALESCE((j.result->'readTo'->>r.partition)::int8, -1)
                     < r.read_to::int8)
         ORDER BY j.finished_at DESC LIMIT 1",
        vec![month.to_string().into(), ours.into()],
    ))
    .one(db)
    .await?;
    Ok(newer.map(|j| j.id))
}

/// Where the month's events began in each partition of `topic`, as the newest
/// completed rebuild of it found (`result.firstOffsets`: partition → offset).
pub(crate) async fn known_starts(
    db: &impl ConnectionTrait,
    month: Month,
    topic: &str,
) -> Result<Option<BTreeMap<i32, i64>>, DbErr> {
    let row = FirstOffsets::find_by_statement(stmt(
        "SELECT result->'firstOffsets' AS first_offsets FROM jobs
         WHERE kind = 'backfill' AND status = 'completed' AND params->>'month' = $1
           AND params->>'topic' = $2 AND result->>'outcome' = 'rebuilt'
           AND result ? 'firstOffsets'
         ORDER BY finished_at DESC LIMIT 1",
        vec![month.to_string().into(), topic.into()],
    ))
    .one(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let starts = row
        .first_offsets
        .and_then(|v| serde_json::from_value::<BTreeMap<String, i64>>(v).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(p, o)| p.parse().ok().map(|p| (p, o)))
                .collect()
        });
    Ok(starts)
}
