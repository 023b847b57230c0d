//! `viewpipe-bench`: what viewpipe costs per event on this machine, and how fast it
//! runs as ratios to what the broker itself does in the same run.
//!
//! Each workload gets a fresh stack (its own in-process dev broker, Postgres
//! database and Redis prefix, as in the tests), is produced into `views` with the
//! ingest's producer settings (raw produce), read back with the aggregator's
//! consumer settings (raw consume), then counted by a release `aggregator` with the
//! contract's default flush settings. Both consume rates run from the moment the
//! group assigned the partitions to the last event, so fetching counts and start-up
//! and the group join do not. `deploy/local/bench` builds and runs it.
//!
//! Beside each rate it reports cost: the CPU microseconds each process spends per
//! event (the aggregator, every Postgres server process, Redis, this process hosting
//! the dev broker), Postgres' per upserted row, and the same for two floors (a
//! consumer that does nothing; one that parses and counts in a map) and two designs
//! a user might build instead (see [`consumers`]). CPU time per event holds on a
//! machine whose cores everything shares; rates depend on the neighbours.

mod consumers;
mod cost;
mod measure;
mod memory;
mod raw;
mod redis_reference;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

use viewpipe_tests::Stack;

use crate::measure::{percentile_ms, AggregatorRun};
use crate::workload::{Keys, Workload};

#[derive(Parser, Debug)]
#[command(
    about = "Measures viewpipe's cost per event and its rates against the raw speed of its broker, in one run"
)]
struct Args {
    /// Runs one measured consumer and prints its report (the benchmark starts itself
    /// this way).
    #[arg(long, value_enum, hide = true)]
    consumer: Option<consumers::Kind>,
    #[command(flatten)]
    job: consumers::Job,
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
    /// Seconds the one-upsert-per-event baseline runs (its cost per event does not
    /// change with the length; the whole log would take many minutes).
    #[arg(long, default_value_t = 10)]
    upsert_seconds: u64,
    /// Load beside the freshness probes, as a share of the aggregator's measured Zipf
    /// counting rate.
    #[arg(long, default_value_t = 0.5)]
    freshness_load: f64,
    /// Which parts to run (comma-separated): zipf, zipf-ids, dbonly, uniform, memory,
    /// http, publish, freshness, baselines (the seed design and a per-event upsert,
    /// on the Zipf workload).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zipf,zipf-ids,dbonly,uniform,memory,http,publish,freshness,baselines"
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
    costs: Vec<Cost>,
    baselines: Vec<Baseline>,
}

/// CPU seconds of one aggregator workload, by process.
struct Cost {
    workload: String,
    events: u64,
    /// This process while producing the workload: the load generator, its producer
    /// and the dev broker.
    produce: f64,
    raw: f64,
    naive: f64,
    aggregator: Option<f64>,
    postgres: Option<f64>,
    redis: f64,
    /// Hash fields the batches added to in Redis (its `HINCRBY`s).
    redis_fields: u64,
    /// This process while the aggregator ran: the dev broker serving it.
    broker: f64,
    rows: u64,
}

impl Cost {
    /// The pipeline's CPU seconds: the aggregator and the stores it writes.
    fn total(&self) -> Option<f64> {
        Some(self.aggregator? + self.postgres? + self.redis)
    }
}

