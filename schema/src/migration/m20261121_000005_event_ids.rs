//! Client-chosen `eventId`s, remembered for 24 h in Postgres so that they survive a
//! Redis loss and work in database-only mode. Each row names the message that first
//! carried the id (`topic:partition:offset`): that message counts, also when it is
//! consumed again after a crash; any other message with the id is a duplicate.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE view_event_ids (
                 key TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 first_message TEXT NOT NULL,
                 seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (key, event_id)
             )",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX view_event_ids_seen_at ON view_event_ids (seen_at)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE view_event_ids")
            .await?;
        Ok(())
    }
}
