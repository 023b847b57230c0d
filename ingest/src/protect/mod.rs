//! Protection of the public API, each part off unless its setting is given:
//! write keys (`WRITE_KEYS`), rate limits per client address and per app
//! (`RATE_LIMIT_PER_ADDR`, `RATE_LIMIT_PER_KEY`, `TRUSTED_PROXY_HEADER`), crawler
//! views dropped (`BOT_FILTER`), a read key (`READ_KEY`) and `/metrics` on a
//! listener of its own (`METRICS_ADDR`).
//!
//! The handlers take a [`access::WriteAccess`] or [`access::ReadAccess`] before
//! their body, so a request without its key is refused before anything is read or
//! published.

pub mod access;
pub mod bots;
pub mod client;
pub mod keys;
pub mod rate;
pub mod settings;

use std::net::SocketAddr;

use anyhow::bail;
use axum::http::HeaderName;
use tokio::sync::{Semaphore, SemaphorePermit};

use viewpipe_schema::Namespaces;

use crate::error::ApiError;
use crate::metrics as m;
use crate::protect::bots::{BotFilter, Bots};
use crate::protect::client::ClientAddr;
use crate::protect::keys::{ApiKey, WriteKeys};
use crate::protect::rate::{Limiter, Rate, Refused};

pub use settings::ProtectSettings;

/// The header a write or read key may be sent in.
pub(crate) const KEY_HEADER: HeaderName = HeaderName::from_static("x-viewpipe-key");
/// The query parameter a write or read key may be sent in (for `sendBeacon`, which
/// cannot set headers).
pub(crate) const KEY_PARAM: &str = "key";

/// The protection this ingest runs with, built once from [`ProtectSettings`].
#[derive(Default)]
pub struct Protect {
    pub write_keys: Option<WriteKeys>,
    pub read_key: Option<ApiKey>,
    pub per_addr: Option<Limiter<ClientAddr>>,
    /// `READ_RATE_LIMIT_PER_ADDR`: reads per client address.
    pub reads_per_addr: Option<Limiter<ClientAddr>>,
    /// `MAX_TOP_READS`: permits for the range scans of `GET /api/views/top`
    /// (`None`: unbounded, as in [`Protect::default`]).
    pub top_reads: Option<Semaphore>,
    /// Keyed by the app's index in [`WriteKeys::apps`].
    pub per_key: Option<Limiter<usize>>,
    pub proxy_header: Option<HeaderName>,
    pub bots: Option<Bots>,
    pub metrics_addr: Option<SocketAddr>,
}

impl Protect {
    /// Checks the settings against each other and `NAMESPACES`; an error names the
    /// setting at fault.
    pub fn build(settings: &ProtectSettings, namespaces: &Namespaces) -> anyhow::Result<Self> {
        if settings.rate_limit_per_key.is_some() && settings.write_keys.is_none() {
            bail!("RATE_LIMIT_PER_KEY limits the apps of WRITE_KEYS, which is not set");
        }
        if let Some(keys) = &settings.write_keys {
            if let Some(ns) = keys.namespaces().find(|ns| !namespaces.allows(ns)) {
                bail!(
                    "WRITE_KEYS names namespace {ns:?}, which NAMESPACES does not allow (allowed: {})",
                    namespaces.describe()
                );
            }
        }
        Ok(Self {
            write_keys: settings.write_keys.clone(),
            read_key: settings.read_key.clone(),
            per_addr: settings.rate_limit_per_addr.map(Limiter::new),
            reads_per_addr: settings.read_rate_limit_per_addr.map(Limiter::new),
            top_reads: Some(Semaphore::new(settings.max_top_reads as usize)),
            per_key: settings.rate_limit_per_key.map(Limiter::new),
            proxy_header: settings.trusted_proxy_header.clone().map(|h| h.0),
            bots: (settings.bot_filter == BotFilter::Drop).then(Bots::new),
            metrics_addr: settings.metrics_addr,
        })
    }

