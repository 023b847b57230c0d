//! Reads that merge Postgres with the pending counts in Redis.
//!
//! Redis is read first, Postgres second. A pending generation counts only if
//! Postgres (in that later snapshot) has not flushed it yet, so a flush that
//! commits between the two reads is seen exactly once, through Postgres; and since
//! both reads only move forward, successive reads never decrease while only views
//! are added.
//!
//! When the read rule ([`viewpipe_schema::pending::read`]) finds partitions it may
//! not use (Redis lost them and their owner has not restored them, say), a read of a
//! key waits only when one of them is the key's own ([`TopicPartitions::own`]), and
//! answers [`ReadError::Recovering`] after [`RECOVERY_WAIT`] rather than a count that
//! went down. Any other key is answered at once from Postgres and the partitions that
//! can be read: its views are not in the others. Once a read gave up on a partition,
//! reads in the next second that wait for no other partition do not wait (nor poll
//! Postgres while waiting): they answer `Recovering` after one look.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot, Semaphore};

use viewpipe_schema::ContentKey;

use pending::{PartitionView, PendingReader};
use viewpipe_runtime::deadline;
use viewpipe_schema::Scope;

mod merge;
use merge::Merged;
use viewpipe_schema::pending::read::{self as rule, Flushed, Guard};
pub mod pending;
pub(crate) mod sql;
mod topic;
use topic::found_in;
pub use topic::TopicPartitions;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Postgres: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("the pending counts of partitions {0:?} cannot be read safely yet (Redis lost them, or their owner changed or holds them)")]
    Recovering(Vec<i32>),
}

/// How long a read waits for lost pending counts to be restored.
pub(crate) const RECOVERY_WAIT: Duration = Duration::from_secs(2);
const RECOVERY_POLL: Duration = Duration::from_millis(20);
/// Most total reads answered by one Redis round trip and one Postgres statement.
const COALESCE_MAX: usize = 256;
/// Coalesced reads in flight at once.
const COALESCE_PARALLEL: usize = 4;

/// A total read waiting to be answered with others; `None` sends it the long way.
type TotalRequest = (ContentKey, oneshot::Sender<Option<i64>>);

/// Reads counts for the HTTP API.
#[derive(Clone)]
pub struct Reader {
    db: DatabaseConnection,
    scope: Scope,
    pending: Option<PendingReader>,
    /// The partitions Postgres knew of at the last read: the ones whose Redis state a
    /// read fetches. A read that finds more in Postgres reads again.
    partitions: Arc<Mutex<Vec<i32>>>,
    /// Total reads queue here and are answered in groups (see [`Reader::total`]).
    totals: mpsc::UnboundedSender<TotalRequest>,
    /// Per partition, when a read last gave up waiting for it: reads soon after
    /// that wait for no other partition do not wait again (one waiting read per
    /// partition is enough to notice the restore).
    gave_up: Arc<Mutex<BTreeMap<i32, Instant>>>,
    /// Per partition, how far an earlier read saw Redis hold it (see [`Guard`]).
    seen: Arc<Mutex<Guard<Instant>>>,
    /// The views topic's partition count: which partitions a key's views are in.
    topic: TopicPartitions,
}

/// One day of [`Reader::daily`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayViews {
    pub day: NaiveDate,
    /// Views, pending ones included.
    pub count: i64,
    /// Estimated distinct visitors, as of the last flush; never above `count`.
    pub visitors: i64,
}

/// After a read gave up waiting, reads within this answer at once.
const FAIL_FAST_FOR: Duration = Duration::from_secs(1);

impl Reader {
    /// A reader; must be made inside a Tokio runtime (it starts the task that
    /// answers total reads in groups).
    pub fn new(db: DatabaseConnection, scope: Scope, pending: Option<PendingReader>) -> Self {
        let (totals, requests) = mpsc::unbounded_channel();
        let (dead_end, _) = mpsc::unbounded_channel();
        let reader = Self {
            db,
            scope,
            pending,
            partitions: Arc::new(Mutex::new(Vec::new())),
            totals: dead_end,
            gave_up: Arc::default(),
            seen: Arc::default(),
            topic: TopicPartitions::default(),
        };
        tokio::spawn(serve_totals(reader.clone(), requests));
        Self { totals, ..reader }
    }

    /// The views topic's partition count this reader goes by; keep it current with
    /// [`TopicPartitions::watch`].
    pub fn topic_partitions(&self) -> &TopicPartitions {
        &self.topic
    }

