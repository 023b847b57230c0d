//! Redis' floor per hash field: the workload's fields (each event's total and day
//! field, named as the aggregator names them) added by native `HINCRBY`s, pipelined
//! 1000 to a round trip, into one hash per partition as the aggregator's generations
//! are, then deleted as a flush deletes a generation. No script, no fence, no
//! pre-aggregation: what the hash work alone costs Redis.

use redis::AsyncCommands;
use viewpipe_schema::pending::{push_day_field, push_total_field};

use crate::cost;
use crate::workload::{Generator, Workload};

/// Commands per pipeline.
const PIPELINE: usize = 1000;

/// Redis' CPU seconds and the `HINCRBY`s they paid for.
pub struct Floor {
    pub seconds: f64,
    pub fields: u64,
}

pub async fn run(
    redis_url: &str,
    prefix: &str,
    workload: &Workload,
    partitions: usize,
) -> anyhow::Result<Floor> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let hashes: Vec<String> = (0..partitions.max(1))
        .map(|p| format!("{prefix}:floor:{{{p}}}"))
        .collect();
    let before = cost::redis_usage(redis_url).await?;
    let mut pipe = redis::pipe();
    let mut queued = 0;
    let mut field = String::with_capacity(64);
    for event in Generator::new(workload) {
        let hash = &hashes[event.key_index % hashes.len()];
        let day = chrono::DateTime::from_timestamp_millis(event.timestamp_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default();
        field.clear();
        push_total_field(&mut field, &event.key);
        pipe.hincr(hash, &field, 1).ignore();
        field.clear();
        push_day_field(&mut field, &event.key, day);
        pipe.hincr(hash, &field, 1).ignore();
        queued += 2;
        if queued >= PIPELINE {
            pipe.query_async::<()>(&mut conn).await?;
            pipe = redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        pipe.query_async::<()>(&mut conn).await?;
    }
    for hash in &hashes {
        let _: i64 = conn.del(hash).await?;
    }
    let after = cost::redis_usage(redis_url).await?;
    Ok(Floor {
        seconds: after.0 - before.0,
        fields: after.1.saturating_sub(before.1),
    })
}
