//! The schema's migrations, applied in order by `aggregator migrate`.

use sea_orm_migration::prelude::*;

mod m20261121_000001_counters;
mod m20261121_000002_aggregator_partitions;
mod m20261121_000003_jobs;
mod m20261121_000004_fillfactor;
mod m20261121_000005_event_ids;
mod m20261121_000006_log_marks;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_counters::Migration),
            Box::new(m20261121_000002_aggregator_partitions::Migration),
            Box::new(m20261121_000003_jobs::Migration),
            Box::new(m20261121_000004_fillfactor::Migration),
            Box::new(m20261121_000005_event_ids::Migration),
            Box::new(m20261121_000006_log_marks::Migration),
        ]
    }
}
