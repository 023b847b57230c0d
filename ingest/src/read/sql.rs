//! The reads' statements: a key's flushed counts with every partition's
//! `flushed_gen`, in one snapshot.

use chrono::NaiveDate;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use viewpipe_runtime::sql::stmt;
use viewpipe_schema::pending::read::Flushed;
use viewpipe_schema::Scope;

/// What [`snapshot`] reads: the arrays run in parallel (`partitions` with `gens`
/// and `nexts`, `days` with `counts`).
#[derive(FromQueryResult)]
struct SnapshotRow {
    total: i64,
    partitions: Vec<i32>,
    gens: Vec<i64>,
    nexts: Vec<i64>,
    epochs: Vec<i64>,
    days: Vec<NaiveDate>,
    counts: Vec<i64>,
    visitor_days: Vec<NaiveDate>,
    visitors: Vec<i64>,
}

#[derive(FromQueryResult)]
struct TopRow {
    id: String,
    n: i64,
}

/// One key's row of [`totals_snapshot`]: its total, and in every row the same
/// partitions (`p`), their `flushed_gen` (`f`), `next_offset` (`n`, -1 for NULL)
/// and `epoch` (`e`), NULL without partition rows.
#[derive(FromQueryResult)]
struct KeyTotal {
    total: i64,
    p: Option<Vec<i32>>,
    f: Option<Vec<i64>>,
    n: Option<Vec<i64>>,
    e: Option<Vec<i64>>,
}

/// Zips the parallel arrays of the partition rows.
fn partition_rows(
    partitions: Vec<i32>,
    gens: Vec<i64>,
    nexts: Vec<i64>,
    epochs: Vec<i64>,
) -> Vec<Flushed> {
    partitions
        .into_iter()
        .zip(gens)
        .zip(nexts)
        .zip(epochs)
        .map(|(((partition, gen), next_offset), epoch)| Flushed {
            partition,
            gen,
            next_offset,
            epoch,
        })
        .collect()
}

/// What Postgres holds for one key, and every partition's `flushed_gen`, read in one
/// statement (one snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub total: i64,
    /// Daily rows in the asked range, ascending (days without a row are absent).
    pub days: Vec<(NaiveDate, i64)>,
    /// Estimated visitors of the days in the asked range that have a row, ascending.
    pub visitors: Vec<(NaiveDate, i64)>,
    /// `flushed_gen` and `next_offset` of every partition of the scope.
    pub gens: Vec<Flushed>,
}

/// Reads a key's flushed total, its daily rows in `days` (inclusive; `None` for
/// none) and every partition's `flushed_gen`.
pub(crate) async fn snapshot(
    db: &impl ConnectionTrait,
    scope: &Scope,
    key: &str,
    days: Option<(NaiveDate, NaiveDate)>,
) -> Result<Snapshot, DbErr> {
    // Without a range the bounds are NULL, and `BETWEEN` matches no row.
    let (from, to) = (days.map(|d| d.0), days.map(|d| d.1));
    let row = SnapshotRow::find_by_statement(stmt(
        "SELECT COALESCE((SELECT total FROM view_counter_total WHERE key = $1), 0)::int8 AS total,
                ARRAY(SELECT partition FROM aggregator_partitions
                      WHERE consumer_group = $2 AND topic = $3 ORDER BY partition) AS partitions,
                ARRAY(SELECT flushed_gen FROM aggregator_partitions
                      WHERE consumer_group = $2 AND topic = $3 ORDER BY partition) AS gens,
                ARRAY(SELECT COALESCE(next_offset, -1) FROM aggregator_partitions
                      WHERE consumer_group = $2 AND topic = $3 ORDER BY partition) AS nexts,
                ARRAY(SELECT epoch FROM aggregator_partitions
                      WHERE consumer_group = $2 AND topic = $3 ORDER BY partition) AS epochs,
                ARRAY(SELECT day FROM view_counter_daily
                      WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day) AS days,
                ARRAY(SELECT count FROM view_counter_daily
                      WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day) AS counts,
                ARRAY(SELECT day FROM view_visitors_daily
                      WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day) AS visitor_days,
                ARRAY(SELECT visitors FROM view_visitors_daily
                      WHERE key = $1 AND day BETWEEN $4 AND $5 ORDER BY day) AS visitors",
        vec![
            key.into(),
            scope.group.clone().into(),
            scope.topic.clone().into(),
            from.into(),
            to.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound("snapshot query returned no row".into()))?;
    Ok(Snapshot {
        total: row.total,
        days: row.days.into_iter().zip(row.counts).collect(),
        visitors: row.visitor_days.into_iter().zip(row.visitors).collect(),
        gens: partition_rows(row.partitions, row.gens, row.nexts, row.epochs),
    })
}

/// The most viewed keys of `namespace` over `from..=to` (flushed counts), count
/// descending, ties by content id ascending (byte order). Returns `(content id, count)`.
pub async fn top(
    db: &impl ConnectionTrait,
    namespace: &str,
    from: NaiveDate,
    to: NaiveDate,
    limit: u32,
) -> Result<Vec<(String, i64)>, DbErr> {
    let rows = TopRow::find_by_statement(stmt(
        "SELECT substr(key, length($1) + 2) AS id, SUM(count)::int8 AS n
         FROM view_counter_daily
         WHERE day BETWEEN $2 AND $3 AND starts_with(key, $1 || ':')
         GROUP BY key
         ORDER BY n DESC, key COLLATE \"C\" ASC
         LIMIT $4",
        vec![
            namespace.into(),
            from.into(),
            to.into(),
            i64::from(limit).into(),
        ],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.n)).collect())
}

/// The flushed totals of `keys` and every partition's `flushed_gen`, in one
/// statement (one snapshot): what [`snapshot`] reads, for many keys at once.
pub(crate) async fn totals_snapshot(
    db: &impl ConnectionTrait,
    scope: &Scope,
    keys: &[&str],
) -> Result<(Vec<i64>, Vec<Flushed>), DbErr> {
    let rows = KeyTotal::find_by_statement(stmt(
        "WITH g AS (
             SELECT array_agg(partition ORDER BY partition) AS p,
                    array_agg(flushed_gen ORDER BY partition) AS f,
                    array_agg(COALESCE(next_offset, -1) ORDER BY partition) AS n,
                    array_agg(epoch ORDER BY partition) AS e
             FROM aggregator_partitions WHERE consumer_group = $2 AND topic = $3)
         SELECT COALESCE(t.total, 0)::int8 AS total, g.p, g.f, g.n, g.e
         FROM unnest($1::text[]) WITH ORDINALITY AS k(key, i)
         LEFT JOIN view_counter_total t ON t.key = k.key
         CROSS JOIN g
         ORDER BY k.i",
        vec![
            keys.iter()
                .map(|k| (*k).to_owned())
                .collect::<Vec<String>>()
                .into(),
            scope.group.clone().into(),
            scope.topic.clone().into(),
        ],
    ))
    .all(db)
    .await?;
    let mut totals = Vec::with_capacity(rows.len());
    let mut gens = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        totals.push(row.total);
        if i == 0 {
            gens = partition_rows(
                row.p.unwrap_or_default(),
                row.f.unwrap_or_default(),
                row.n.unwrap_or_default(),
                row.e.unwrap_or_default(),
            );
        }
    }
    Ok((totals, gens))
}
