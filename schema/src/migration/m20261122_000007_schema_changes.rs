//! What each applied migration changed, as far as older binaries are concerned: a
//! binary that finds migrations it does not know runs only when every one of them is
//! recorded here as additive (see [`crate::version`] and `docs/upgrades.md`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE schema_changes (
                     migration TEXT PRIMARY KEY,
                     additive BOOLEAN NOT NULL,
                     recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE schema_changes")
            .await?;
        Ok(())
    }
}
