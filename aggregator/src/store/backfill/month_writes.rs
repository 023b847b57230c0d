//! The month write lock: what keeps a month's rebuild and the live flushes that write
//! rows of that month apart.
//!
//! Under READ COMMITTED a rebuild's `DELETE` does not see a daily row that a live
//! flush inserted but had not committed when the statement began. The row would
//! survive the delete, the replay's views would be added onto it, and the month
//! would no longer be the replay's. So every live flush takes, shared, the write
//! lock of each month its rows touch, and the rebuild takes its month's lock
//! exclusively before it reads anything. Both are transaction-scoped advisory locks:
//! they go with the commit or rollback, and with the session if it dies.
//!
//! Flushes never wait for one another on it; a flush of a month being rebuilt waits
//! for the rebuild's commit, and a rebuild waits for the flushes of its month already
//! in flight. Flushes take their months in ascending order, and a rebuild takes one
//! month only, so the lock adds no deadlock.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DbErr};

use super::Month;
use crate::store::counts::Counts;
use viewpipe_runtime::sql::stmt;

/// The first key of every month write lock, distinct from the backfill's session
/// lock ([`super::LOCK_CLASS`]) and from other users of advisory locks.
pub(crate) const WRITE_LOCK_CLASS: i32 = 0x7670_6d6f; // "vpmo"

/// Takes, shared until `txn` ends, the write lock of every month that `counts` hold
/// views or visitors of, in ascending order. A live flush calls it once its
/// partitions are locked and checked, before it writes a counter row.
pub(crate) async fn lock_months(
    txn: &impl ConnectionTrait,
    counts: &[&Counts],
) -> Result<(), DbErr> {
    let months: BTreeSet<i32> = counts
        .iter()
        .flat_map(|c| c.iter())
        .flat_map(|(_, c)| {
            let views = c.days().iter().map(|(day, _)| *day);
            views.chain(c.visitors().map(|(day, _)| day))
        })
        .map(|day| Month::of(day).lock_key())
        .collect();
    for month in months {
        txn.execute(stmt(
            "SELECT pg_advisory_xact_lock_shared($1, $2)",
            vec![WRITE_LOCK_CLASS.into(), month.into()],
        ))
        .await?;
    }
    Ok(())
}

/// Takes `month`'s write lock exclusively until `txn` ends: it waits for the flushes
/// of the month in flight, and holds off new ones until the rebuild commits.
pub(super) async fn lock_for_rebuild(
    txn: &impl ConnectionTrait,
    month: Month,
) -> Result<(), DbErr> {
    txn.execute(stmt(
        "SELECT pg_advisory_xact_lock($1, $2)",
        vec![WRITE_LOCK_CLASS.into(), month.lock_key().into()],
    ))
    .await?;
    Ok(())
}
