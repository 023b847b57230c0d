//! What pending counts and remembered client ids cost in memory: Redis bytes per
//! pending key and per id, and Postgres bytes per remembered id.

use crate::{loaded, measure, Args, Table};

/// Redis bytes per pending key without client ids, and per remembered id with 10%.
pub(crate) async fn memory(args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let off = [
        ("FLUSH_INTERVAL_MS", "3600000"),
        ("FLUSH_MAX_PENDING", "100000000"),
    ];
    let mut per_key = 0.0;
    for (share, seed) in [(0.0, 6), (0.1, 6)] {
        let w = args.zipf(args.memory_events, share, seed);
        let (stack, produced, _, _) = loaded(&w, args.partitions).await?;
        let run = measure::aggregator_run(&stack, &off, w.events, None).await?;
        let (used, keys) = measure::redis_bytes(&stack).await?;
        let used = used as f64;
        if share == 0.0 {
            per_key = used / produced.distinct_keys as f64;
            table.add(
                format!("Redis per pending key, {} events without ids", w.events),
                format!("{per_key:.0} bytes"),
                format!(
                    "{} Redis keys for {} pending keys",
                    keys, produced.distinct_keys
                ),
            );
        } else {
            // Client ids are remembered in Postgres (`view_event_ids`); Redis should
            // not grow with them.
            let per_id =
                (used - per_key * produced.distinct_keys as f64) / produced.with_ids as f64;
            table.add(
                format!("Redis per remembered id, {:.0}% client ids", share * 100.0),
                format!("{per_id:.0} bytes"),
                format!("{} Redis keys for {} ids", keys, produced.with_ids),
            );
            let ids = stack
                .rows(
                    "SELECT pg_total_relation_size('view_event_ids')::text, count(*)
                     FROM view_event_ids",
                )
                .await?;
            let (bytes, rows) = ids.first().map_or((0, 1), |(b, n)| {
                (b.parse::<i64>().unwrap_or(0), (*n).max(1))
            });
            table.add(
                format!(
                    "Postgres per remembered id, {:.0}% client ids",
                    share * 100.0
                ),
                format!("{} bytes", bytes / rows),
                format!("view_event_ids with its index, {rows} rows"),
            );
        }
        drop(run);
        stack.cleanup().await?;
    }
    Ok(())
}