    /// Says at start-up what is on (app names, never keys). `visitor_ids`:
    /// `VISITOR_HASH` is on, which also reads the client's address.
    pub fn log(&self, visitor_ids: bool) {
        let rate = |r: Option<&Rate>| r.map_or_else(|| "off".to_owned(), Rate::to_string);
        tracing::info!(
            write_keys = ?self.write_keys.as_ref().map(WriteKeys::apps),
            read_key = self.read_key.is_some(),
            rate_limit_per_addr = %rate(self.per_addr.as_ref().map(|l| &l.rate)),
            rate_limit_per_key = %rate(self.per_key.as_ref().map(|l| &l.rate)),
            read_rate_limit_per_addr = %rate(self.reads_per_addr.as_ref().map(|l| &l.rate)),
            trusted_proxy_header = ?self.proxy_header.as_ref().map(HeaderName::as_str),
            bot_filter = if self.bots.is_some() { "drop" } else { "off" },
            "API protection"
        );
        if self.proxy_header.is_some()
            && self.per_addr.is_none()
            && self.reads_per_addr.is_none()
            && !visitor_ids
        {
            tracing::warn!(
                "TRUSTED_PROXY_HEADER is set but unused: it serves RATE_LIMIT_PER_ADDR, READ_RATE_LIMIT_PER_ADDR and VISITOR_HASH, all off"
            );
        }
    }

    /// Takes `cost` views from the client's and the app's budgets, both or neither.
    pub(crate) fn admit(
        &self,
        addr: Option<ClientAddr>,
        app: Option<usize>,
        cost: u64,
    ) -> Result<(), ApiError> {
        if let (Some(limiter), Some(addr)) = (&self.per_addr, addr) {
            let now = limiter.now();
            if let Err(refused) = limiter.take(&addr, cost, now) {
                return Err(rate_limited(
                    refused,
                    &limiter.rate,
                    cost,
                    "views",
                    "this address",
                ));
            }
        }
        if let (Some(limiter), Some(app)) = (&self.per_key, app) {
            let now = limiter.now();
            if let Err(refused) = limiter.take(&app, cost, now) {
                if let (Some(per_addr), Some(addr)) = (&self.per_addr, addr) {
                    per_addr.give_back(&addr, cost);
                }
                let name = self.write_keys.as_ref().map_or("", |k| k.app_name(app));
                let who = format!("app {name}");
                tracing::debug!(app = name, "rate limited");
                return Err(rate_limited(refused, &limiter.rate, cost, "views", &who));
            }
        }
        Ok(())
    }

    /// Charges a request refused for another reason `cost` views, from the
    /// client's and the app's budgets as far as each holds them, so refused
    /// requests cannot be sent without limit. Answers 429 once either budget was
    /// already empty.
    pub(crate) fn charge(
        &self,
        addr: Option<ClientAddr>,
        app: Option<usize>,
        cost: u64,
    ) -> Result<(), ApiError> {
        let mut outcome = Ok(());
        if let (Some(limiter), Some(addr)) = (&self.per_addr, addr) {
            if let Err(refused) = limiter.charge(&addr, cost, limiter.now()) {
                outcome = Err(rate_limited(
                    refused,
                    &limiter.rate,
                    cost,
                    "views",
                    "this address",
                ));
            }
        }
        if let (Some(limiter), Some(app)) = (&self.per_key, app) {
            if let Err(refused) = limiter.charge(&app, cost, limiter.now()) {
                if outcome.is_ok() {
                    let name = self.write_keys.as_ref().map_or("", |k| k.app_name(app));
                    let who = format!("app {name}");
                    outcome = Err(rate_limited(refused, &limiter.rate, cost, "views", &who));
                }
            }
        }
        outcome
    }
}

/// The 429 for `cost` `unit`s (views, reads) from `who`.
fn rate_limited(refused: Refused, rate: &Rate, cost: u64, unit: &str, who: &str) -> ApiError {
    let retry_after = refused.retry_after_secs(rate);
    let message = match refused {
        Refused::TooLarge { burst } => format!(
            "this batch holds {cost} views, more than the limit of {rate} for {who} allows at once ({burst}); send smaller batches"
        ),
        Refused::Wait(_) => {
            format!("too many {unit} from {who} (limit {rate}); retry after {retry_after} s")
        }
    };
    refused_by(ApiError::RateLimited {
        retry_after,
        message,
    })
}

impl Protect {
    /// Takes one read from the client's read budget (`READ_RATE_LIMIT_PER_ADDR`).
    pub(crate) fn admit_read(&self, addr: Option<ClientAddr>) -> Result<(), ApiError> {
        if let (Some(limiter), Some(addr)) = (&self.reads_per_addr, addr) {
            if let Err(refused) = limiter.take(&addr, 1, limiter.now()) {
                return Err(rate_limited(
                    refused,
                    &limiter.rate,
                    1,
                    "reads",
                    "this address",
                ));
            }
        }
        Ok(())
    }

