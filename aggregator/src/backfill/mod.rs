//! `aggregator backfill`: rebuilds whole months from the replay topic.
//!
//! 1. One job row per month (`GET /api/jobs/{id}` shows it).
//! 2. The replay topic is read once, for all months ([`replay`]).
//! 3. Months are rebuilt by up to `--workers` workers. Each takes its month's
//!    advisory lock on a session of its own (waiting up to `--lock-timeout`, then
//!    skipping the month), and replaces the month in one transaction
//!    ([`crate::store::backfill::rebuild_month`]). A month another run rebuilt
//!    meanwhile is skipped only if that run read the replay at least as far on every
//!    partition (`readTo` in the jobs' results).
//!
//! A month whose events the replay may no longer hold (a partition's log no longer
//! starts where the month began, or at 0 when that is not known) is refused: partial
//! counts are never written. So is a month retention deleted daily rows of
//! (`RETAIN_DAILY_DAYS`): its totals would count the deleted days again. See
//! `docs/backfill.md`.

pub mod replay;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use sea_orm::DatabaseConnection;
use serde_json::json;
use uuid::Uuid;

use crate::store::backfill::{self, Month, MonthLock};
use crate::store::retention;
use viewpipe_runtime::db;
use viewpipe_schema::entities::JobStatus;

use crate::settings::BackfillArgs;
use replay::{MonthReplay, Replay};

/// Exit status when some months were skipped and none failed.
pub(crate) const EXIT_SKIPPED: i32 = 2;

/// How one month ended.
#[derive(Debug)]
enum Outcome {
    Rebuilt(backfill::Rebuilt),
    Skipped(String),
    Refused(String),
    Failed(String),
}

