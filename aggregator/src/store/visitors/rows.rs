//! `view_visitors_daily`: one row per key and UTC day, its sketch and the sketch's
//! estimate, merged by the flush inside its transaction and replaced by a backfill.

use std::borrow::Cow;

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::Sketch;
use crate::store::counts::Counts;
use viewpipe_runtime::sql::stmt;

/// Key-days per statement: a dense sketch is 12 KB, so a chunk stays near 12 MB.
const CHUNK: usize = 1000;

/// A stored sketch, by its position in the chunk (from 1).
#[derive(FromQueryResult)]
struct Stored {
    i: i64,
    sketch: Vec<u8>,
}

#[derive(FromQueryResult)]
struct Deleted {
    n: i64,
}

/// Merges the visitor sketches of `counts` (a key-day may appear in several) into
/// their rows, in (key, day) order, inside the caller's transaction; returns the rows
/// written. Writes nothing when no view carried a visitor.
///
/// Every row is locked before it is read: rows that do not exist yet are inserted
/// empty first. Two transactions that both found a row missing would otherwise both
/// insert it, and the second's upsert would drop the first one's visitors.
pub async fn merge_into(txn: &impl ConnectionTrait, counts: &[&Counts]) -> Result<u64, DbErr> {
    let mut touched: Vec<(&str, NaiveDate, &Sketch)> = counts
        .iter()
        .flat_map(|c| c.iter())
        .flat_map(|(key, c)| c.visitors().map(move |(day, sketch)| (key, day, sketch)))
        .collect();
    if touched.is_empty() {
        return Ok(0);
    }
    touched.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut merged: Vec<(&str, NaiveDate, Cow<'_, Sketch>)> = Vec::with_capacity(touched.len());
    for (key, day, sketch) in touched {
        match merged.last_mut() {
            Some((k, d, mine)) if *k == key && *d == day => mine.to_mut().merge(sketch),
            _ => merged.push((key, day, Cow::Borrowed(sketch))),
        }
    }
    let mut written = 0;
    for chunk in merged.chunks(CHUNK) {
        written += merge_chunk(txn, chunk).await?;
    }
    Ok(written)
}

async fn merge_chunk(
    txn: &impl ConnectionTrait,
    chunk: &[(&str, NaiveDate, Cow<'_, Sketch>)],
) -> Result<u64, DbErr> {
    let keys: Vec<String> = chunk.iter().map(|(k, _, _)| (*k).to_owned()).collect();
    let days: Vec<NaiveDate> = chunk.iter().map(|(_, d, _)| *d).collect();
    txn.execute(stmt(
        "INSERT INTO view_visitors_daily (key, day, visitors, sketch)
         SELECT key, day, 0, ''::bytea
         FROM unnest($1::text[], $2::date[]) WITH ORDINALITY AS u(key, day, i)
         ORDER BY i
         ON CONFLICT (key, day) DO NOTHING",
        vec![keys.clone().into(), days.clone().into()],
    ))
    .await?;
    let stored = Stored::find_by_statement(stmt(
        "SELECT u.i, v.sketch
         FROM unnest($1::text[], $2::date[]) WITH ORDINALITY AS u(key, day, i)
         JOIN view_visitors_daily v ON v.key = u.key AND v.day = u.day
         ORDER BY u.i
         FOR UPDATE OF v",
        vec![keys.into(), days.into()],
    ))
    .all(txn)
    .await?;
    let (mut keys, mut days) = (Vec::new(), Vec::new());
    let (mut estimates, mut sketches) = (Vec::new(), Vec::new());
    for row in stored {
        let Some((key, day, ours)) = usize::try_from(row.i - 1).ok().and_then(|i| chunk.get(i))
        else {
            continue;
        };
        let mut sketch = match Sketch::decode(&row.sketch) {
            Ok(sketch) => sketch,
            Err(e) => {
                // Left as it is (a newer release's format, or damage): views stay exact,
                // only this flush's visitors of that day are not added to it.
                tracing::warn!(key, %day, error = %e, "a stored visitor sketch cannot be read; left unchanged");
                continue;
            }
        };
        sketch.merge(ours);
        let bytes = sketch.encode();
        if bytes == row.sketch {
            continue; // nobody new (a flush counted again after a crash, say)
        }
        keys.push((*key).to_owned());
        days.push(*day);
        estimates.push(sketch.estimate() as i64);
        sketches.push(bytes);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let written = keys.len() as u64;
    txn.execute(stmt(
        "UPDATE view_visitors_daily AS v
         SET visitors = u.visitors, sketch = u.sketch, updated_at = now()
         FROM unnest($1::text[], $2::date[], $3::int8[], $4::bytea[])
              AS u(key, day, visitors, sketch)
         WHERE v.key = u.key AND v.day = u.day",
        vec![keys.into(), days.into(), estimates.into(), sketches.into()],
    ))
    .await?;
    Ok(written)
}

/// Replaces the rows of days `from..until` with the sketches of `counts` (which hold
/// views of those days only), inside the caller's transaction: keys without visitors
/// in `counts` lose their rows there. Returns the rows removed and written.
pub(crate) async fn replace_days(
    txn: &impl ConnectionTrait,
    from: NaiveDate,
    until: NaiveDate,
    counts: &Counts,
) -> Result<(u64, u64), DbErr> {
    let removed = Deleted::find_by_statement(stmt(
        "WITH gone AS (DELETE FROM view_visitors_daily WHERE day >= $1 AND day < $2 RETURNING 1)
         SELECT count(*)::int8 AS n FROM gone",
        vec![from.into(), until.into()],
    ))
    .one(txn)
    .await?
    .map_or(0, |r| r.n as u64);
    let written = merge_into(txn, &[counts]).await?;
    Ok((removed, written))
}