    /// Every view of `key` the aggregators have consumed.
    ///
    /// Reads that arrive together are answered together: one Redis round trip and one
    /// Postgres statement for up to 256 keys, each read still taking Redis first and
    /// Postgres after it. A read the group cannot answer (a partition not marked
    /// live, an error) goes the long way on its own.
    pub async fn total(&self, key: &ContentKey) -> Result<i64, ReadError> {
        self.total_within(key, RECOVERY_WAIT).await
    }

    /// Like [`Reader::total`], waiting at most `wait` for lost counts to be restored.
    pub(crate) async fn total_within(
        &self,
        key: &ContentKey,
        wait: Duration,
    ) -> Result<i64, ReadError> {
        let (reply, answer) = oneshot::channel();
        if self.totals.send((key.clone(), reply)).is_ok() {
            if let Ok(Some(total)) = answer.await {
                return Ok(total);
            }
        }
        let merged = self.merged(key, None, wait).await?;
        Ok(merged.total())
    }

    /// [`Reader::total`] of each of `keys`, in order, from one Redis round trip and
    /// one Postgres statement. A key that cannot be answered so (one of its own
    /// partitions cannot be read, a store failed) is read the long way, as a single
    /// read would be.
    pub async fn totals(&self, keys: &[ContentKey]) -> Result<Vec<i64>, ReadError> {
        let names: Vec<&str> = keys.iter().map(ContentKey::as_str).collect();
        let together = self.totals_together(&names).await;
        let mut totals = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            match together.as_ref().and_then(|t| t[i]) {
                Some(total) => totals.push(total),
                None => totals.push(self.merged(key, None, RECOVERY_WAIT).await?.total()),
            }
        }
        Ok(totals)
    }

    /// The key's views per UTC day over `from..=to`, ascending, zero-filled, pending
    /// counts included; and each day's estimated visitors as of the last flush (0
    /// without a row: no flushed view of that day carried a visitor).
    pub async fn daily(
        &self,
        key: &ContentKey,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DayViews>, ReadError> {
        let merged = self.merged(key, Some((from, to)), RECOVERY_WAIT).await?;
        let mut days: BTreeMap<NaiveDate, DayViews> = from
            .iter_days()
            .take_while(|d| *d <= to)
            .map(|day| {
                let zero = DayViews {
                    day,
                    count: 0,
                    visitors: 0,
                };
                (day, zero)
            })
            .collect();
        for (day, n) in &merged.snap.days {
            if let Some(slot) = days.get_mut(day) {
                slot.count += n;
            }
        }
        for (day, n) in &merged.snap.visitors {
            if let Some(slot) = days.get_mut(day) {
                slot.visitors = *n;
            }
        }
        for values in merged.unflushed() {
            for (slot, n) in days.values_mut().zip(&values[1..]) {
                slot.count += n;
            }
        }
        // A day has no more visitors than views: a dense sketch's estimate may
        // overshoot by about 1% when nearly every view is a new visitor.
        for slot in days.values_mut() {
            slot.visitors = slot.visitors.min(slot.count);
        }
        Ok(days.into_values().collect())
    }

    /// The key's pending counts and the Postgres snapshot taken after them, once every
    /// partition Postgres knows of was read and is marked live (or `wait` passed).
    async fn merged(
        &self,
        key: &ContentKey,
        days: Option<(NaiveDate, NaiveDate)>,
        wait: Duration,
    ) -> Result<Merged, ReadError> {
        let day_list: Vec<NaiveDate> = match days {
            Some((from, to)) => from.iter_days().take_while(|d| *d <= to).collect(),
            None => Vec::new(),
        };
        let deadline = Instant::now() + wait;
        loop {
            let known = self.known_partitions();
            let asked = Instant::now();
            let views = match &self.pending {
                Some(pending) => pending.read(key.as_str(), &day_list, &known).await?,
                None => Vec::new(),
            };
            let snap = sql::snapshot(&self.db, &self.scope, key.as_str(), days);
            let snap = deadline::within(deadline::ROUND_TRIP, snap).await?;
            if snap.gens.iter().any(|f| !known.contains(&f.partition)) {
                // A partition we did not read: read again, knowing it.
                *self.partitions.lock().unwrap_or_else(|e| e.into_inner()) =
                    snap.gens.iter().map(|f| f.partition).collect();
                if self.pending.is_some() {
                    continue;
                }
            }
            let unreadable = match self.check(&views, &snap.gens, asked) {
                Ok(()) => {
                    self.gave_up
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    return Ok(Merged { views, snap });
                }
                Err(unreadable) => unreadable,
            };
            let own = self
                .topic
                .own(key.as_str(), &unreadable, |p| found_in(&views, p, None));
            if own.is_empty() {
                // Only other keys' partitions cannot be read: this key's views are
                // in Postgres and the partitions that can.
                let views = views
                    .into_iter()
                    .filter(|v| !unreadable.contains(&v.partition))
                    .collect();
                return Ok(Merged { views, snap });
            }
            if self.give_up(&own, deadline) {
                return Err(ReadError::Recovering(own));
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }

    /// The totals of `keys` in one atomic Redis read and one Postgres statement, or
    /// `None` when a store failed or a partition is not known yet; per key, `None`
    /// when one of its own partitions cannot be read.
    async fn totals_together(&self, keys: &[&str]) -> Option<Vec<Option<i64>>> {
        for _ in 0..2 {
            let known = self.known_partitions();
            let asked = Instant::now();
            let views = match &self.pending {
                Some(pending) => pending.read_totals(keys, &known).await.ok()?,
                None => Vec::new(),
            };
            let snapshot = sql::totals_snapshot(&self.db, &self.scope, keys);
            let (mut totals, gens) = deadline::within(deadline::ROUND_TRIP, snapshot)
                .await
                .ok()?;
            if gens.iter().any(|f| !known.contains(&f.partition)) {
                *self.partitions.lock().unwrap_or_else(|e| e.into_inner()) =
                    gens.iter().map(|f| f.partition).collect();
                if self.pending.is_some() {
                    continue;
                }
            }
            let Err(unreadable) = self.check(&views, &gens, asked) else {
                add_pending(&mut totals, &views, &gens);
                return Some(totals.into_iter().map(Some).collect());
            };
            // Keys none of whose own partitions is unreadable are answered without
            // the unreadable ones; the others go the long way.
            let blocked: Vec<bool> = keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let found = |p| found_in(&views, p, Some(i));
                    !self.topic.own(key, &unreadable, found).is_empty()
                })
                .collect();
            let mut views = views;
            views.retain(|v| !unreadable.contains(&v.partition));
            add_pending(&mut totals, &views, &gens);
            let totals = totals.into_iter().zip(blocked);
            return Some(totals.map(|(t, blocked)| (!blocked).then_some(t)).collect());
        }
        None
    }

    /// True when a read waiting for `own` gives up now: at `deadline`, or at once
    /// when reads gave up on each of them less than [`FAIL_FAST_FOR`] ago.
    fn give_up(&self, own: &[i32], deadline: Instant) -> bool {
        let mut gave_up = self.gave_up.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |p: &i32| {
            gave_up
                .get(p)
                .is_some_and(|at| at.elapsed() < FAIL_FAST_FOR)
        };
        if own.iter().all(recent) {
            return true;
        }
        if Instant::now() < deadline {
            return false;
        }
        let now = Instant::now();
        gave_up.extend(own.iter().map(|p| (*p, now)));
        true
    }

    /// The read rule's check (see [`viewpipe_schema::pending::read`]) against this
    /// process's guard.
    fn check(
        &self,
        views: &[PartitionView],
        flushed: &[Flushed],
        asked: Instant,
    ) -> Result<(), Vec<i32>> {
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        rule::check(views, flushed, &mut guard, asked)
    }

    fn known_partitions(&self) -> Vec<i32> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Adds to `totals` (one per key read) the pending counts of every generation in
/// `views` Postgres has not flushed.
fn add_pending(totals: &mut [i64], views: &[PartitionView], flushed: &[Flushed]) {
    for pending in rule::unflushed(views, flushed) {
        for (total, n) in totals.iter_mut().zip(pending) {
            *total += n;
        }
    }
}

/// Answers queued total reads in groups: whatever queued while the previous groups
/// were being read forms the next one, so a lone read waits for nobody.
async fn serve_totals(reader: Reader, mut requests: mpsc::UnboundedReceiver<TotalRequest>) {
    let parallel = Arc::new(Semaphore::new(COALESCE_PARALLEL));
    while let Some(first) = requests.recv().await {
        let Ok(permit) = parallel.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < COALESCE_MAX {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let reader = reader.clone();
        tokio::spawn(async move {
            let keys: Vec<&str> = group.iter().map(|(k, _)| k.as_str()).collect();
            let totals = reader.totals_together(&keys).await;
            drop(keys);
            for (i, (_, reply)) in group.into_iter().enumerate() {
                let _ = reply.send(totals.as_ref().and_then(|t| t[i]));
            }
            drop(permit);
        });
    }
}