/// Runs `aggregator backfill`; returns the exit status.
pub async fn run(args: &BackfillArgs) -> anyhow::Result<i32> {
    let db = db::connect_current(&args.database_url, 4).await?;
    if args.locks {
        return list_locks(&db).await;
    }
    let (Some(from), Some(to)) = (args.from, args.to) else {
        bail!("--from and --to are required");
    };
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let months = from.through(to);
    let current = Month::of(Utc::now().date_naive());
    if let Some(live) = months
        .iter()
        .find(|m| **m >= current)
        .filter(|_| !args.force)
    {
        bail!(
            "{live} is the current month or later: its views are still arriving and being counted live, and a rebuild replaces whatever the replay does not hold. Rebuild it once it is over, or pass --force (see docs/backfill.md)"
        );
    }
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(months.len());
    for month in &months {
        let id = backfill::create_job(&db, *month, &args.topic).await?;
        backfill::update_job(
            &db,
            id,
            JobStatus::Running,
            json!({"stage": "reading the replay topic"}),
            None,
        )
        .await?;
        jobs.push((*month, id));
    }
    println!(
        "backfill of {from}..{to} from {}: jobs {}",
        args.topic,
        jobs.iter()
            .map(|(m, id)| format!("{m}={id}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let wanted: BTreeSet<Month> = months.iter().copied().collect();
    let (brokers, topic) = (args.kafka.clone(), args.topic.clone());
    let read = tokio::task::spawn_blocking(move || replay::read(&brokers, &topic, &wanted)).await?;
    let mut replay = match read {
        Ok(replay) => replay,
        Err(e) => {
            for (_, id) in &jobs {
                let error = format!("reading the replay topic failed: {e:#}");
                backfill::update_job(
                    &db,
                    *id,
                    JobStatus::Failed,
                    json!({"outcome": "failed"}),
                    Some(&error),
                )
                .await?;
            }
            return Err(e);
        }
    };
    println!(
        "read {} messages in {:.1} s ({} invalid, {} of other months)",
        replay.messages,
        started.elapsed().as_secs_f64(),
        replay.invalid,
        replay.other_months
    );

    let read_to = json!(replay
        .read_to
        .iter()
        .map(|(p, o)| (p.to_string(), json!(o)))
        .collect::<serde_json::Map<_, _>>());
    let mut work = Vec::with_capacity(jobs.len());
    let pruned_before = retention::pruned_before(&db).await?;
    for (month, id) in &jobs {
        // Checked again, authoritatively, inside the rebuild's transaction.
        let pruned = pruned_before
            .filter(|day| month.first_day() < *day)
            .map(|day| retention::pruned_reason(month.first_day(), day));
        let incomplete = match pruned {
            Some(why) => Some(why),
            None => incomplete(&db, &replay, *month, &args.topic).await?,
        };
        let data = replay.months.remove(month).unwrap_or_default();
        work.push((*month, *id, data, incomplete));
    }
    let url = args.database_url.expose().to_owned();
    let outcomes: Vec<(Month, Outcome)> = stream::iter(work)
        .map(|(month, id, data, incomplete)| {
            let (db, url, read_to) = (db.clone(), url.clone(), &read_to);
            async move {
                let outcome = match incomplete {
                    Some(why) => Outcome::Refused(why),
                    None => {
                        let read = Read {
                            data: &data,
                            read_to,
                        };
                        rebuild(&db, &url, month, id, read, args.lock_timeout).await
                    }
                };
                record(&db, id, &outcome).await;
                println!("{month}: {} (job {id})", describe(&outcome, &data));
                (month, outcome)
            }
        })
        .buffer_unordered(usize::from(args.workers))
        .collect()
        .await;

    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let rebuilt = count(|o| matches!(o, Outcome::Rebuilt(_)));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    let failed = outcomes.len() - rebuilt - skipped;
    println!(
        "backfill of {from}..{to}: {rebuilt} rebuilt, {skipped} skipped, {failed} refused or failed, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(if failed > 0 {
        1
    } else if skipped > 0 {
        EXIT_SKIPPED
    } else {
        0
    })
}

/// Why the replay may not hold all of `month`, if so: a partition whose log starts
/// past 0, unless an earlier rebuild found the month beginning at or after that start.
async fn incomplete(
    db: &DatabaseConnection,
    replay: &Replay,
    month: Month,
    topic: &str,
) -> anyhow::Result<Option<String>> {
    let trimmed: Vec<(i32, i64)> = replay
        .log_starts
        .iter()
        .filter(|(_, low)| **low > 0)
        .map(|(p, low)| (*p, *low))
        .collect();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let known = backfill::known_starts(db, month, topic).await?;
    let lost: Vec<String> = trimmed
        .into_iter()
        .filter(|(p, low)| {
            known
                .as_ref()
                .and_then(|k| k.get(p))
                .is_none_or(|start| low > start)
        })
        .map(|(p, low)| format!("partition {p} starts at offset {low}"))
        .collect();
    Ok((!lost.is_empty()).then(|| {
        format!(
            "the replay topic no longer starts at the beginning ({}): retention deleted events that may be views of {month}; refusing to write partial counts. Publish the month's history to a fresh topic (ingest publish --topic ...) and backfill from it",
            lost.join(", ")
        )
    }))
}

/// What a run read of one month: its events, and how far the replay was read.
#[derive(Clone, Copy)]
struct Read<'a> {
    data: &'a MonthReplay,
    /// `readTo` of the job results: partition -> the offset after the last read.
    read_to: &'a serde_json::Value,
}

/// Takes the month's lock and rebuilds it, unless another run that read the replay
/// at least as far rebuilt it meanwhile.
async fn rebuild(
    db: &DatabaseConnection,
    url: &str,
    month: Month,
    job: Uuid,
    read: Read<'_>,
    lock_timeout: Duration,
) -> Outcome {
    let Read { data, read_to } = read;
    // Recorded before the skip rule compares it with other runs' reads.
    let waiting = json!({"stage": "waiting for the month's lock", "readTo": read_to});
    if let Err(e) = backfill::update_job(db, job, JobStatus::Running, waiting, None).await {
        return Outcome::Failed(format!("cannot record how far the replay was read: {e}"));
    }
    let lock = match MonthLock::acquire(url, month, lock_timeout).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Outcome::Skipped(format!(
                "another backfill held the month for {lock_timeout:?}"
            ))
        }
        Err(e) => return Outcome::Failed(format!("cannot take the month's lock: {e}")),
    };
    let outcome = match backfill::rebuilt_since(db, month, job).await {
        Ok(Some(other)) => Outcome::Skipped(format!("rebuilt meanwhile by job {other}")),
        Ok(None) => {
            let rebuilding =
                json!({"stage": "rebuilding", "events": data.events, "readTo": read_to});
            let _ = backfill::update_job(db, job, JobStatus::Running, rebuilding, None).await;
            let result = |r: &backfill::Rebuilt| rebuilt_result(read, r);
            match backfill::rebuild_month(lock.db(), month, &data.counts, job, &result).await {
                Ok(rebuilt) => Outcome::Rebuilt(rebuilt),
                Err(e @ backfill::RebuildError::Pruned { .. }) => Outcome::Refused(e.to_string()),
                Err(e) => Outcome::Failed(format!("the rebuild failed, nothing changed: {e}")),
            }
        }
        Err(e) => Outcome::Failed(format!("cannot read the month's jobs: {e}")),
    };
    if let Err(e) = lock.release().await {
        tracing::warn!(%month, error = %e, "releasing the month's lock failed; it goes with the session");
    }
    outcome
}

