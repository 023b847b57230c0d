//! How the schema a database holds relates to the migrations this build knows, and
//! applying ours.
//!
//! The rule (`docs/upgrades.md`): a binary runs on a schema that is *ahead* of it
//! when every migration it does not know was recorded as additive in `schema_changes`
//! by the newer `aggregator migrate` that applied it. So during a rolling upgrade a
//! pod of the previous release that restarts keeps working; a breaking migration
//! makes older binaries stop with a clear error instead of writing what the new code
//! would misread.

use std::collections::HashSet;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, Statement};
use sea_orm_migration::MigratorTrait;

use crate::migration::{Change, Migrator, CHANGES};

/// Where the database stands relative to this build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// Exactly this build's migrations are applied.
    Current,
    /// Some of this build's migrations are not applied yet (named, in order).
    Behind { pending: Vec<String> },
    /// Everything of this build is applied, plus newer migrations that were all
    /// recorded as additive: this build may run.
    AheadAdditive { newer: Vec<String> },
    /// Newer migrations of which at least one is breaking or unrecorded: this build
    /// must not run.
    AheadBreaking { breaking: Vec<String> },
}

#[derive(FromQueryResult)]
struct Applied {
    version: String,
}

#[derive(FromQueryResult)]
struct Recorded {
    migration: String,
    additive: bool,
}

async fn table_exists(db: &DatabaseConnection, table: &str) -> Result<bool, DbErr> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT to_regclass($1) IS NOT NULL AS present",
            [table.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<bool>("", "present")?,
        None => false,
    })
}

/// Reads the applied migrations and classifies them against [`CHANGES`].
pub async fn state(db: &DatabaseConnection) -> Result<SchemaState, DbErr> {
    let backend = db.get_database_backend();
    let applied: Vec<String> = if table_exists(db, "seaql_migrations").await? {
        Applied::find_by_statement(Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .all(db)
        .await?
        .into_iter()
        .map(|a| a.version)
        .collect()
    } else {
        Vec::new()
    };
    let applied_set: HashSet<&str> = applied.iter().map(String::as_str).collect();
    let known: HashSet<&str> = CHANGES.iter().map(|(name, _)| *name).collect();

    let pending: Vec<String> = CHANGES
        .iter()
        .filter(|(name, _)| !applied_set.contains(name))
        .map(|(name, _)| name.to_string())
        .collect();
    if !pending.is_empty() {
        return Ok(SchemaState::Behind { pending });
    }
    let newer: Vec<String> = applied
        .iter()
        .filter(|v| !known.contains(v.as_str()))
        .cloned()
        .collect();
    if newer.is_empty() {
        return Ok(SchemaState::Current);
    }
    let recorded = Recorded::find_by_statement(Statement::from_sql_and_values(
        backend,
        "SELECT migration, additive FROM schema_changes WHERE migration = ANY($1)",
        [newer.clone().into()],
    ))
    .all(db)
    .await?;
    let additive: HashSet<&str> = recorded
        .iter()
        .filter(|r| r.additive)
        .map(|r| r.migration.as_str())
        .collect();
    let breaking: Vec<String> = newer
        .iter()
        .filter(|v| !additive.contains(v.as_str()))
        .cloned()
        .collect();
    Ok(if breaking.is_empty() {
        SchemaState::AheadAdditive { newer }
    } else {
        SchemaState::AheadBreaking { breaking }
    })
}

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Migrated {
    /// These migrations were applied.
    Applied(Vec<String>),
    /// Nothing to apply; the schema may be ahead of this build (newer additive
    /// migrations, named).
    Nothing { newer: Vec<String> },
}

/// Applies this build's pending migrations and records every known migration's kind
/// in `schema_changes`. A schema ahead of this build is left alone when its newer
/// migrations are additive, and refused otherwise.
pub async fn migrate(db: &DatabaseConnection) -> Result<Migrated, DbErr> {
    let outcome = match state(db).await? {
        SchemaState::Current => Migrated::Nothing { newer: Vec::new() },
        SchemaState::AheadAdditive { newer } => return Ok(Migrated::Nothing { newer }),
        SchemaState::AheadBreaking { breaking } => {
            return Err(DbErr::Custom(format!(
                "the schema has newer breaking migrations this build does not know ({}): run a newer `aggregator migrate`",
                breaking.join(", ")
            )))
        }
        SchemaState::Behind { pending } => {
            Migrator::up(db, None).await?;
            Migrated::Applied(pending)
        }
    };
    record_changes(db).await?;
    Ok(outcome)
}

/// Writes each known migration's kind; a newer build's record is never overwritten.
async fn record_changes(db: &DatabaseConnection) -> Result<(), DbErr> {
    let names: Vec<String> = CHANGES.iter().map(|(n, _)| n.to_string()).collect();
    let additive: Vec<bool> = CHANGES
        .iter()
        .map(|(_, kind)| *kind == Change::Additive)
        .collect();
    db.execute(Statement::from_sql_and_values(
        db.get_database_backend(),
        "INSERT INTO schema_changes (migration, additive)
         SELECT * FROM unnest($1::text[], $2::bool[])
         ON CONFLICT (migration) DO NOTHING",
        [names.into(), additive.into()],
    ))
    .await?;
    Ok(())
}