    /// A permit for one range scan of `GET /api/views/top`, or 503 `busy` while
    /// `MAX_TOP_READS` are running.
    pub(crate) fn top_read(&self) -> Result<Option<SemaphorePermit<'_>>, ApiError> {
        match &self.top_reads {
            None => Ok(None),
            Some(permits) => permits.try_acquire().map(Some).map_err(|_| ApiError::Busy),
        }
    }
}

/// Counts a refusal under its code, and returns it.
pub(crate) fn refused_by(error: ApiError) -> ApiError {
    metrics::counter!(m::REFUSALS, "reason" => error.code()).increment(1);
    error
}

/// Counts `n` views dropped as a crawler's, under their namespace (`other` for a
/// namespace not listed in `NAMESPACES`, so the label stays bounded under `*`).
pub(crate) fn count_bot_views(namespaces: &Namespaces, content_type: &str, n: u64) {
    let label = match namespaces {
        Namespaces::List(list) if list.iter().any(|ns| ns == content_type) => {
            content_type.to_owned()
        }
        _ => "other".to_owned(),
    };
    metrics::counter!(m::BOT_VIEWS, "content_type" => label).increment(n);
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        protect: ProtectSettings,
    }

    fn build(args: &[&str], namespaces: &str) -> anyhow::Result<Protect> {
        let cli = Cli::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))?;
        let namespaces: Namespaces = namespaces.parse().map_err(anyhow::Error::msg)?;
        Protect::build(&cli.protect, &namespaces)
    }

    const WEB: &str = "--write-keys=web:0123456789abcdef,shop:0123456789abcdeg:course";

    #[test]
    fn settings_that_cannot_work_stop_start_up() {
        let err = build(&["--rate-limit-per-key=5/s"], "resource").err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("RATE_LIMIT_PER_KEY") && err.contains("WRITE_KEYS"),
            "{err}"
        );
        let err = build(&[WEB], "resource").err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("WRITE_KEYS names namespace \"course\"") && err.contains("NAMESPACES"),
            "{err}"
        );
        assert!(build(&[WEB], "resource,course").is_ok());
        assert!(build(&[WEB], "*").is_ok());
        let off = build(&[], "resource").expect("defaults");
        assert!(off.write_keys.is_none() && off.per_addr.is_none() && off.bots.is_none());
    }

    fn addr(ip: &str) -> Option<ClientAddr> {
        ip.parse::<IpAddr>().ok().map(ClientAddr::new)
    }

    #[test]
    fn a_request_is_taken_from_both_budgets_or_neither() {
        let protect = build(
            &[WEB, "--rate-limit-per-addr=3/m", "--rate-limit-per-key=2/m"],
            "resource,course",
        )
        .expect("protect");
        let (a, b) = (addr("192.0.2.1"), addr("192.0.2.2"));
        assert!(protect.admit(a, Some(0), 2).is_ok());
        // The app's budget is spent: refused, and the address keeps its last view.
        let refused = protect.admit(a, Some(0), 1).expect_err("app over");
        assert!(refused.to_string().contains("app web"), "{refused}");
        assert!(
            protect.admit(a, Some(1), 1).is_ok(),
            "another app, same address"
        );
        let refused = protect.admit(a, Some(1), 1).expect_err("address over");
        assert!(refused.to_string().contains("this address"), "{refused}");
        assert!(protect.admit(b, Some(1), 1).is_ok(), "another address");
        assert!(protect.admit(None, None, 3).is_ok(), "nothing to limit");
        let too_big = protect.admit(b, None, 4).expect_err("over the burst");
        assert!(
            too_big
                .to_string()
                .contains("this batch holds 4 views, more than the limit of 3/m"),
            "{too_big}"
        );
        assert_eq!(too_big.code(), "rate_limited");
    }

    #[test]
    fn top_reads_past_max_top_reads_are_busy_until_one_ends() {
        let protect = build(&["--max-top-reads=2"], "resource").expect("protect");
        let first = protect.top_read().expect("first");
        let second = protect.top_read().expect("second");
        let busy = protect.top_read().expect_err("third");
        assert_eq!(
            (busy.code(), busy.status().as_u16()),
            ("busy", 503),
            "{busy}"
        );
        drop(first);
        assert!(protect.top_read().is_ok(), "a permit back once a read ends");
        drop(second);
    }
}
