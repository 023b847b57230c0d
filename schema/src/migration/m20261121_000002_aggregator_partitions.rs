//! The aggregator's per-partition position, epoch and flush generation.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AggregatorPartitions {
    Table,
    ConsumerGroup,
    Topic,
    Partition,
    NextOffset,
    FlushedGen,
    Epoch,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AggregatorPartitions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AggregatorPartitions::ConsumerGroup)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::Topic)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::Partition)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::NextOffset)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::FlushedGen)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::Epoch)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AggregatorPartitions::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(AggregatorPartitions::ConsumerGroup)
                            .col(AggregatorPartitions::Topic)
                            .col(AggregatorPartitions::Partition),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AggregatorPartitions::Table).to_owned())
            .await
    }
}
