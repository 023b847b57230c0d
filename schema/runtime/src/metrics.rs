//! The process's Prometheus recorder. The `metrics` facade has one recorder per
//! process, so a service does not install its own: its binary installs one here and
//! hands the handle to the service it builds, and tests that build several services
//! in one process share one (their series then add up, which is why tests that read
//! a service's own metrics run it as a child process).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the recorder, with `histograms` (name, bucket bounds) rendered as
/// Prometheus histograms rather than summaries. Fails if the process has one already.
pub fn install(histograms: &[(&str, &[f64])]) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histograms {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)?;
    }
    Ok(builder.install_recorder()?)
}
