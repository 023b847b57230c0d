//! The end-to-end suite, one test binary: each module is one subject, run against
//! real Postgres, Redis and a Kafka-protocol broker (see `viewpipe_tests`). Run one
//! module with `cargo test -p viewpipe-tests --test e2e -- pipeline::`.

mod api;
mod api_errors;
mod backfill;
mod backfill_locks;
mod backfill_race;
mod backlog;
mod bench;
mod browser;
mod dedupe;
mod deploy_metrics;
mod edge;
mod failures;
mod flush_cases;
mod fuzz;
mod js;
mod log_changes;
mod many_keys;
mod pipeline;
mod protect;
mod readme;
mod rebalance;
mod redis_cluster;
mod retention;
mod rollout;
mod settings_doc;
mod silent;
mod store;
mod store_faults;
mod tls;
mod upgrade;
mod visitors;
mod write_limits;
