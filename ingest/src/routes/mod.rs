//! HTTP routes of the ingest.

pub mod views;