/// The job result of a rebuilt month (written by the rebuild's own transaction).
fn rebuilt_result(read: Read<'_>, r: &backfill::Rebuilt) -> serde_json::Value {
    let data = read.data;
    json!({
        "outcome": "rebuilt",
        "events": data.events,
        "duplicates": data.duplicates,
        "keys": data.counts.len(),
        "rowsRemoved": r.rows_removed,
        "viewsRemoved": r.views_removed,
        "rowsWritten": r.rows_written,
        "viewsWritten": r.views_written,
        "visitorRowsRemoved": r.visitor_rows_removed,
        "visitorRowsWritten": r.visitor_rows_written,
        "firstOffsets": data.first_offsets.iter()
            .map(|(p, o)| (p.to_string(), json!(o)))
            .collect::<serde_json::Map<_, _>>(),
        "readTo": read.read_to,
    })
}

/// Writes the month's outcome into its job row, unless the rebuild already did.
async fn record(db: &DatabaseConnection, job: Uuid, outcome: &Outcome) {
    let (status, result, error) = match outcome {
        Outcome::Rebuilt(_) => return,
        Outcome::Skipped(why) => (
            JobStatus::Completed,
            json!({"outcome": "skipped", "reason": why}),
            None,
        ),
        Outcome::Refused(why) => (JobStatus::Failed, json!({"outcome": "refused"}), Some(why)),
        Outcome::Failed(why) => (JobStatus::Failed, json!({"outcome": "failed"}), Some(why)),
    };
    if let Err(e) = backfill::update_job(db, job, status, result, error.map(String::as_str)).await {
        tracing::warn!(%job, error = %e, "cannot record the month's outcome in its job");
    }
}

fn describe(outcome: &Outcome, data: &MonthReplay) -> String {
    match outcome {
        Outcome::Rebuilt(r) => format!(
            "rebuilt: {} views over {} keys ({} repeated eventIds dropped); daily rows {} -> {}, views {} -> {}, visitor rows {} -> {}",
            data.events,
            data.counts.len(),
            data.duplicates,
            r.rows_removed,
            r.rows_written,
            r.views_removed,
            r.views_written,
            r.visitor_rows_removed,
            r.visitor_rows_written
        ),
        Outcome::Skipped(why) => format!("skipped: {why}"),
        Outcome::Refused(why) => format!("refused: {why}"),
        Outcome::Failed(why) => format!("failed: {why}"),
    }
}

async fn list_locks(db: &DatabaseConnection) -> anyhow::Result<i32> {
    let held = backfill::held_locks(db).await?;
    if held.is_empty() {
        println!("no backfill locks are held");
    }
    for lock in held {
        println!(
            "{}: held by backend pid {} ({}, from {}, session since {})",
            lock.month,
            lock.pid,
            if lock.application.is_empty() {
                "no application name"
            } else {
                &lock.application
            },
            lock.client.as_deref().unwrap_or("a local socket"),
            lock.since
                .map_or_else(|| "unknown".to_owned(), |t| t.to_rfc3339())
        );
    }
    Ok(0)
}
