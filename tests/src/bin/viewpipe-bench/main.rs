//! `viewpipe-bench`: how fast viewpipe runs on this machine, as ratios to what the
//! broker itself does in the same run.
//!
//! Each workload gets a fresh stack (its own in-process dev broker, Postgres
//! database and Redis prefix, as in the tests), is produced into `views` with the
//! ingest's producer settings (raw produce), read back with the aggregator's
//! consumer settings (raw consume), then counted by a release `aggregator` with the
//! contract's default flush settings. Both consume rates run from the moment the
//! group assigned the partitions to the last event, so fetching counts and start-up
//! and the group join do not. `deploy/local/bench` builds and runs it.

mod measure;
mod memory;
mod raw;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

use viewpipe_tests::Stack;

use crate::measure::{percentile_ms, AggregatorRun};
use crate::workload::{Keys, Workload};

#[derive(Parser, Debug)]
#[command(about = "Measures viewpipe against the raw speed of its broker, in one run")]
struct Args {
    /// Events in each aggregator workload.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Keys of the Zipf workloads.
    #[arg(long, default_value_t = 100_000)]
    zipf_keys: usize,
    /// Keys of the uniform workload.
    #[arg(long, default_value_t = 1_000_000)]
    uniform_keys: usize,
    /// Events of the Redis memory runs (flushing off, everything stays pending).
    #[arg(long, default_value_t = 200_000)]
    memory_events: usize,
    /// Seconds of each HTTP load and of the freshness probe.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,
    /// Partitions of the views topic. The dev broker keeps about 5 MiB per partition
    /// (compressed) and silently drops older batches; 16 hold 1M events of the
    /// workloads here, hot Zipf keys included.
    #[arg(long, default_value_t = 16)]
    partitions: i32,
    /// Concurrent connections of the single-view POST load.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Load beside the freshness probes, as a share of the aggregator's measured Zipf
    /// counting rate.
    #[arg(long, default_value_t = 0.5)]
    freshness_load: f64,
    /// Which parts to run (comma-separated): zipf, zipf-ids, dbonly, uniform, memory,
    /// publish,
    /// http, freshness, upsert.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zipf,zipf-ids,dbonly,uniform,memory,http,publish,freshness,upsert"
    )]
    only: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }

    fn zipf(&self, events: usize, id_share: f64, seed: u64) -> Workload {
        Workload {
            keys: Keys::Zipf {
                n: self.zipf_keys,
                s: 1.1,
            },
            events,
            id_share,
            days: 3,
            seed,
        }
    }
}

/// One row of the result table.
struct Row {
    what: String,
    value: String,
    ratio: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>, ratio: impl Into<String>) {
        let row = Row {
            what: what.into(),
            value: value.into(),
            ratio: ratio.into(),
        };
        eprintln!("[bench] {}: {} {}", row.what, row.value, row.ratio);
        self.rows.push(row);
    }

    fn print(&self) {
        println!("| measure | value | ratio |");
        println!("|---|---|---|");
        for r in &self.rows {
            println!("| {} | {} | {} |", r.what, r.value, r.ratio);
        }
    }
}

fn rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

fn ratio(r: f64, raw: f64) -> String {
    format!("{:.2}x raw", r / raw)
}

/// A fresh stack with `workload` in its `views` topic; returns the stack and the raw
/// produce and consume rates.
async fn loaded(
    workload: &Workload,
    partitions: i32,
) -> anyhow::Result<(Stack, raw::Produced, f64)> {
    let stack = Stack::with_partitions(partitions).await?;
    let brokers = stack.broker.addr().to_string();
    eprintln!(
        "[bench] producing {} events ({}, {:.0}% with client ids)",
        workload.events,
        workload.keys.describe(),
        workload.id_share * 100.0
    );
    let (b, w) = (brokers.clone(), workload.clone());
    let produced =
        tokio::task::spawn_blocking(move || raw::produce(&b, "views", &w, raw::Pace::Flat))
            .await??;
    let events = workload.events;
    let consumed =
        tokio::task::spawn_blocking(move || raw::consume(&brokers, "views", events)).await??;
    Ok((stack, produced, consumed))
}

