//! The pruning task: every `RETENTION_INTERVAL`, deletes daily rows past
//! `RETAIN_DAILY_DAYS`, finished jobs past `RETAIN_JOBS_DAYS` and visitor salts of
//! days before yesterday. What is deleted, and why it never holds up a flush, is
//! described in [`crate::store::retention`]; this module only decides the cutoffs
//! and paces the batches.

use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;

use crate::store::retention::{self, Batch, Raised, Table, Target, BATCH};
use viewpipe_runtime::deadline::{within, ROUND_TRIP};
use viewpipe_runtime::Shutdown;

use crate::metrics::PRUNED_ROWS;
use crate::settings::RetentionSettings;

/// How long one batch may go unanswered (a batch takes well under a second).
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between two batches, so that flushes get Postgres' attention in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// Rows deleted, by table (in [`Table::ALL`] order).
    pub deleted: [u64; 4],
    /// The day before which daily rows were deleted, when they were.
    pub daily_before: Option<NaiveDate>,
    /// A backfill's rebuild held the retention mark: daily rows were pruned only up
    /// to where it was.
    pub mark_held: bool,
    /// Another aggregator was pruning; this run left the rest to it.
    pub busy: bool,
    /// Shutdown stopped the run part way.
    pub stopped: bool,
}

impl Run {
    fn add(&mut self, table: Table, n: u64) {
        if let Some(i) = Table::ALL.iter().position(|t| *t == table) {
            self.deleted[i] += n;
        }
        metrics::counter!(PRUNED_ROWS, "table" => table.name()).increment(n);
    }

    pub fn deleted_from(&self, table: Table) -> u64 {
        Table::ALL
            .iter()
            .position(|t| *t == table)
            .map_or(0, |i| self.deleted[i])
    }
}

/// Starts the task; it ends soon after `shutdown` triggers (within one batch).
pub fn spawn(
    db: DatabaseConnection,
    settings: RetentionSettings,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tracing::info!(
        retain_daily_days = settings.retain_daily_days,
        retain_jobs_days = settings.retain_jobs_days,
        interval = ?settings.retention_interval,
        "retention: 0 days keeps forever; visitor salts before yesterday are always deleted"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            match prune(&db, &settings, Utc::now(), &shutdown).await {
                Ok(run) => log(&run, started.elapsed()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "retention run failed; what it deleted stays deleted, the rest is tried next run"
                ),
            }
        }
    })
}

fn log(run: &Run, took: Duration) {
    let [daily, visitors, jobs, salts] = run.deleted;
    let note = if run.busy {
        "retention run: another aggregator is pruning, the rest is left to it"
    } else if run.stopped {
        "retention run: stopped by shutdown"
    } else if run.mark_held {
        "retention run: a backfill holds the retention mark, daily rows pruned only up to it"
    } else {
        "retention run"
    };
    tracing::info!(
        view_counter_daily = daily,
        view_visitors_daily = visitors,
        jobs,
        visitor_salts = salts,
        daily_before = ?run.daily_before,
        ms = took.as_millis() as u64,
        "{note}"
    );
}

/// One run as of `now`: each table in batches until nothing is left before its
/// cutoff, another pruner is busy, or shutdown.
pub async fn prune(
    db: &DatabaseConnection,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
    shutdown: &Shutdown,
) -> Result<Run, DbErr> {
    let today = now.date_naive();
    let mut run = Run::default();
    if shutdown.is_triggered() {
        run.stopped = true;
        return Ok(run);
    }
    let mut targets = Vec::with_capacity(4);
    if settings.retain_daily_days > 0 {
        let cutoff = days_before(today, settings.retain_daily_days);
        // The mark first: a backfill must never find rows of a month gone that it
        // was allowed to rebuild.
        let mark = match within(ROUND_TRIP, retention::raise_mark(db, cutoff)).await? {
            Raised::To(mark) => Some(mark),
            Raised::HeldAt(mark) => {
                run.mark_held = true;
                mark
            }
            Raised::Busy => {
                run.busy = true;
                return Ok(run);
            }
        };
        // A mark above the cutoff (RETAIN_DAILY_DAYS was raised since): rows between
        // the two are kept; only late views can have written any.
        if let Some(before) = mark.map(|m| m.min(cutoff)) {
            run.daily_before = Some(before);
            targets.push(Target::CounterDaily { before });
            targets.push(Target::VisitorsDaily { before });
        }
    }
    if settings.retain_jobs_days > 0 {
        let finished_before = now - chrono::Duration::days(i64::from(settings.retain_jobs_days));
        targets.push(Target::Jobs { finished_before });
    }
    targets.push(Target::VisitorSalts {
        before: days_before(today, 1),
    });
    for target in targets {
        loop {
            if shutdown.is_triggered() {
                run.stopped = true;
                return Ok(run);
            }
            match within(BATCH_DEADLINE, retention::delete_batch(db, target, BATCH)).await? {
                Batch::Busy => {
                    run.busy = true;
                    return Ok(run);
                }
                Batch::Deleted(n) => {
                    run.add(target.table(), n);
                    if n < BATCH as u64 {
                        break;
                    }
                }
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
    }
    Ok(run)
}

/// `day` minus `n` days (the earliest date there is, should that underflow).
fn days_before(day: NaiveDate, n: u32) -> NaiveDate {
    day.checked_sub_days(Days::new(u64::from(n)))
        .unwrap_or(NaiveDate::MIN)
}
