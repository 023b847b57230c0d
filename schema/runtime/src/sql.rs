//! The one way viewpipe writes a raw statement (for what SeaORM's query builder
//! does not express: `FOR UPDATE` claims, `ON CONFLICT` upserts, advisory locks).

use sea_orm::{DbBackend, Statement, Value};

/// A Postgres statement with `$n` placeholders bound to `values`.
pub fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}
