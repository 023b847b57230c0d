//! Room on each page of the counter tables, so that adding to an existing row is a
//! heap-only update (HOT): `total`, `count` and `updated_at` are in no index, and with
//! free space on the page Postgres rewrites the row without touching the indexes.
//! Flushes update the same hot rows again and again; this roughly halves their cost.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE view_counter_total SET (fillfactor = 70)")
            .await?;
        db.execute_unprepared("ALTER TABLE view_counter_daily SET (fillfactor = 70)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE view_counter_total RESET (fillfactor)")
            .await?;
        db.execute_unprepared("ALTER TABLE view_counter_daily RESET (fillfactor)")
            .await?;
        Ok(())
    }
}
