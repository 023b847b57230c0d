//! Flush requests: how `aggregator flush` (and the admin API) ask every running
//! aggregator of a group to move everything it has counted into Postgres.
//!
//! 1. [`request_flush`] inserts a `jobs` row (kind `flush`, status `queued`); its
//!    `seq` numbers the request. The first aggregator flush that answers it makes it
//!    `running`.
//! 2. Each aggregator polls [`newest_flush_request`] and flushes all its partitions,
//!    writing the `seq` into their `flush_seq` in the same transaction as the counts
//!    (see [`crate::postgres::flush`]), which also adds its rows to the job's result.
//! 3. That transaction completes every running flush job of the group whose `seq`
//!    every partition of the group has reached. [`wait_for_job`] watches for it.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};
use uuid::Uuid;

use crate::postgres::Scope;

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A job row as the requester sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobState {
    pub id: Uuid,
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl JobState {
    /// Queued or running.
    pub fn is_open(&self) -> bool {
        self.status == "queued" || self.status == "running"
    }
}

/// Records a flush request for `group` and returns its job id and sequence number.
pub async fn request_flush(db: &impl ConnectionTrait, group: &str) -> Result<(Uuid, i64), DbErr> {
    let row = db
        .query_one(stmt(
            "INSERT INTO jobs (kind, consumer_group, status, result)
             VALUES ('flush', $1, 'queued', '{\"flushed\": 0}'::jsonb)
             RETURNING id, seq",
            vec![group.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?))
}

/// The newest flush request of `group` still waiting for aggregators (0: none).
pub async fn newest_flush_request(db: &impl ConnectionTrait, group: &str) -> Result<i64, DbErr> {
    let row = db
        .query_one(stmt(
            "SELECT COALESCE(MAX(seq), 0)::int8 FROM jobs
             WHERE kind = 'flush' AND status IN ('queued', 'running') AND consumer_group = $1",
            vec![group.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("max returned no row".into()))?;
    row.try_get_by_index(0)
}

/// Inside a flush transaction: credits `rows` to request `seq` and completes every
/// running flush job of the group that all its partitions have answered.
pub async fn answer_flush(
    txn: &impl ConnectionTrait,
    scope: &Scope,
    seq: i64,
    rows: u64,
) -> Result<(), DbErr> {
    txn.execute(stmt(
        "UPDATE jobs
         SET status = 'running',
             result = jsonb_build_object('flushed',
                 COALESCE((result->>'flushed')::int8, 0) + $2)
         WHERE seq = $1 AND status IN ('queued', 'running')",
        vec![seq.into(), (rows as i64).into()],
    ))
    .await?;
    txn.execute(stmt(
        "UPDATE jobs SET status = 'completed', finished_at = now()
         WHERE kind = 'flush' AND status IN ('queued', 'running') AND consumer_group = $1
           AND seq <= (SELECT MIN(flush_seq) FROM aggregator_partitions
                       WHERE consumer_group = $1 AND topic = $2)",
        vec![scope.group.clone().into(), scope.topic.clone().into()],
    ))
    .await?;
    Ok(())
}

/// Reads a job.
pub async fn job(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<JobState>, DbErr> {
    let Some(row) = db
        .query_one(stmt(
            "SELECT status, result, error FROM jobs WHERE id = $1",
            vec![id.into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(JobState {
        id,
        status: row.try_get_by_index(0)?,
        result: row.try_get_by_index(1)?,
        error: row.try_get_by_index(2)?,
    }))
}

/// Partitions of the group that have not answered request `seq` yet.
pub async fn unanswered_partitions(
    db: &impl ConnectionTrait,
    scope: &Scope,
    seq: i64,
) -> Result<Vec<i32>, DbErr> {
    let rows = db
        .query_all(stmt(
            "SELECT partition FROM aggregator_partitions
             WHERE consumer_group = $1 AND topic = $2 AND flush_seq < $3
             ORDER BY partition",
            vec![
                scope.group.clone().into(),
                scope.topic.clone().into(),
                seq.into(),
            ],
        ))
        .await?;
    rows.iter().map(|r| r.try_get_by_index(0)).collect()
}

/// Waits until the job is finished or `timeout` passes; on timeout the job is
/// marked failed, naming the partitions that did not answer.
pub async fn wait_for_flush(
    db: &impl ConnectionTrait,
    scope: &Scope,
    id: Uuid,
    seq: i64,
    timeout: Duration,
) -> Result<JobState, DbErr> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = job(db, id)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("job {id}")))?;
        if !state.is_open() {
            return Ok(state);
        }
        if Instant::now() >= deadline {
            let missing = unanswered_partitions(db, scope, seq).await?;
            let error = format!(
                "partitions {missing:?} of topic {} were not flushed within {} s; is an aggregator of group {} running and consuming them?",
                scope.topic,
                timeout.as_secs(),
                scope.group
            );
            db.execute(stmt(
                "UPDATE jobs SET status = 'failed', error = $2, finished_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')",
                vec![id.into(), error.into()],
            ))
            .await?;
            return job(db, id)
                .await?
                .ok_or_else(|| DbErr::RecordNotFound(format!("job {id}")));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
