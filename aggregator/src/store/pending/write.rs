//! The aggregators' side: applying batches as a compare-and-set on the offset,
//! fencing a partition on take-over, restoring a generation from memory, marks and
//! cleanup.

use std::sync::Arc;

use viewpipe_schema::pending::read::{live_mark, replid};

use super::{for_each_field, Owner, PendingStore, HASH_TTL_SECS, RESTORE_CHUNK};
use crate::store::counts::Counts;

/// One partition's batch, pre-aggregated.
#[derive(Clone, Debug)]
pub struct PartitionBatch {
    pub partition: i32,
    pub epoch: i64,
    /// The writer's claim token ([`Owner::token`]).
    pub token: u128,
    pub gen: i64,
    /// The offset the writer believes Redis holds for this generation (-1: none).
    pub prev: i64,
    /// The batch's last offset.
    pub last: i64,
    /// Mark the partition live (the writer is caught up and vouches for it).
    pub live: bool,
    /// What the batch adds.
    pub counts: Arc<Counts>,
}

/// What applying one partition's batch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// Added; Redis now holds the generation up to the batch's last offset. `live`:
    /// the partition is marked live under the writer's epoch.
    Added { live: bool },
    /// Redis holds the generation up to this offset, which is not `prev`: at or past
    /// the batch's end the batch is in already; below it the writer must restore.
    At(i64),
    /// A newer owner or a later generation has written this partition: the writer
    /// lost it and must stop counting it.
    Stale,
}

/// What a new owner learns when it fences a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// Redis holds the generation up to this offset (-1: nothing).
    Applied(i64),
    /// A newer owner fenced the partition already.
    Stale,
    /// Redis has written a generation more than one past what Postgres expects:
    /// Postgres went back in time (see `docs/exactly-once.md`).
    Ahead(i64),
}