/// A design measured beside viewpipe on the same workload.
struct Baseline {
    name: &'static str,
    events: u64,
    consumer: f64,
    postgres: Option<f64>,
    redis: f64,
    rate: f64,
    rows: u64,
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
        let us = |secs: Option<f64>, n: u64| secs.map_or("n/a".into(), |s| cost::micros(s, n));
        println!("CPU µs per event, by process:\n");
        println!("| workload | raw read (do-nothing consumer) | naive parse + count | aggregator | aggregator / naive | Postgres | Postgres per upserted row | Redis | Redis per field added | pipeline total | total / raw read | dev broker serving the aggregator | producing (generator + broker) |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for c in &self.costs {
            let n = c.events;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} ({} rows) | {} | {} | {} | {} | {} | {} |",
                c.workload,
                cost::micros(c.raw, n),
                cost::micros(c.naive, n),
                us(c.aggregator, n),
                c.aggregator.map_or("n/a".into(), |a| times(a, c.naive, 2)),
                us(c.postgres, n),
                us(c.postgres, c.rows),
                c.rows,
                cost::micros(c.redis, n),
                match c.redis_fields {
                    0 => "none".to_owned(),
                    fields => format!("{} ({fields} fields)", cost::micros(c.redis, fields)),
                },
                us(c.total(), n),
                c.total().map_or("n/a".into(), |t| times(t, c.raw, 1)),
                cost::micros(c.broker, n),
                cost::micros(c.produce, n),
            );
        }
        if !self.baselines.is_empty() {
            let viewpipe = self
                .costs
                .first()
                .and_then(|c| Some((c.total()?, c.events)));
            println!(
                "\nThe same workload ({}) counted by designs a user might build instead:\n",
                self.costs.first().map_or("", |c| c.workload.as_str())
            );
            println!("| design | events | consumer | Postgres | Redis | total | viewpipe cheaper by | rate |");
            println!("|---|---|---|---|---|---|---|---|");
            for b in &self.baselines {
                let n = b.events;
                let total = b.postgres.map(|p| p + b.consumer + b.redis);
                let cheaper = match (total, viewpipe) {
                    (Some(t), Some((v, vn))) => format!("{:.1}x", (t / n as f64) / (v / vn as f64)),
                    _ => "n/a".into(),
                };
                println!(
                    "| {} | {} | {} | {} ({} rows) | {} | {} | {} | {} |",
                    b.name,
                    n,
                    cost::micros(b.consumer, n),
                    us(b.postgres, n),
                    b.rows,
                    cost::micros(b.redis, n),
                    us(total, n),
                    cheaper,
                    rate(b.rate)
                );
            }
        }
        println!("\nRates:\n");
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

/// `a / b` as "1.5x"; "–" when `b` is too small to have been measured (a short run
/// inside one clock tick).
fn times(a: f64, b: f64, decimals: usize) -> String {
    if b > 0.0 {
        format!("{:.decimals$}x", a / b)
    } else {
        "–".to_owned()
    }
}

fn ratio(r: f64, raw: f64) -> String {
    format!("{:.2}x raw", r / raw)
}

/// A fresh stack with `workload` in its `views` topic; returns the stack, the raw
/// produce rate and this process' CPU seconds producing, and the do-nothing
/// consumer's report.
async fn loaded(
    workload: &Workload,
    partitions: i32,
) -> anyhow::Result<(Stack, raw::Produced, f64, consumers::Report)> {
    let stack = Stack::with_partitions(partitions).await?;
    let brokers = stack.broker.addr().to_string();
    eprintln!(
        "[bench] producing {} events ({}, {:.0}% with client ids)",
        workload.events,
        workload.keys.describe(),
        workload.id_share * 100.0
    );
    let w = workload.clone();
    let cpu = cost::own_seconds();
    let produced =
        tokio::task::spawn_blocking(move || raw::produce(&brokers, "views", &w, raw::Pace::Flat))
            .await??;
    let produce_cpu = cost::own_seconds() - cpu;
    let consumed = consumers::run(&stack, consumers::Kind::Raw, workload.events, 0).await?;
    Ok((stack, produced, produce_cpu, consumed))
}

