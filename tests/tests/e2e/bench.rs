//! The benchmark keeps working: a small run of `viewpipe-bench` on a throwaway stack,
//! every part of it, checking that it finishes and prints each row. No timing is
//! asserted here; speed is read from `deploy/local/bench`.

use std::process::Command;

#[test]
fn a_small_benchmark_run_prints_every_row() {
    let out = Command::new(env!("CARGO_BIN_EXE_viewpipe-bench"))
        .args([
            "--events",
            "4000",
            "--zipf-keys",
            "500",
            "--uniform-keys",
            "4000",
            "--memory-events",
            "3000",
            "--http-seconds",
            "1",
            "--connections",
            "4",
            "--partitions",
            "8",
            "--upsert-seconds",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run viewpipe-bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "viewpipe-bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "raw produce, Zipf, Redis",
        "raw consume, Zipf, Redis",
        "aggregator counted, Zipf, Redis",
        "aggregator in Postgres, Zipf, database-only",
        "aggregator peak RSS, uniform, Redis",
        "Redis per pending key",
        "Redis per remembered id",
        "POST /api/views, 4 connections",
        "POST /api/views/batch events",
        "freshness at",
        "naive parse + count, uniform, Redis",
        "Redis per field, native pipelined HINCRBY, uniform",
        "seed design with care",
        "one upsert per event",
    ] {
        assert!(table.contains(row), "no {row:?} row in:\n{table}");
    }
    // The cost table: every process measured (no "n/a") on each aggregator workload.
    for workload in ["Zipf, Redis", "Zipf, database-only", "uniform, Redis"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {workload} | ")))
            .unwrap_or_else(|| panic!("no cost row for {workload} in:\n{table}"));
        assert!(
            row.contains("µs") && !row.contains("n/a"),
            "a cost missing for {workload}: {row}"
        );
        // Redis' cost per hash field added, from its command counts. (Other tests
        // share the Redis, so a database-only run may see their fields too.)
        assert!(
            !workload.ends_with("Redis") || row.contains(" fields) |"),
            "no Redis per field for {workload}: {row}"
        );
    }
    println!("{table}");
}
