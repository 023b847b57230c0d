//! What both services, the backfill and direct producers agree on:
//!
//! - the view ([`View`]: the API body, its OpenAPI schema and the Kafka value) and
//!   its validation at the edge ([`event`]), what the aggregator counts of it
//!   ([`counted`]), the counter key format with the namespaces a
//!   deployment allows ([`key`]), their rules stated once for the validator and the
//!   API document ([`rules`]);
//! - the Postgres tables: their SeaORM [`entities`], the [`migration`]s that make
//!   them, and how a database's schema relates to this build's ([`version`]);
//!   which consumer group and topic a partition's rows belong to ([`Scope`]);
//! - the names of the Redis keys and fields that hold pending counts ([`pending`]),
//!   which the aggregator writes and the ingest reads.
//!
//! Nothing here talks to Kafka or Redis, or knows how a service is run; of Postgres it
//! only reads and migrates the schema ([`version`], [`migration`]).

pub mod counted;
pub mod entities;
pub mod event;
pub mod key;
pub mod migration;
pub mod pending;
pub mod rules;
pub mod version;

pub use counted::EventRef;
pub use event::{EventError, FieldError, View};
pub use key::{ContentKey, Namespaces};

/// Which consumer group and topic a partition's rows belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub group: String,
    pub topic: String,
}
