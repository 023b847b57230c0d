//! Client-side deadlines on Postgres round trips.
//!
//! A connection can go silent: a NAT or load balancer drops the flow, a failover
//! leaves the old primary's socket open, and no FIN or RST ever comes. The server is
//! then not the one waiting, so `statement_timeout` cannot help, and without a
//! deadline of its own the client waits forever (with a flush in flight, everything
//! waits behind it). Every round trip the services make through [`within`] is
//! handled as a cut connection when nothing answers in time: the future is dropped
//! with its connection, which the pool then closes (see
//! `crate::db::connect`), and the caller retries on another one. For a
//! flush that is safe whatever the server did: the flush's precondition finds out
//! whether the lost attempt committed (`FlushOutcome::already_committed`).

use std::future::Future;
use std::time::Duration;

use sea_orm::DbErr;

/// Counter by `store`: round trips that got no answer within their deadline.
pub(crate) const TIMEOUTS: &str = "viewpipe_store_timeouts_total";

/// The deadline of a round trip whose work is small: a claim, an id decision, a
/// read, a job update. Far above their normal milliseconds, and far below the 30 s
/// within which counting must recover from a silent connection.
pub const ROUND_TRIP: Duration = Duration::from_secs(5);

/// What a timed-out round trip's error starts with ([`is_silent`]).
const SILENT: &str = "no answer from Postgres within";

/// Runs `work` (Postgres round trips) for at most `limit`; past it, the work is
/// dropped and the answer is an error that [`is_silent`] recognises.
pub async fn within<T, E: From<DbErr>>(
    limit: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, work).await {
        Ok(answer) => answer,
        Err(_) => {
            metrics::counter!(TIMEOUTS, "store" => "postgres").increment(1);
            Err(DbErr::Custom(format!(
                "{SILENT} {} ms: the connection is treated as cut",
                limit.as_millis()
            ))
            .into())
        }
    }
}

/// True for the error [`within`] answers when time ran out.
pub fn is_silent(e: &DbErr) -> bool {
    matches!(e, DbErr::Custom(message) if message.starts_with(SILENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_round_trip_that_never_answers_ends_at_its_deadline() {
        let started = std::time::Instant::now();
        let never = within(
            Duration::from_millis(50),
            std::future::pending::<Result<(), DbErr>>(),
        );
        let e = never.await.expect_err("no answer");
        assert!(is_silent(&e), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let answered = within(Duration::from_millis(50), async { Ok::<_, DbErr>(7) }).await;
        assert_eq!(answered.ok(), Some(7));
        assert!(!is_silent(&DbErr::Custom("other".into())));
    }
}
