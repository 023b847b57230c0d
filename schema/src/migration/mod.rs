//! The schema's migrations, applied in order by `aggregator migrate`.
//!
//! Each one is also listed in [`CHANGES`] as additive or breaking: the rule that lets
//! the previous release's binaries keep running on a schema one migration ahead of
//! them (see [`crate::version`] and `docs/upgrades.md`).

use sea_orm_migration::prelude::*;

mod m20261121_000001_counters;
mod m20261121_000002_aggregator_partitions;
mod m20261121_000003_jobs;
mod m20261121_000004_fillfactor;
mod m20261121_000005_event_ids;
mod m20261121_000006_log_marks;
mod m20261122_000007_schema_changes;
mod m20261122_000008_visitors;
mod m20261122_000009_retention;
mod m20261206_000010_event_time;

pub(crate) struct Migrator;

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
            Box::new(m20261122_000007_schema_changes::Migration),
            Box::new(m20261122_000008_visitors::Migration),
            Box::new(m20261122_000009_retention::Migration),
            Box::new(m20261206_000010_event_time::Migration),
        ]
    }
}

/// Whether binaries that do not know a migration may run on a schema that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Only adds: new tables, new nullable (or defaulted) columns, new indexes. Code
    /// that never heard of it reads and writes as before.
    Additive,
    /// Drops, renames or retypes something, or adds a constraint older code could
    /// break: binaries without it must stop before it is applied.
    Breaking,
}

/// Every migration by name, with its kind, in the order they are applied. A test
/// checks that this lists exactly [`Migrator::migrations`].
pub(crate) const CHANGES: &[(&str, Change)] = &[
    ("m20261121_000001_counters", Change::Breaking),
    ("m20261121_000002_aggregator_partitions", Change::Breaking),
    ("m20261121_000003_jobs", Change::Breaking),
    ("m20261121_000004_fillfactor", Change::Additive),
    ("m20261121_000005_event_ids", Change::Breaking),
    ("m20261121_000006_log_marks", Change::Additive),
    ("m20261122_000007_schema_changes", Change::Additive),
    ("m20261122_000008_visitors", Change::Additive),
    ("m20261122_000009_retention", Change::Additive),
    ("m20261206_000010_event_time", Change::Additive),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_has_a_kind_in_order() {
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let listed: Vec<&str> = CHANGES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, listed);
    }
}