/// Counts a workload with an aggregator, and reports it against the raw rates.
async fn aggregate(
    args: &Args,
    table: &mut Table,
    name: &str,
    workload: &Workload,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Stack, AggregatorRun, f64, f64)> {
    let (stack, produced, raw_consume) = loaded(workload, args.partitions).await?;
    table.add(format!("raw produce, {name}"), rate(produced.rate), "");
    table.add(format!("raw consume, {name}"), rate(raw_consume), "");
    eprintln!("[bench] counting {name} with an aggregator");
    let run = measure::aggregator_run(&stack, extra, workload.events, Some(workload.events as i64))
        .await?;
    table.add(
        format!("aggregator counted, {name}"),
        rate(run.counted_rate),
        ratio(run.counted_rate, raw_consume),
    );
    if let Some(durable) = run.durable_rate {
        table.add(
            format!("aggregator in Postgres, {name}"),
            rate(durable),
            ratio(durable, raw_consume),
        );
    }
    table.add(
        format!("aggregator peak RSS, {name}"),
        format!("{:.0} MiB", run.peak_rss_mib),
        format!("{} distinct keys", produced.distinct_keys),
    );
    Ok((stack, run, raw_consume, produced.rate))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut table = Table::default();
    eprintln!(
        "[bench] machine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_total()
    );

    // The Zipf workload also hosts the HTTP and freshness measurements.
    let mut zipf_run = None;
    if args.runs("zipf") || args.runs("http") || args.runs("publish") || args.runs("freshness") {
        let w = args.zipf(args.events, 0.0, 1);
        zipf_run = Some(aggregate(&args, &mut table, "Zipf, Redis", &w, &[]).await?);
    }
    if args.runs("zipf-ids") {
        let w = args.zipf(args.events, 1.0, 2);
        let (stack, _, _, _) = aggregate(
            &args,
            &mut table,
            "Zipf, every event a client id, Redis",
            &w,
            &[],
        )
        .await?;
        stack.cleanup().await?;
    }
    if args.runs("dbonly") {
        let w = args.zipf(args.events, 0.0, 3);
        let (stack, _, _, _) = aggregate(
            &args,
            &mut table,
            "Zipf, database-only",
            &w,
            &[("REDIS_URL", "none")],
        )
        .await?;
        stack.cleanup().await?;
    }
    if args.runs("uniform") {
        let w = Workload {
            keys: Keys::Uniform {
                n: args.uniform_keys,
            },
            events: args.events,
            id_share: 0.0,
            days: 3,
            seed: 4,
        };
        let (stack, run, _, _) = aggregate(&args, &mut table, "uniform, Redis", &w, &[]).await?;
        drop(run);
        if args.runs("upsert") {
            let baseline = measure::upsert_baseline(&stack, 5).await?;
            table.add(
                "per-event upsert baseline (8 connections)",
                rate(baseline),
                "",
            );
        }
        stack.cleanup().await?;
    }
    if args.runs("memory") {
        memory::memory(&args, &mut table).await?;
    }
    if let Some((stack, run, raw_consume, raw_produce)) = zipf_run {
        let ingest = stack.spawn_ingest_process(&[]).await?;
        if args.runs("http") {
            eprintln!(
                "[bench] POST /api/views with {} connections for {} s",
                args.connections, args.http_seconds
            );
            let post = measure::post_load(&ingest, args.connections, args.http_seconds).await?;
            let row = |p: &measure::PostLoad| {
                format!(
                    "{} (p50 {:.1} ms, p99 {:.1} ms, {} failed)",
                    rate(p.rate),
                    p.p50_ms,
                    p.p99_ms,
                    p.failed
                )
            };
            let connections = args.connections;
            table.add(
                format!("POST /api/views, {connections} connections"),
                row(&post),
                "",
            );
            let wrk = tokio::task::block_in_place(|| {
                measure::post_load_wrk(&ingest, connections, args.http_seconds)
            })?;
            if let Some(wrk) = wrk {
                table.add(
                    format!("POST /api/views, {connections} connections, wrk"),
                    row(&wrk),
                    "",
                );
            }
            eprintln!(
                "[bench] POST /api/views/batch (1000 per request, 4 clients) for {} s",
                args.http_seconds
            );
            let batch = measure::batch_load(&ingest, 4, args.http_seconds).await?;
            table.add(
                "POST /api/views/batch events",
                rate(batch),
                format!("{:.2}x raw produce", batch / raw_produce),
            );
        }
        if args.runs("publish") {
            let lines = 300_000;
            eprintln!("[bench] ingest publish of {lines} lines to views.replay");
            let published = measure::publish(&stack, lines).await?;
            table.add(
                "ingest publish events",
                rate(published),
                format!("{:.2}x raw produce", published / raw_produce),
            );
        }
        if args.runs("freshness") {
            // On a stack of its own: the dev broker's bounded log would not hold this
            // load beside the Zipf workload.
            let pace = run.counted_rate * args.freshness_load;
            let fresh = Stack::with_partitions(args.partitions).await?;
            let _aggregator = fresh.spawn_aggregator_process(&[]).await?;
            let probe_ingest = fresh.spawn_ingest_process(&[]).await?;
            eprintln!(
                "[bench] freshness while producing at {} ({:.2}x the aggregator's Zipf rate)",
                rate(pace),
                args.freshness_load
            );
            let events = (pace * args.http_seconds as f64) as usize;
            let w = Workload {
                events,
                ..args.zipf(events, 0.0, 5)
            };
            let busy = Arc::new(AtomicBool::new(true));
            let brokers = fresh.broker.addr().to_string();
            let flag = busy.clone();
            let until =
                std::time::Instant::now() + std::time::Duration::from_secs(args.http_seconds);
            let producer = tokio::task::spawn_blocking(move || {
                let out = raw::produce(&brokers, "views", &w, raw::Pace::Steady(pace, until));
                flag.store(false, Ordering::Relaxed);
                out
            });
            let seen = measure::freshness(&probe_ingest, busy).await?;
            producer.await??;
            table.add(
                format!("freshness at {} load", rate(pace)),
                format!(
                    "p50 {:.0} ms, p99 {:.0} ms ({} probes)",
                    percentile_ms(&seen, 0.5),
                    percentile_ms(&seen, 0.99),
                    seen.len()
                ),
                format!("{:.2}x raw consume", pace / raw_consume),
            );
            drop(probe_ingest);
            fresh.cleanup().await?;
        }
        drop(ingest);
        drop(run);
        stack.cleanup().await?;
    }
    table.print();
    Ok(())
}

fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default()
}
