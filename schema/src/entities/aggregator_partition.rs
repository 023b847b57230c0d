//! `aggregator_partitions`: where each consumed partition stands in Postgres.
//!
//! `next_offset` is written in the same transaction as the counts it covers, so it is
//! the authoritative resume point (the Kafka group offset follows it). `epoch` grows
//! by one each time an aggregator takes the partition over; a flush only commits while
//! its epoch is still current, which fences a previous owner. `flushed_gen` numbers the
//! flushes of the partition: pending Redis counts tagged with a generation at or below
//! it are already in Postgres and readers ignore them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "aggregator_partitions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer_group: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub topic: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partition: i32,
    /// The next offset to consume; -1 while nothing was flushed yet.
    pub next_offset: i64,
    pub flushed_gen: i64,
    pub epoch: i64,
    /// The newest flush request (`jobs.seq`) this partition's counts were flushed for.
    pub flush_seq: i64,
    pub updated_at: DateTimeUtc,
    /// Mark of the message at `next_offset - 1` (see `aggregator/src/log_check.rs`).
    pub last_mark: Option<i64>,
    /// The first message counted from this log's beginning: its offset and mark.
    pub anchor_offset: Option<i64>,
    pub anchor_mark: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
