//! A failure run: acknowledged views streamed through the ingest while a test breaks
//! things, a reader watching counts throughout, and the exactness check at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::task::JoinHandle;

use crate::chaos::{self, Load, Progress, WatchReport};
use crate::{Service, Stack};

/// Failure tests use a short session timeout so a killed aggregator's partitions
/// move on quickly, and a short flush interval so flushes happen often.
/// How long after a fault (beyond the fault itself) reads may answer 503: the
/// session timeout moves a dead owner's partitions, the new owner catches up and
/// marks them live (docs/exactly-once.md).
pub const RECOVERY: Duration = Duration::from_secs(10);

pub const AGGREGATOR_ENV: &[(&str, &str)] = &[
    ("FLUSH_INTERVAL_MS", "250"),
    ("KAFKA_SESSION_TIMEOUT_MS", "3000"),
];

pub struct Running {
    pub load: Load,
    now: DateTime<Utc>,
    started: Instant,
    pub progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    load_task: JoinHandle<anyhow::Result<()>>,
    watch_task: JoinHandle<WatchReport>,
}

impl Running {
    pub fn begin(stack: &Stack, ingest: &Service, load: Load) -> Self {
        let now = Utc::now();
        let progress = Progress::new(load.keys);
        let stop = Arc::new(AtomicBool::new(false));
        let load_task = tokio::spawn(chaos::run_load(
            load,
            ingest.url(""),
            stack.id.clone(),
            now,
            progress.clone(),
        ));
        let watch_task = tokio::spawn(chaos::watch(
            load,
            ingest.url(""),
            progress.clone(),
            stop.clone(),
        ));
        Self {
            load,
            now,
            started: Instant::now(),
            progress,
            stop,
            load_task,
            watch_task,
        }
    }

    /// Waits for the load, checks exactness, stops the reader and prints the outcome.
    pub async fn end(self, stack: &Stack, ingest: &Service, what: &str) {
        self.end_with(stack, ingest, what, false).await;
    }

    /// [`Running::end`] for a run where a store went back in time: counts read
    /// meanwhile may go down (never above what was sent); the end must still be exact.
    pub async fn end_after_rollback(self, stack: &Stack, ingest: &Service, what: &str) {
        self.end_with(stack, ingest, what, true).await;
    }

    async fn end_with(self, stack: &Stack, ingest: &Service, what: &str, may_decrease: bool) {
        self.load_task
            .await
            .expect("load task")
            .expect("every view acknowledged");
        let expected = self.load.expected(self.now);
        chaos::assert_exact(stack, ingest, &expected, Duration::from_secs(90)).await;
        // Let the reader see the final counts too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut report = self.watch_task.await.expect("watch task");
        let decreases = report.decreases.len();
        if may_decrease {
            report.decreases.clear();
        }
        report.assert_clean();
        println!(
            "{what}: {} events over {} keys and {} days exact (totals, daily rows, GETs); \
             reader: {} reads of every key, {decreases} decreases, 0 over-counts, {} unavailable ({} outside recovery windows); {} client retries; {:.1} s",
            self.load.events,
            self.load.keys,
            self.load.days,
            report.reads,
            report.unavailable,
            report.unexcused,
            self.progress.retries.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64()
        );
    }
}

pub async fn aggregators(stack: &Stack, n: usize, extra: &[(&str, &str)]) -> Vec<Service> {
    let mut env = AGGREGATOR_ENV.to_vec();
    env.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            stack
                .spawn_aggregator_process(&env)
                .await
                .expect("aggregator"),
        );
    }
    out
}

/// Kills a random aggregator with -9 `kills` times, replacing each at once.
pub async fn kill_randomly(
    stack: &Stack,
    aggs: &mut Vec<Service>,
    kills: usize,
    extra: &[(&str, &str)],
    progress: &Progress,
) -> Vec<usize> {
    let mut at = Vec::new();
    for _ in 0..kills {
        let (pause, victim) = {
            let mut rng = rand::rng();
            (rng.random_range(300..1200), rng.random_range(0..aggs.len()))
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        at.push(progress.acked());
        progress.recovery_window(RECOVERY);
        aggs.swap_remove(victim).kill9().await.expect("kill -9");
        aggs.extend(aggregators(stack, 1, extra).await);
    }
    at
}

pub async fn kill_9_run(extra: &[(&str, &str)], what: &str) {
    let stack = Stack::start().await.expect("stack");
    let mut aggs = aggregators(&stack, 2, extra).await;
    let ingest = stack.spawn_ingest(extra).await.expect("ingest");
    let load = Load {
        events: 20_000,
        keys: 200,
        days: 3,
        rate: 700.0,
        concurrency: 64,
    };
    let run = Running::begin(&stack, &ingest, load);
    let kills = kill_randomly(&stack, &mut aggs, 10, extra, &run.progress).await;
    assert!(
        kills.iter().all(|&k| k < load.events),
        "every kill must land mid-stream; acknowledged views at each kill: {kills:?}"
    );
    println!("{what}: kill -9 at acknowledged views {kills:?}");
    run.end(&stack, &ingest, what).await;
}
