//! Every metric name the deployment's alert rules, their unit tests, the Grafana
//! dashboard and the manifests use is one the services export: both services are
//! started and scraped, and every `viewpipe_*` name in `deploy/` is looked up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use viewpipe_tests::Stack;

/// The repository's `deploy/` folder.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The files whose PromQL (or metric names) must match what the services export.
fn files() -> Vec<PathBuf> {
    let deploy = deploy_dir();
    let mut files = vec![
        deploy.join("prometheus/rules.yml"),
        deploy.join("grafana/viewpipe.json"),
    ];
    for dir in ["prometheus/tests", "k8s", "k8s/monitoring"] {
        let entries = std::fs::read_dir(deploy.join(dir)).expect("deploy folder");
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Every `viewpipe_...` word in `text` (recording rules are `viewpipe:...` and
/// are not metric names of the services).
fn names_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("viewpipe_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    names
}

/// The metric names in a Prometheus text exposition.
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deployment_uses_is_exported() {
    let stack = Stack::start().await.expect("stack");
    let aggregator = stack
        .spawn_aggregator_process(&[])
        .await
        .expect("aggregator");
    let ingest = stack.spawn_ingest_process(&[]).await.expect("ingest");
    // One request, so the per-route series exist too.
    let http = reqwest::Client::new();
    let posted = http
        .post(ingest.url("/api/views"))
        .json(&serde_json::json!({"contentType": "resource", "contentId": "m"}))
        .send()
        .await
        .expect("post");
    assert!(posted.status().is_success());
    // The lag of a partition is reported once the aggregator owns it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut have = BTreeSet::new();
    while std::time::Instant::now() < deadline && !have.contains("viewpipe_aggregator_consumer_lag")
    {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        have.clear();
        for service in [&ingest, &aggregator] {
            let scrape = http
                .get(service.url("/metrics"))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("body");
            have.extend(exported(&scrape));
        }
    }
    let mut used = 0;
    let mut missing = Vec::new();
    for file in files() {
        let text = std::fs::read_to_string(&file).expect("deploy file");
        for name in names_in(&text) {
            used += 1;
            let known = have.contains(&name)
                // A histogram's own name, as in a description.
                || have.contains(&format!("{name}_bucket"));
            if !known {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    println!(
        "{used} uses of {} exported metric names checked across deploy/",
        have.iter().filter(|n| n.starts_with("viewpipe_")).count()
    );
    assert!(
        used > 20,
        "the rules and dashboard use the services' metrics"
    );
    assert!(
        missing.is_empty(),
        "not exported by the services: {missing:#?}"
    );
    drop((aggregator, ingest));
}

#[test]
fn names_are_found_whole_and_recording_rules_skipped() {
    let names = names_in(
        "rate(viewpipe_ingest_requests_total{x=\"y\"}[5m]) / viewpipe:ratio my_viewpipe_x viewpipe_ready",
    );
    let want: BTreeSet<String> = ["viewpipe_ingest_requests_total", "viewpipe_ready"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names, want);
}