/// Counts a workload with an aggregator, and reports it against the raw rates.
async fn aggregate(
    args: &Args,
    table: &mut Table,
    name: &str,
    workload: &Workload,
    extra: &[(&str, &str)],
) -> anyhow::Result<(Stack, AggregatorRun, f64, f64)> {
    let (stack, produced, produce_cpu, raw) = loaded(workload, args.partitions).await?;
    let raw_consume = raw.rate;
    table.add(format!("raw produce, {name}"), rate(produced.rate), "");
    table.add(format!("raw consume, {name}"), rate(raw_consume), "");
    eprintln!("[bench] parsing and counting {name} in a map (the naive floor)");
    let naive = consumers::run(&stack, consumers::Kind::Naive, workload.events, 0).await?;
    table.add(
        format!("naive parse + count, {name}"),
        rate(naive.rate),
        ratio(naive.rate, raw_consume),
    );
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
    let events = workload.events as u64;
    table.costs.push(Cost {
        workload: name.to_owned(),
        events,
        produce: produce_cpu,
        raw: raw.cpu_seconds * events as f64 / raw.events.max(1) as f64,
        naive: naive.cpu_seconds * events as f64 / naive.events.max(1) as f64,
        aggregator: run.cpu_seconds,
        postgres: run.stores.postgres,
        redis: run.stores.redis,
        redis_fields: run.stores.redis_fields,
        broker: run.stores.bench,
        rows: run.rows,
    });
    Ok((stack, run, raw_consume, produced.rate))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(kind) = args.consumer {
        return consumers::child(kind, args.job).await;
    }
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
        let (stack, mut run, raw_consume, raw_produce) =
            aggregate(&args, &mut table, "Zipf, Redis", &w, &[]).await?;
        // Its stack hosts the HTTP measurements, which need no aggregator; idle, it
        // would still poll the stores and land in the later runs' figures.
        run.aggregator = None;
        zipf_run = Some((stack, run, raw_consume, raw_produce));
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
        // The aggregator's scripts beside the hash work alone, per field, once the
        // stopped aggregator's last deletions are done.
        tokio::time::sleep(cost::SETTLE).await;
        eprintln!("[bench] adding the uniform log's fields to Redis with pipelined HINCRBYs");
        let reference = redis_reference::run(
            &stack.redis_url,
            &stack.redis_prefix,
            &w,
            args.partitions as usize,
        )
        .await?;
        let scripts = table
            .costs
            .last()
            .and_then(|c| reference.ratio(c.redis, c.redis_fields));
        table.add(
            "Redis per field, native pipelined HINCRBY, uniform",
            cost::micros(reference.seconds, reference.fields),
            scripts.map_or(String::new(), |r| {
                format!("the aggregator's scripts: {r:.2}x")
            }),
        );
        stack.cleanup().await?;
    }
    if args.runs("memory") {
        memory::memory(&args, &mut table).await?;
    }
    if let Some((stack, run, raw_consume, raw_produce)) = zipf_run {
        if args.runs("baselines") {
            baselines(&stack, &mut table, &args, raw_consume).await?;
        }
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

/// The seed design and the per-event upsert on the Zipf stack's log, each with tables
/// of its own; the per-event upsert for `--upsert-seconds` only.
async fn baselines(
    stack: &Stack,
    table: &mut Table,
    args: &Args,
    raw_consume: f64,
) -> anyhow::Result<()> {
    let events = args.events;
    let postgres = cost::Postgres::find(&stack.db_url).await?;
    for (name, kind, seconds) in [
        (
            "seed design with care (INCR + SADD, GETDEL + upsert per key and day)",
            consumers::Kind::Seed,
            0,
        ),
        (
            "one upsert per event",
            consumers::Kind::Upsert,
            args.upsert_seconds,
        ),
    ] {
        consumers::create_tables(&stack.db_url).await?;
        eprintln!("[bench] the same log counted by: {name}");
        tokio::time::sleep(cost::SETTLE).await;
        cost::Postgres::wait_quiet(stack).await?;
        let before = cost::Stores::read(postgres.as_ref(), &stack.redis_url).await?;
        let report = consumers::run(stack, kind, events, seconds).await?;
        let spent = cost::Stores::read(postgres.as_ref(), &stack.redis_url)
            .await?
            .since(&before);
        table.add(
            format!("{name}, Zipf"),
            rate(report.rate),
            ratio(report.rate, raw_consume),
        );
        table.baselines.push(Baseline {
            name,
            events: report.events,
            consumer: report.cpu_seconds,
            postgres: spent.postgres,
            redis: spent.redis,
            rate: report.rate,
            rows: report.rows,
        });
    }
    Ok(())
}

fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default()
}