impl PendingStore {
    /// Applies each partition's batch (one script call each, one round trip).
    pub async fn apply(&self, batches: &[PartitionBatch]) -> redis::RedisResult<Vec<Applied>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let answers: Vec<Vec<i64>> = self
            .query_scripts(
                batches,
                false,
                |b| self.layout.meta(b.partition),
                |pipe, b| {
                    let cmd = pipe
                        .cmd("EVALSHA")
                        .arg(self.apply_script.get_hash())
                        .arg(2)
                        .arg(self.layout.meta(b.partition))
                        .arg(self.layout.gen(b.partition, b.gen))
                        .arg(b.epoch)
                        .arg(b.gen)
                        .arg(b.prev)
                        .arg(b.last)
                        .arg(if b.live { "1" } else { "0" })
                        .arg(HASH_TTL_SECS)
                        .arg(
                            Owner {
                                epoch: b.epoch,
                                token: b.token,
                            }
                            .field(),
                        );
                    for_each_field(&b.counts, |field, n| {
                        cmd.arg(field).arg(n);
                    });
                },
            )
            .await?;
        Ok(answers
            .into_iter()
            .map(|a| match a.as_slice() {
                [1, marked, ..] => Applied::Added { live: *marked == 1 },
                [-2, at, ..] => Applied::At(*at),
                _ => Applied::Stale,
            })
            .collect())
    }

    /// Fences `partition` for a new owner with `epoch`, which writes generation `gen`.
    pub async fn take_over(
        &self,
        partition: i32,
        epoch: i64,
        gen: i64,
    ) -> redis::RedisResult<TakeOver> {
        let owner = Owner { epoch, token: 0 };
        Ok(self.take_over_vouched(partition, owner, gen).await?.0)
    }

    /// [`PendingStore::take_over`], and whether Redis lost the partition's counts
    /// since an owner last marked it live (its meta hash was gone at a take-over of
    /// a partition owned before, `epoch` above 1): what was read of it may reach
    /// further than anything Redis holds.
    pub async fn take_over_vouched(
        &self,
        partition: i32,
        owner: Owner,
        gen: i64,
    ) -> redis::RedisResult<(TakeOver, bool)> {
        let epoch = owner.epoch;
        let (answer,): (Vec<i64>,) = self
            .query_scripts(
                &[partition],
                false,
                |p| self.layout.meta(*p),
                |pipe, p| {
                    pipe.cmd("EVALSHA")
                        .arg(self.take_over_script.get_hash())
                        .arg(3)
                        .arg(self.layout.meta(*p))
                        .arg(self.layout.gen(*p, gen))
                        .arg(self.layout.gen(*p, gen + 1))
                        .arg(epoch)
                        .arg(gen)
                        .arg(if epoch > 1 { "1" } else { "0" })
                        .arg(owner.field());
                },
            )
            .await?;
        let lost = answer.get(2) == Some(&1);
        let taken = match answer.as_slice() {
            [1, applied, ..] => TakeOver::Applied(*applied),
            [-3, ahead, ..] => TakeOver::Ahead(*ahead),
            _ => TakeOver::Stale,
        };
        Ok((taken, lost))
    }

    /// Rewrites generation `gen` of `partition` as exactly `fields` (absolute values),
    /// applied up to `last`, and marks the partition live if `live`. The chunks run
    /// as one transaction (`MULTI`; the partition's keys share one slot), so nothing
    /// (a wipe, a failover's flush) can fall between the first chunk, which empties
    /// the hash, and the last, which marks the partition live over it.
    pub async fn restore(
        &self,
        partition: i32,
        owner: Owner,
        gen: i64,
        last: i64,
        live: bool,
        fields: &[(String, i64)],
    ) -> redis::RedisResult<Applied> {
        let chunks: Vec<&[(String, i64)]> = if fields.is_empty() {
            vec![&[]]
        } else {
            fields.chunks(RESTORE_CHUNK).collect()
        };
        let n = chunks.len();
        let answers: Vec<i64> = self
            .query_scripts(
                &[partition],
                true,
                |p| self.layout.meta(*p),
                |pipe, _| {
                    for (i, chunk) in chunks.iter().enumerate() {
                        self.restore_chunk(pipe, partition, owner, gen, (i, n), last, live, chunk);
                    }
                },
            )
            .await?;
        Ok(if answers.contains(&-1) {
            Applied::Stale
        } else {
            Applied::Added { live }
        })
    }

    /// Chunk `i` of `n` of a restore (see [`PendingStore::restore`]).
    #[allow(clippy::too_many_arguments)]
    fn restore_chunk(
        &self,
        pipe: &mut redis::Pipeline,
        partition: i32,
        owner: Owner,
        gen: i64,
        (i, n): (usize, usize),
        last: i64,
        live: bool,
        chunk: &[(String, i64)],
    ) {
        {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.restore_script.get_hash())
                .arg(2)
                .arg(self.layout.meta(partition))
                .arg(self.layout.gen(partition, gen))
                .arg(owner.epoch)
                .arg(gen)
                .arg(if i == 0 { "1" } else { "0" })
                .arg(if i + 1 == n { "1" } else { "0" })
                .arg(last)
                .arg(if live { "1" } else { "0" })
                .arg(HASH_TTL_SECS)
                .arg(owner.field());
            for (field, value) in chunk {
                cmd.arg(field.as_str()).arg(*value);
            }
        }
    }

    /// Deletes a flushed generation's hash (if it still holds that generation).
    pub(crate) async fn drop_generation(&self, partition: i32, gen: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(
            "if redis.call('HGET', KEYS[1], '@g') == ARGV[1] then redis.call('UNLINK', KEYS[1]) end",
        );
        script
            .key(self.layout.gen(partition, gen))
            .arg(gen)
            .invoke_async(&mut conn)
            .await
    }

    /// How far either generation hash holds generation `gen` or later (-1: neither),
    /// read only.
    pub async fn extent(&self, partition: i32, gen: i64) -> redis::RedisResult<i64> {
        let raw = self
            .conn
            .per_partition(
                &[partition],
                true,
                |p| self.layout.meta(*p),
                |pipe, p| {
                    for parity in 0..2 {
                        pipe.cmd("HMGET")
                            .arg(self.layout.gen(*p, parity))
                            .arg("@g")
                            .arg("@o");
                    }
                },
            )
            .await?;
        let mut to = -1;
        for value in raw {
            let hash: Vec<Option<i64>> = redis::from_redis_value(value)?;
            if let [Some(g), Some(o)] = hash.as_slice() {
                if *g >= gen {
                    to = to.max(*o);
                }
            }
        }
        Ok(to)
    }

    /// For each `(partition, generation)`: the epoch the partition is marked live
    /// under (`None`: not marked, or marked on another data set than this server's, so
    /// Redis may have lost pending counts), and the offset Redis holds that generation
    /// applied up to (`None`: no such hash).
    pub async fn marks(
        &self,
        partitions: &[(i32, i64)],
    ) -> redis::RedisResult<Vec<(Option<i64>, Option<i64>)>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let raw = self
            .conn
            .per_partition(
                partitions,
                true,
                |(p, _)| self.layout.meta(*p),
                |pipe, item| {
                    let (p, gen) = item;
                    if self.conn.opens_transaction(partitions, item) {
                        pipe.cmd("INFO").arg("replication");
                    }
                    pipe.cmd("HMGET")
                        .arg(self.layout.meta(*p))
                        .arg("live")
                        .arg("replid");
                    pipe.cmd("HMGET")
                        .arg(self.layout.gen(*p, *gen))
                        .arg("@g")
                        .arg("@o");
                },
            )
            .await?;
        let mut it = raw.into_iter();
        let mut out = Vec::with_capacity(partitions.len());
        let mut server = None;
        for item in partitions {
            let gen = &item.1;
            let mut next = || it.next().unwrap_or(redis::Value::Nil);
            if self.conn.opens_transaction(partitions, item) {
                server = Some(redis::from_redis_value::<String>(next())?);
            }
            let (live, marked_on): (Option<i64>, Option<String>) = redis::from_redis_value(next())?;
            let live = live_mark(
                live,
                marked_on.as_deref(),
                server.as_deref().and_then(replid),
            );
            let hash: Vec<Option<i64>> = redis::from_redis_value(next())?;
            let applied = match hash.as_slice() {
                [Some(g), Some(o)] if g == gen => Some(*o),
                _ => None,
            };
            out.push((live, applied));
        }
        Ok(out)
    }

    /// Every key of this deployment's pending state.
    pub async fn keys(&self) -> redis::RedisResult<Vec<String>> {
        self.conn.scan(&self.layout.pattern()).await
    }

    /// Deletes `keys` (as [`PendingStore::keys`] listed them); returns how many
    /// existed.
    pub(crate) async fn delete(&self, keys: &[String]) -> redis::RedisResult<u64> {
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let counts = self
                .conn
                .per_partition(chunk, false, String::clone, |pipe, key| {
                    pipe.cmd("DEL").arg(key);
                })
                .await?;
            deleted += redis::from_redis_value::<Vec<u64>>(redis::Value::Array(counts))?
                .iter()
                .sum::<u64>();
        }
        Ok(deleted)
    }

    /// Runs script calls, the ones `build` adds for each of `items` (see
    /// [`RedisConn::per_partition`](viewpipe_runtime::redis_conn::RedisConn::per_partition)). The scripts are safe to run twice (the apply is
    /// a compare-and-set, the others are idempotent), so after Redis lost its script
    /// cache (a restart) they are loaded and everything is sent again.
    async fn query_scripts<I, T: redis::FromRedisValue>(
        &self,
        items: &[I],
        atomic: bool,
        slot_key: impl Fn(&I) -> String,
        build: impl Fn(&mut redis::Pipeline, &I),
    ) -> redis::RedisResult<T> {
        let answers = match self
            .conn
            .per_partition(items, atomic, &slot_key, &build)
            .await
        {
            // Inside a transaction the missing script aborts the EXEC.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    || e.to_string().contains("NOSCRIPT") =>
            {
                let mut conn = self.conn.clone();
                for script in [
                    &self.apply_script,
                    &self.restore_script,
                    &self.take_over_script,
                ] {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                self.conn
                    .per_partition(items, atomic, &slot_key, &build)
                    .await?
            }
            other => other?,
        };
        Ok(redis::from_redis_value(redis::Value::Array(answers))?)
    }
}
