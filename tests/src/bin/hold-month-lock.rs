//! Takes a backfill month's lock as a backfill worker does, says `locked`, and holds
//! it until killed: the lock tests kill it with -9 to see the lock go with it.
//!
//! Usage: `hold-month-lock DATABASE_URL YYYY-MM`

use std::time::Duration;

use aggregator::store::backfill::{Month, MonthLock};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(month)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: hold-month-lock DATABASE_URL YYYY-MM");
    };
    let month: Month = month.parse().map_err(anyhow::Error::msg)?;
    let lock = MonthLock::acquire(&url, month, Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow::anyhow!("{month} stayed locked"))?;
    println!("locked");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    lock.release().await?;
    Ok(())
}
