//! Connecting to Postgres and refusing to run on a schema that is behind (or ahead
//! by a breaking migration: see `viewpipe_schema::version`).

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
use sea_orm::{DatabaseConnection, SqlxPostgresConnector};

use crate::settings::SecretUrl;
use viewpipe_schema::version::{self, SchemaState};

#[derive(Debug, thiserror::Error)]
pub enum DbStartError {
    #[error("cannot reach Postgres at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the database schema is behind: {pending} migration(s) not applied; run `aggregator migrate`")]
    Behind { pending: usize },
    #[error("the database schema is ahead of this build by breaking migration(s) {breaking}: run the newer release")]
    AheadBreaking { breaking: String },
    #[error("cannot read the schema version: {0}")]
    Version(sea_orm::DbErr),
}

/// Server-side limits on every session, so that nothing waits forever on Postgres:
/// a statement stuck behind a stalled server, a lock held by a flush whose client
/// vanished (a half-open connection keeps its transaction, and its `FOR UPDATE`
/// locks, until the server gives up on it), a claim queued behind such a lock.
/// A statement that runs into one fails and is retried like any other error.
/// The keepalives make the server find a vanished client within about 25 s even
/// outside a transaction (the client's own sockets get no keepalive from sqlx: its
/// side is covered by the deadlines of `crate::deadline`).
const SESSION_LIMITS: [(&str, &str); 6] = [
    ("statement_timeout", "30s"),
    ("lock_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "15s"),
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// Planner settings of every session viewpipe opens. Its statements are short and
/// run often; the flush's upserts are large, and their estimated cost passed the JIT
/// thresholds, so Postgres compiled them at their first runs on each new
/// connection, which took longer than running them (see `docs/performance.md`).
pub const SESSION_PLANNING: [(&str, &str); 1] = [("jit", "off")];

/// How long a connection handed back to the pool may take to answer a ping before
/// it is closed instead of kept.
const RELEASE_CHECK: Duration = Duration::from_secs(2);

/// Opens a pool; fails fast (a few seconds) when Postgres does not answer.
///
/// A round trip abandoned at its deadline (`crate::deadline`) hands its
/// connection back mid-conversation. sqlx pings such a connection before reusing
/// it, and that ping has no deadline: on a silent connection it would wait forever
/// and hold one of the pool's places with it. So every returned connection must
/// first answer a ping within [`RELEASE_CHECK`], or it is closed.
pub async fn connect(
    url: &SecretUrl,
    max_connections: u32,
) -> Result<DatabaseConnection, DbStartError> {
    let unreachable = |reason: String| DbStartError::Unreachable {
        address: url.address(),
        reason,
    };
    let options: PgConnectOptions = url
        .expose()
        .parse()
        .map_err(|e: sqlx::Error| unreachable(root_cause(&e)))?;
    let options = options
        .options(SESSION_LIMITS)
        .options(SESSION_PLANNING)
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .after_release(|conn, _| {
            Box::pin(async move {
                match tokio::time::timeout(RELEASE_CHECK, conn.ping()).await {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a connection handed back did not answer a ping",
                    ))),
                }
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| {
            unreachable(crate::connect::tls_hint(
                root_cause(&e),
                "sslrootcert (or the system's trust store)",
            ))
        })?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

/// The innermost error's message: driver errors repeat their sources in their own
/// message, so printing the whole chain says the same thing several times.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// [`connect`], then [`ensure_schema_current`]: how every process but `migrate`
/// opens the database.
pub async fn connect_current(
    url: &SecretUrl,
    max_connections: u32,
) -> Result<DatabaseConnection, DbStartError> {
    let db = connect(url, max_connections).await?;
    ensure_schema_current(&db).await?;
    Ok(db)
}

/// Errors unless every migration of this build has been applied and any newer ones
/// are additive. A schema ahead of this build is logged once.
pub(crate) async fn ensure_schema_current(db: &DatabaseConnection) -> Result<(), DbStartError> {
    match version::state(db).await.map_err(DbStartError::Version)? {
        SchemaState::Current => Ok(()),
        SchemaState::AheadAdditive { newer } => {
            tracing::info!(
                newer = %newer.join(", "),
                "the schema is ahead of this build by additive migrations; running on it"
            );
            Ok(())
        }
        SchemaState::Behind { pending } => Err(DbStartError::Behind {
            pending: pending.len(),
        }),
        SchemaState::AheadBreaking { breaking } => Err(DbStartError::AheadBreaking {
            breaking: breaking.join(", "),
        }),
    }
}
