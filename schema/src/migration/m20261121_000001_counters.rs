//! The contract's counter tables.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ViewCounterTotal {
    Table,
    Key,
    Namespace,
    EntityId,
    Path,
    Total,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ViewCounterDaily {
    Table,
    Key,
    Day,
    Count,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ViewCounterTotal::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ViewCounterTotal::Key)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ViewCounterTotal::Namespace)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ViewCounterTotal::EntityId).text())
                    .col(ColumnDef::new(ViewCounterTotal::Path).text())
                    .col(
                        ColumnDef::new(ViewCounterTotal::Total)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ViewCounterTotal::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ViewCounterTotal::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ViewCounterDaily::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ViewCounterDaily::Key).text().not_null())
                    .col(ColumnDef::new(ViewCounterDaily::Day).date().not_null())
                    .col(
                        ColumnDef::new(ViewCounterDaily::Count)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ViewCounterDaily::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ViewCounterDaily::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .index(
                        Index::create()
                            .name("view_counter_daily_key_day")
                            .col(ViewCounterDaily::Key)
                            .col(ViewCounterDaily::Day)
                            .unique(),
                    )
                    .to_owned(),
            )
            .await?;
        // Top-content queries scan one day range across keys.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("view_counter_daily_day")
                    .table(ViewCounterDaily::Table)
                    .col(ViewCounterDaily::Day)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ViewCounterDaily::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ViewCounterTotal::Table).to_owned())
            .await
    }
}
