//! Jobs (admin flushes now, backfills later), the flush request each partition has
//! answered, and an index for the top-content query (days across keys).
//!
//! A flush request is a `jobs` row of kind `flush`. Every aggregator of the group
//! polls for the newest open one, and writes its `seq` into `flush_seq` of the
//! partitions it flushes, in the same transaction as their counts. The job is done
//! once every partition of the group has answered it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS jobs (
                     id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                     seq bigserial NOT NULL UNIQUE,
                     kind text NOT NULL CHECK (kind IN ('flush', 'backfill')),
                     consumer_group text,
                     status text NOT NULL
                         CHECK (status IN ('queued', 'running', 'completed', 'failed')),
                     params jsonb NOT NULL DEFAULT '{}'::jsonb,
                     result jsonb,
                     error text,
                     created_at timestamptz NOT NULL DEFAULT now(),
                     finished_at timestamptz
                 );
                 CREATE INDEX IF NOT EXISTS jobs_open_flushes ON jobs (consumer_group, seq)
                     WHERE kind = 'flush' AND status IN ('queued', 'running');
                 CREATE INDEX IF NOT EXISTS view_counter_daily_by_day
                     ON view_counter_daily (day, key);
                 ALTER TABLE aggregator_partitions
                     ADD COLUMN IF NOT EXISTS flush_seq bigint NOT NULL DEFAULT 0;",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS view_counter_daily_by_day;
                 ALTER TABLE aggregator_partitions DROP COLUMN IF EXISTS flush_seq;
                 DROP TABLE IF EXISTS jobs;",
            )
            .await
            .map(|_| ())
    }
}
