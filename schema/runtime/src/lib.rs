//! Service plumbing every viewpipe binary shares: the settings they read
//! ([`settings`]), logging ([`telemetry`]), connections to Postgres ([`db`]), Redis and
//! Kafka ([`connect`], [`kafka`]), shutdown signals, liveness and readiness, and the
//! Prometheus endpoint.

pub mod connect;
pub mod db;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod progress;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use health::{Health, Probes};
pub use shutdown::Shutdown;
