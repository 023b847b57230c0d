//! Which log a partition's position belongs to. An offset alone cannot tell a log
//! that lost its tail (an unclean leader election) from a topic deleted and created
//! again, nor notice a recreated log that already grew past the position. Each flush
//! therefore records a mark (a hash of timestamp, key and payload) of the last message
//! it counted, and once per log the mark of the first one; a new owner reads both back
//! from the log before it resumes (`aggregator/src/log_check/`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE aggregator_partitions
                     ADD COLUMN last_mark BIGINT,
                     ADD COLUMN anchor_offset BIGINT,
                     ADD COLUMN anchor_mark BIGINT",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE aggregator_partitions
                     DROP COLUMN last_mark,
                     DROP COLUMN anchor_offset,
                     DROP COLUMN anchor_mark",
            )
            .await?;
        Ok(())
    }
}
