//! HTTP routes of the ingest.

pub mod admin;
pub mod badge;
pub mod batch;
pub mod batch_read;
pub mod counts;
pub mod params;
pub mod pixel;
pub mod script;
pub mod series;
pub mod views;
