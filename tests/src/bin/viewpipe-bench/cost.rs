//! CPU time by process. On a machine whose cores the broker, Postgres, Redis, the load
//! generator and the services share, a rate says more about the neighbours than about
//! the code; the CPU seconds each process spends per event carry over.

use std::time::Duration;

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database, Statement};
use viewpipe_tests::Stack;

/// The unit of `/proc/*/stat` times: `USER_HZ`, which Linux fixes at 100 for every
/// program whatever the kernel's own tick.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process' `/proc/<pid>/stat` times: its parent, and user, system, reaped
/// children's user and system time, in seconds.
struct Stat {
    ppid: u32,
    own: f64,
    reaped: f64,
}

fn stat(path: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let field = |i: usize| -> Option<f64> { fields.get(i)?.parse().ok() };
    let tick = TICKS_PER_SECOND;
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        own: (field(11)? + field(12)?) / tick,
        reaped: (field(13)? + field(14)?) / tick,
    })
}

/// CPU seconds a running process has spent so far (user + system, all threads).
pub fn process_seconds(pid: u32) -> Option<f64> {
    stat(&format!("/proc/{pid}/stat")).map(|s| s.own)
}

/// CPU seconds this process has spent so far.
pub fn own_seconds() -> f64 {
    process_seconds(std::process::id()).unwrap_or(0.0)
}

/// The Postgres server on this machine: its postmaster, whose backends (and the
/// backends it has reaped, through its children's times) are every server process.
#[derive(Clone, Copy)]
pub struct Postgres {
    postmaster: u32,
}

impl Postgres {
    /// Finds the postmaster of the server behind `db_url`; `None` when it is not on
    /// this machine (in a container, say: the backend's pid names another process
    /// here) or its processes cannot be read.
    pub async fn find(db_url: &str) -> anyhow::Result<Option<Self>> {
        let db = Database::connect(db_url).await?;
        let row = db
            .query_one(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_backend_pid()::int8 AS pid",
            ))
            .await?
            .context("no backend pid")?;
        let pid: i64 = row.try_get("", "pid")?;
        let postgres = stat(&format!("/proc/{pid}/stat")).map(|s| Self { postmaster: s.ppid });
        db.close().await?;
        let named_postgres = |p: &Self| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.postmaster))
                .is_ok_and(|c| matches!(c.trim(), "postgres" | "postmaster"))
        };
        Ok(postgres.filter(|p| named_postgres(p) && p.seconds().is_some()))
    }

    /// Waits (up to a minute) until no autovacuum worker runs, so that a run is not
    /// charged with the clean-up of the one before it.
    pub async fn wait_quiet(stack: &Stack) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let workers = stack
                .rows(
                    "SELECT 'autovacuum', count(*)::int8 FROM pg_stat_activity
                     WHERE backend_type = 'autovacuum worker'",
                )
                .await?;
            if workers.first().map_or(0, |r| r.1) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// CPU seconds of every server process so far: the postmaster, its live children
    /// and the children it has reaped. A child reaped during the scan would be
    /// missed (or counted twice): the scan is repeated until the postmaster's
    /// reaped time stands still across it. Other tenants' connections come and go
    /// meanwhile, so the scan is kept short (the postmaster's `children` list, not a
    /// walk of `/proc`) and tried many times.
    pub fn seconds(&self) -> Option<f64> {
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = stat(&format!("/proc/{}/stat", self.postmaster))?;
            let mut total = before.own + before.reaped;
            for pid in children(self.postmaster)? {
                if let Some(s) = stat(&format!("/proc/{pid}/stat")) {
                    if s.ppid == self.postmaster {
                        total += s.own + s.reaped;
                    }
                }
            }
            let after = stat(&format!("/proc/{}/stat", self.postmaster))?;
            if after.reaped == before.reaped {
                return Some(total);
            }
        }
        None
    }
}

/// Scans of the postmaster's processes tried before a reading is given up.
const ATTEMPTS: usize = 100;

/// The live children of single-threaded `pid`: its `children` list (one read), or
/// where the kernel lacks that, every process in `/proc` (the caller checks each
/// one's parent).
fn children(pid: u32) -> Option<Vec<u32>> {
    if let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return Some(
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect(),
        );
    }
    let all = std::fs::read_dir("/proc").ok()?.flatten();
    Some(
        all.filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// What the Redis server has done so far (two `INFO`s: Redis before 7 takes one
/// section at a time). Both figures are the whole server's: the Redis must serve nothing but the benchmark meanwhile.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisUsage {
    /// CPU seconds (`used_cpu_*`, forked children included).
    pub seconds: f64,
    /// `HINCRBY`s run (`INFO commandstats`; the scripts' own calls count too): one
    /// per hash field a batch adds to.
    pub hincrby: u64,
}

