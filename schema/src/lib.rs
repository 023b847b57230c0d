//! viewpipe's shared vocabulary.
//!
//! Everything both services must agree on lives here: the view event and its
//! validation ([`event`]), the counter key format ([`key`]), the settings they share
//! ([`settings`]), logging set-up ([`telemetry`]), and the Postgres schema as SeaORM
//! entities ([`entities`]) and migrations ([`migration`]).

pub mod db;
pub mod entities;
pub mod event;
pub mod key;
pub mod migration;
pub mod settings;
pub mod telemetry;

pub use event::{EventError, EventRef, FieldError, ViewEvent, ViewInput};
pub use key::{ContentKey, Namespaces};
