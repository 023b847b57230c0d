//! Service plumbing shared by `ingest` and `aggregator`: shutdown signals, liveness
//! and readiness, the Prometheus endpoint, and Kafka client settings.

pub mod connect;
pub mod health;
pub mod kafka;
pub mod progress;
pub mod shutdown;

pub use health::{Health, Probes};
pub use shutdown::Shutdown;