pub async fn redis_usage(url: &str) -> anyhow::Result<RedisUsage> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let seconds = cpu
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("used_cpu_") && !k.ends_with("_main_thread"))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum();
    Ok(RedisUsage {
        seconds,
        hincrby: hincrby_calls(&stats),
    })
}

/// `calls` of `cmdstat_hincrby` in `INFO commandstats` (0 when it never ran).
fn hincrby_calls(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_hincrby:"))
        .and_then(|fields| fields.split(',').find_map(|f| f.strip_prefix("calls=")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of the stores, read together.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stores {
    pub postgres: Option<f64>,
    pub redis: f64,
    /// `HINCRBY`s Redis ran: the hash fields batches added to.
    pub redis_fields: u64,
    /// This process: the dev broker, and the benchmark's own polling.
    pub bench: f64,
}

impl Stores {
    pub async fn read(postgres: Option<&Postgres>, redis_url: &str) -> anyhow::Result<Self> {
        let redis = redis_usage(redis_url).await?;
        Ok(Self {
            postgres: postgres.and_then(Postgres::seconds),
            redis: redis.seconds,
            redis_fields: redis.hincrby,
            bench: own_seconds(),
        })
    }

    /// What was spent from `before` to this reading.
    pub fn since(&self, before: &Stores) -> Stores {
        Stores {
            postgres: self.postgres.zip(before.postgres).map(|(a, b)| a - b),
            redis: self.redis - before.redis,
            redis_fields: self.redis_fields.saturating_sub(before.redis_fields),
            bench: self.bench - before.bench,
        }
    }
}

/// Microseconds per item, as the table prints them.
pub fn micros(seconds: f64, items: u64) -> String {
    if items == 0 {
        return "n/a".into();
    }
    format!("{:.2} µs", seconds * 1e6 / items as f64)
}

/// A pause for the stores' background work of the last run (Postgres' stats, Redis'
/// lazy frees) to land in that run's figures rather than the next one's.
pub const SETTLE: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn hincrby_calls_are_read_from_commandstats() {
        let stats = "# Commandstats\r\n\
            cmdstat_hincrbyfloat:calls=7,usec=9,usec_per_call=1.29\r\n\
            cmdstat_hincrby:calls=601075,usec=757401,usec_per_call=1.26,rejected_calls=0\r\n";
        assert_eq!(hincrby_calls(stats), 601_075);
        assert_eq!(hincrby_calls("# Commandstats\r\n"), 0);
    }

    /// Other tests share the Postgres, and their connections come and go while a
    /// benchmark reads the server's CPU: every reading must still give a figure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_seconds_are_read_while_connections_come_and_go() {
        let url = viewpipe_tests::admin_url();
        let postgres = Postgres::find(&url)
            .await
            .expect("connect to the test Postgres")
            .expect("the test Postgres runs on this machine");
        // Readings go on until the churn has made this many connections.
        const CONNECTIONS: u32 = 200;
        let made = Arc::new(AtomicU32::new(0));
        let churn: Vec<_> = (0..3)
            .map(|_| {
                let (url, made) = (url.clone(), made.clone());
                tokio::spawn(async move {
                    while made.load(Ordering::Relaxed) < CONNECTIONS {
                        let db = Database::connect(&url).await.expect("connect");
                        db.execute_unprepared("SELECT 1").await.expect("select");
                        db.close().await.expect("close");
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let (mut readings, mut missed) = (0, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while made.load(Ordering::Relaxed) < CONNECTIONS && std::time::Instant::now() < deadline {
            let p = postgres;
            readings += 1;
            if tokio::task::spawn_blocking(move || p.seconds())
                .await
                .expect("read")
                .is_none()
            {
                missed += 1;
            }
        }
        for task in churn {
            task.await.expect("churn task");
        }
        let connections = made.load(Ordering::Relaxed);
        assert!(readings >= 100, "only {readings} readings in 60 s");
        assert_eq!(
            missed, 0,
            "{missed} of {readings} readings gave no figure while {connections} connections came and went"
        );
    }
}
