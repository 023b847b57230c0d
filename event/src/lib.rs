//! viewpipe's vocabulary: the view event and its validation at the edge ([`event`]),
//! what the aggregator counts of it ([`counted`]), and the
//! counter key format with the namespaces a deployment allows ([`key`]), their
//! rules stated once for the validator and the API document ([`rules`]). Both
//! services, the backfill and direct producers agree on these; nothing here knows
//! about Kafka, Redis, Postgres or how a service is run.

pub mod counted;
pub mod event;
pub mod key;
pub mod rules;

pub use counted::EventRef;
pub use event::{EventError, FieldError, ViewEvent, ViewInput};
pub use key::{ContentKey, Namespaces};
