//! Taking a partition over: its owner epoch, and where its counts and log stand.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::Scope;
use viewpipe_runtime::sql::stmt;

/// What an aggregator learns when it takes a partition over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    /// Where to resume; `None` when nothing was ever flushed for the partition.
    pub next_offset: Option<i64>,
    pub flushed_gen: i64,
    /// The new owner's epoch; flushes under an older epoch are refused.
    pub epoch: i64,
    /// The mark of the message at `next_offset - 1` (`None` for rows flushed before
    /// marks were kept).
    pub last_mark: Option<i64>,
    /// The first message counted from the log's beginning: `(offset, mark)`.
    pub anchor: Option<(i64, i64)>,
    /// A value no other claim has (random): what tells this claim's writes to Redis
    /// from another claim's given the same epoch by a Postgres restored to before
    /// this one (see `store::pending::Owner`).
    pub token: u128,
}

/// What a sealing flush records of the log it counted, so that a later owner can
/// tell whether the log it finds is still that log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogMarks {
    /// The mark of the message at `next_offset - 1`; 0 when unknown.
    pub last: i64,
    /// The first message counted from the log's beginning, `(offset, mark)`; kept
    /// once written, unless `new_log`.
    pub anchor: Option<(i64, i64)>,
    /// The log was found recreated and is counted from its beginning: its anchor
    /// replaces the old log's.
    pub new_log: bool,
}

/// A partition's row as [`claim`] leaves it.
#[derive(FromQueryResult)]
struct Claimed {
    next_offset: i64,
    flushed_gen: i64,
    epoch: i64,
    last_mark: Option<i64>,
    anchor_offset: Option<i64>,
    anchor_mark: Option<i64>,
}

#[derive(FromQueryResult)]
struct Epoch {
    epoch: i64,
}

/// Takes a partition over: bumps its epoch (creating the row on first use) and
/// returns where it stands.
pub async fn claim(
    db: &impl ConnectionTrait,
    scope: &Scope,
    partition: i32,
) -> Result<Claim, DbErr> {
    let row = Claimed::find_by_statement(stmt(
        "INSERT INTO aggregator_partitions AS a
             (consumer_group, topic, partition, next_offset, flushed_gen, epoch, updated_at)
         VALUES ($1, $2, $3, -1, 0, 1, now())
         ON CONFLICT (consumer_group, topic, partition)
         DO UPDATE SET epoch = a.epoch + 1, updated_at = now()
         RETURNING next_offset, flushed_gen, epoch, last_mark, anchor_offset, anchor_mark",
        vec![
            scope.group.clone().into(),
            scope.topic.clone().into(),
            partition.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("claim returned no row".into()))?;
    Ok(Claim {
        partition,
        next_offset: (row.next_offset >= 0).then_some(row.next_offset),
        flushed_gen: row.flushed_gen,
        epoch: row.epoch,
        last_mark: row.last_mark,
        anchor: row.anchor_offset.zip(row.anchor_mark),
        token: uuid::Uuid::new_v4().as_u128(),
    })
}

/// The epoch Postgres holds for a partition (0 without a row).
pub(crate) async fn partition_epoch(
    db: &impl ConnectionTrait,
    scope: &Scope,
    partition: i32,
) -> Result<i64, DbErr> {
    let row = Epoch::find_by_statement(stmt(
        "SELECT epoch FROM aggregator_partitions
         WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        vec![
            scope.group.clone().into(),
            scope.topic.clone().into(),
            partition.into(),
        ],
    ))
    .one(db)
    .await?;
    Ok(row.map_or(0, |r| r.epoch))
}
