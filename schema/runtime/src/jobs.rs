//! Flush requests: how `aggregator flush` (and the admin API) ask every running
//! aggregator of a group to move everything it has counted into Postgres.
//!
//! 1. [`request_flush`] inserts a `jobs` row (kind `flush`, status `queued`); its
//!    `seq` numbers the request. The first aggregator flush that answers it makes it
//!    `running`.
//! 2. Each aggregator polls [`newest_flush_request`] and flushes all its partitions,
//!    writing the `seq` into their `flush_seq` in the same transaction as the counts
//!    (see the aggregator's `store::postgres::flush`), which also adds its rows to the job's result.
//! 3. That transaction completes every running flush job of the group whose `seq`
//!    every partition of the group has reached. [`wait_for_flush`] watches for it and reads the outcome.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, FromQueryResult};
use uuid::Uuid;

use crate::sql::stmt;
use viewpipe_schema::entities::{Job, JobRow, JobStatus};
use viewpipe_schema::Scope;

/// How a flush request ended, as `aggregator flush` prints it and
/// `POST /api/views/flush` answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlushReport {
    pub job: Uuid,
    /// `completed`, or `failed` with [`FlushReport::error`] naming the partitions
    /// that did not answer in time.
    pub status: JobStatus,
    /// Rows written by the flushes that answered.
    pub flushed: i64,
    pub error: Option<String>,
}

impl FlushReport {
    fn of(job: JobRow) -> Self {
        let flushed = job
            .result
            .as_ref()
            .and_then(|r| r.get("flushed"))
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        Self {
            job: job.id,
            status: job.status,
            flushed,
            error: job.error,
        }
    }

    pub fn is_completed(&self) -> bool {
        self.status == JobStatus::Completed
    }
}

#[derive(FromQueryResult)]
struct Created {
    id: Uuid,
    seq: i64,
}

#[derive(FromQueryResult)]
struct Newest {
    seq: i64,
}

#[derive(FromQueryResult)]
struct Partition {
    partition: i32,
}

/// Records a flush request for `group` and returns its job id and sequence number.
pub async fn request_flush(db: &impl ConnectionTrait, group: &str) -> Result<(Uuid, i64), DbErr> {
    let created = Created::find_by_statement(stmt(
        "INSERT INTO jobs (kind, consumer_group, status, result)
         VALUES ('flush', $1, 'queued', '{\"flushed\": 0}'::jsonb)
         RETURNING id, seq",
        vec![group.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
    Ok((created.id, created.seq))
}

/// The newest flush request of `group` still waiting for aggregators (0: none).
pub async fn newest_flush_request(db: &impl ConnectionTrait, group: &str) -> Result<i64, DbErr> {
    let newest = Newest::find_by_statement(stmt(
        "SELECT COALESCE(MAX(seq), 0)::int8 AS seq FROM jobs
         WHERE kind = 'flush' AND status IN ('queued', 'running') AND consumer_group = $1",
        vec![group.into()],
    ))
    .one(db)
    .await?;
    Ok(newest.map_or(0, |n| n.seq))
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
        vec![seq.into(), i64::try_from(rows).unwrap_or(i64::MAX).into()],
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

/// Reads a job (flush or backfill), as `GET /api/jobs/{id}` shows it.
pub async fn job(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<JobRow>, DbErr> {
    Job::find_by_id(id).one(db).await
}

/// Partitions of the group that have not answered request `seq` yet.
pub(crate) async fn unanswered_partitions(
    db: &impl ConnectionTrait,
    scope: &Scope,
    seq: i64,
) -> Result<Vec<i32>, DbErr> {
    let rows = Partition::find_by_statement(stmt(
        "SELECT partition FROM aggregator_partitions
         WHERE consumer_group = $1 AND topic = $2 AND flush_seq < $3
         ORDER BY partition",
        vec![
            scope.group.clone().into(),
            scope.topic.clone().into(),
            seq.into(),
        ],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.partition).collect())
}

/// Waits until flush request `id` (sequence `seq`) is finished or `timeout` passes;
/// on timeout the job is marked failed, naming the partitions that did not answer.
/// The one wait behind both `aggregator flush` and `POST /api/views/flush`.
pub async fn wait_for_flush(
    db: &impl ConnectionTrait,
    scope: &Scope,
    id: Uuid,
    seq: i64,
    timeout: Duration,
) -> Result<FlushReport, DbErr> {
    let deadline = Instant::now() + timeout;
    let read = || async {
        job(db, id)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("job {id}")))
    };
    loop {
        let state = read().await?;
        if !state.status.is_open() {
            return Ok(FlushReport::of(state));
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
            return Ok(FlushReport::of(read().await?));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
