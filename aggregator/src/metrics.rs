//! The aggregator's metric names, declared once.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusHandle;

pub const EVENTS: &str = "viewpipe_aggregator_events_total";
pub(crate) const FLUSH_DURATION: &str = "viewpipe_aggregator_flush_duration_seconds";
pub(crate) const FLUSHED_ROWS: &str = "viewpipe_aggregator_flushed_rows_total";
pub(crate) const PENDING_KEYS: &str = "viewpipe_aggregator_pending_keys";
pub(crate) const CONSUMER_LAG: &str = "viewpipe_aggregator_consumer_lag";
pub(crate) const REBALANCES: &str = "viewpipe_aggregator_rebalances_total";
pub(crate) const LAST_FLUSH: &str = "viewpipe_aggregator_last_flush_timestamp_seconds";
/// Beyond the contract: times Redis was found to have lost a partition's counts.
pub(crate) const REDIS_RESTORES: &str = "viewpipe_aggregator_redis_restores_total";
/// Beyond the contract: partitions assigned to this aggregator that it may not write
/// (paused): another aggregator claimed them, or Postgres went back in time.
pub(crate) const HELD_PARTITIONS: &str = "viewpipe_aggregator_held_partitions";
/// Beyond the contract: rows deleted by retention, by table.
pub(crate) const PRUNED_ROWS: &str = "viewpipe_aggregator_pruned_rows_total";

/// The aggregator's histograms and their buckets.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[(
    FLUSH_DURATION,
    &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ],
)];

/// Installs the process's Prometheus recorder with the aggregator's buckets (once
/// per process: the binary calls it; tests share one recorder between services).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    viewpipe_runtime::metrics::install(HISTOGRAMS)
}

/// Describes every metric of the aggregator and lists its series at zero.
pub fn describe() {
    viewpipe_runtime::health::describe_metrics();
    describe_gauge!(
        HELD_PARTITIONS,
        "Assigned partitions held (paused, nothing skipped), by reason: fenced (claimed by another aggregator), postgres_behind (Postgres went back in time), log_ahead, log_truncated, log_unproven"
    );
    describe_counter!(
        EVENTS,
        "Events consumed, by result: counted, duplicate or invalid"
    );
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Duration of one flush to Postgres"
    );
    describe_counter!(FLUSHED_ROWS, "Total and daily rows written by flushes");
    describe_gauge!(PENDING_KEYS, "Keys with counts not yet flushed to Postgres");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages between the consumed position and the partition end"
    );
    describe_counter!(REBALANCES, "Partition assignments and revocations seen");
    describe_gauge!(
        LAST_FLUSH,
        Unit::Seconds,
        "Unix time of the last successful flush"
    );
    describe_counter!(
        REDIS_RESTORES,
        "Times Redis had lost a partition's pending counts and they were restored from memory"
    );
    describe_counter!(
        PRUNED_ROWS,
        "Rows deleted by retention, by table: view_counter_daily, view_visitors_daily, jobs, visitor_salts"
    );
    for table in crate::store::retention::Table::ALL {
        metrics::counter!(PRUNED_ROWS, "table" => table.name()).increment(0);
    }
    for result in ["counted", "duplicate", "invalid"] {
        metrics::counter!(EVENTS, "result" => result).increment(0);
    }
    metrics::counter!(FLUSHED_ROWS).increment(0);
    metrics::counter!(REBALANCES).increment(0);
    metrics::counter!(REDIS_RESTORES).increment(0);
    metrics::gauge!(PENDING_KEYS).set(0.0);
    for reason in crate::aggregator::Hold::ALL {
        metrics::gauge!(HELD_PARTITIONS, "reason" => reason.label()).set(0.0);
    }
    // 0 until the first flush; the histogram is listed (empty) from the start.
    metrics::gauge!(LAST_FLUSH).set(0.0);
    let _ = metrics::histogram!(FLUSH_DURATION);
}
