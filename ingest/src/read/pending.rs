//! The readers' side: what each partition's generation hashes hold for a key, and
//! whether the partition is marked live.

use chrono::NaiveDate;
use viewpipe_runtime::redis_conn::RedisConn;
use viewpipe_schema::pending::{day_field, total_field, Layout};

pub use viewpipe_schema::pending::read::PartitionView;
use viewpipe_schema::pending::read::{live_mark, replid, stamp};

/// A meta hash's `live`, `epoch`, `replid` and `owner`.
type MetaFields = (Option<i64>, Option<i64>, Option<String>, Option<String>);

/// Reads the pending counts the aggregators keep in Redis.
#[derive(Clone)]
pub struct PendingReader {
    conn: RedisConn,
    layout: Layout,
}

impl PendingReader {
    pub fn new(conn: RedisConn, layout: Layout) -> Self {
        Self { conn, layout }
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Reads what every listed partition holds for `key`: its total, then its count
    /// on each of `days`.
    pub async fn read(
        &self,
        key: &str,
        days: &[NaiveDate],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        let mut fields = vec![total_field(key)];
        fields.extend(days.iter().map(|d| day_field(key, *d)));
        self.read_fields(&fields, partitions).await
    }

    /// Reads what every listed partition holds for the totals of `keys`.
    pub(crate) async fn read_totals(
        &self,
        keys: &[&str],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        let fields: Vec<String> = keys.iter().map(|k| total_field(k)).collect();
        self.read_fields(&fields, partitions).await
    }

    /// Reads every listed partition's live mark and `fields` of both its generation
    /// hashes, atomically per partition.
    async fn read_fields(
        &self,
        fields: &[String],
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<PartitionView>> {
        // Atomic per partition: a partition's generations rotate together with its
        // live mark; partitions are independent of each other (see `read`). Each
        // transaction also asks the server's replication id, which a mark must name.
        let asks_id = |p: &i32| self.conn.opens_transaction(partitions, p);
        let raw = self
            .conn
            .per_partition(
                partitions,
                true,
                |p| self.layout.meta(*p),
                |pipe, p| {
                    if asks_id(p) {
                        pipe.cmd("INFO").arg("replication");
                    }
                    pipe.cmd("HMGET")
                        .arg(self.layout.meta(*p))
                        .arg("live")
                        .arg("epoch")
                        .arg("replid")
                        .arg("owner");
                    for parity in 0..2 {
                        pipe.cmd("HMGET")
                            .arg(self.layout.gen(*p, parity))
                            .arg("@g")
                            .arg("@o")
                            .arg(fields);
                    }
                },
            )
            .await?;
        let mut it = raw.into_iter();
        let mut next = || it.next().unwrap_or(redis::Value::Nil);
        let mut out = Vec::with_capacity(partitions.len());
        let mut server = None;
        for p in partitions {
            if asks_id(p) {
                server = Some(redis::from_redis_value::<String>(next())?);
            }
            let (live, epoch, marked_on, owner): MetaFields = redis::from_redis_value(next())?;
            let server = server.as_deref().and_then(replid);
            let marked_on = stamp(marked_on.as_deref(), owner.as_deref(), epoch);
            let mut view = PartitionView {
                partition: *p,
                live: live_mark(live, marked_on, server),
                epoch: epoch.unwrap_or(0),
                gens: Vec::new(),
                applied: Vec::new(),
            };
            for _ in 0..2 {
                let values: Vec<Option<i64>> = redis::from_redis_value(next())?;
                if let [Some(gen), applied, rest @ ..] = values.as_slice() {
                    view.applied.push((*gen, applied.unwrap_or(-1)));
                    view.gens
                        .push((*gen, rest.iter().map(|v| v.unwrap_or(0)).collect()));
                }
            }
            out.push(view);
        }
        Ok(out)
    }
}
