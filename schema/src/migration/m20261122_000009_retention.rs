//! Retention (`RETAIN_DAILY_DAYS`, `RETAIN_JOBS_DAYS`): how far daily rows have been
//! pruned, and an index for finding old finished jobs. Both are new, so the
//! migration is additive: binaries of the previous release never prune and never
//! read the mark.
//!
//! - `daily_retention`: one row; `pruned_before` is the first day whose daily rows
//!   are all still there (`NULL`: nothing pruned yet). A backfill rebuilds a month by
//!   moving totals by (replayed − existing daily rows), so it must refuse a month
//!   that starts before this day: its views would be added to totals a second time.
//!   The pruner raises the mark *before* it deletes, and a rebuild reads it under a
//!   share lock in its own transaction (`aggregator/src/store/retention.rs`).
//! - `jobs_finished`: the finished jobs by age, for the pruner's batches.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE daily_retention (
                 only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
                 pruned_before DATE,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
        db.execute_unprepared("INSERT INTO daily_retention (only_row) VALUES (true)")
            .await?;
        db.execute_unprepared(
            "CREATE INDEX jobs_finished ON jobs (finished_at)
                 WHERE status IN ('completed', 'failed')",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX jobs_finished").await?;
        db.execute_unprepared("DROP TABLE daily_retention").await?;
        Ok(())
    }
}
