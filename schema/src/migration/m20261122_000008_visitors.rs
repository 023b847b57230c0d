//! Unique visitors per key and UTC day, and the daily salts the ingest hashes
//! cookieless visitor ids with. Both tables are new, so the migration is additive:
//! binaries of the previous release run on it unchanged (they count views but keep
//! no visitors).
//!
//! - `view_visitors_daily`: a HyperLogLog sketch per key and day (`sketch`), merged
//!   by every flush, and its estimate (`visitors`) for reads.
//! - `visitor_salts`: one random salt per UTC day; deleted after two days, so that a
//!   visitor id can no longer be linked to the address and browser it came from.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE view_visitors_daily (
                 key TEXT NOT NULL,
                 day DATE NOT NULL,
                 visitors BIGINT NOT NULL,
                 sketch BYTEA NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (key, day)
             )",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX view_visitors_daily_day ON view_visitors_daily (day)")
            .await?;
        db.execute_unprepared(
            "CREATE TABLE visitor_salts (
                 day DATE PRIMARY KEY,
                 salt BYTEA NOT NULL,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE view_visitors_daily")
            .await?;
        db.execute_unprepared("DROP TABLE visitor_salts").await?;
        Ok(())
    }
}
