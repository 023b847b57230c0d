//! Service plumbing every viewpipe binary shares: the settings they read
//! ([`settings`]), logging ([`telemetry`]), connections to Postgres ([`db`]), Redis
//! ([`redis_conn`]) and Kafka ([`connect`], [`kafka`]), deadlines on round trips
//! ([`deadline`]), statements ([`sql`]), the flush requests both services speak
//! ([`jobs`]), shutdown signals, liveness and readiness, and the Prometheus endpoint.

pub mod connect;
pub mod db;
pub mod deadline;
pub mod health;
pub mod jobs;
pub mod kafka;
pub mod metrics;
pub mod progress;
pub mod redis_conn;
pub mod settings;
pub mod shutdown;
pub mod sql;
pub mod telemetry;

pub use health::{Health, Probes};
pub use shutdown::Shutdown;
