//! A reference for Redis' cost per hash field: the workload's fields (each event's
//! total and day field, named as the aggregator names them) added by native
//! `HINCRBY`s, pipelined 1000 to a round trip, into one hash per partition as the
//! aggregator's generations are. Every [`GENERATION_EVENTS`] events the hashes are
//! deleted, as flushes delete generations, so they stay about as large as the
//! aggregator's. No script, no fence, no pre-aggregation: the hash work alone.

use redis::AsyncCommands;
use viewpipe_schema::pending::{push_day_field, push_total_field};

use crate::cost;
use crate::workload::{Generator, Workload};

/// Commands per pipeline.
const PIPELINE: usize = 1000;
/// Events per generation: about the keys the default `FLUSH_MAX_PENDING` (10,000)
/// lets a generation gather on wide traffic.
const GENERATION_EVENTS: usize = 10_000;

/// Redis' CPU seconds and the `HINCRBY`s they paid for.
pub struct Reference {
    pub seconds: f64,
    pub fields: u64,
}

impl Reference {
    /// How `seconds` over `fields` compares with this reference's cost per field.
    pub fn ratio(&self, seconds: f64, fields: u64) -> Option<f64> {
        (fields > 0 && self.fields > 0 && self.seconds > 0.0)
            .then(|| (seconds / fields as f64) / (self.seconds / self.fields as f64))
    }
}

pub async fn run(
    redis_url: &str,
    prefix: &str,
    workload: &Workload,
    partitions: usize,
) -> anyhow::Result<Reference> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let hashes: Vec<String> = (0..partitions.max(1))
        .map(|p| format!("{prefix}:reference:{{{p}}}"))
        .collect();
    let before = cost::redis_usage(redis_url).await?;
    let (mut pipe, mut queued, mut sent, mut events) = (redis::pipe(), 0, 0u64, 0usize);
    let mut field = String::with_capacity(64);
    for event in Generator::new(workload) {
        let Some(at) = chrono::DateTime::from_timestamp_millis(event.timestamp_ms) else {
            continue;
        };
        events += 1;
        let hash = &hashes[event.key_index % hashes.len()];
        field.clear();
        push_total_field(&mut field, &event.key);
        pipe.hincr(hash, &field, 1).ignore();
        field.clear();
        push_day_field(&mut field, &event.key, at.date_naive());
        pipe.hincr(hash, &field, 1).ignore();
        queued += 2;
        let generation_ends = events % GENERATION_EVENTS == 0;
        if queued >= PIPELINE || generation_ends {
            pipe.query_async::<()>(&mut conn).await?;
            pipe.clear();
            sent += queued as u64;
            queued = 0;
        }
        if generation_ends {
            delete(&mut conn, &hashes).await?;
        }
    }
    if queued > 0 {
        pipe.query_async::<()>(&mut conn).await?;
        sent += queued as u64;
    }
    delete(&mut conn, &hashes).await?;
    let after = cost::redis_usage(redis_url).await?;
    Ok(Reference {
        seconds: after.seconds - before.seconds,
        fields: sent,
    })
}

/// Deletes the hashes, one `DEL` each (each is a slot of its own on a cluster).
async fn delete(
    conn: &mut redis::aio::MultiplexedConnection,
    hashes: &[String],
) -> redis::RedisResult<()> {
    for hash in hashes {
        let _: i64 = conn.del(hash).await?;
    }
    Ok(())
}
