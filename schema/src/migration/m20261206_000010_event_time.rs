//! The idempotency window in event time. Both columns are new and nullable, so the
//! migration is additive: binaries of the previous release neither write nor read
//! them, and rows they write without them are read by their `seen_at` instead.
//!
//! - `view_event_ids.occurred_at`: the `occurredAt` of the message that first carried
//!   the id. Guarantee 3 compares event times (two views with one id whose
//!   `occurredAt` lie within 24 h count once), however late either is consumed.
//! - `aggregator_partitions.event_clock`: the newest `occurredAt` (never past the
//!   flush's own time) of what has been flushed from the partition: how far its
//!   consumer has come in event time. An id row is forgotten only once the clock of
//!   its message's partition is well past it, so a lagging consumer or a held
//!   partition keeps its ids (`aggregator/src/event_ids.rs`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE view_event_ids ADD COLUMN occurred_at TIMESTAMPTZ")
            .await?;
        db.execute_unprepared(
            "CREATE INDEX view_event_ids_occurred_at ON view_event_ids (occurred_at)",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE aggregator_partitions ADD COLUMN event_clock TIMESTAMPTZ",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE aggregator_partitions DROP COLUMN event_clock")
            .await?;
        db.execute_unprepared("DROP INDEX view_event_ids_occurred_at")
            .await?;
        db.execute_unprepared("ALTER TABLE view_event_ids DROP COLUMN occurred_at")
            .await?;
        Ok(())
    }
}
