//! The protection settings. Every one is off when unset: the ingest then behaves
//! as it did before they existed.

use std::net::SocketAddr;

use clap::Args;
pub use viewpipe_runtime::settings::SecretParser;

use crate::protect::bots::BotFilter;
use crate::protect::client::ProxyHeader;
use crate::protect::keys::{ApiKey, WriteKeys};
use crate::protect::rate::Rate;

#[derive(Args, Clone, Debug)]
pub struct ProtectSettings {
    /// Keys the write endpoints require, comma-separated: `<app>:<key>` or
    /// `<app>:<key>:<ns1>|<ns2>` (the namespaces that key may write). App names are
    /// `[a-z0-9_-]`; keys 16 to 256 characters of `[A-Za-z0-9._~-]`. Sent as
    /// `X-Viewpipe-Key: <key>` or `?key=<key>`. Unset (default): writes need no key.
    #[arg(long, env = "WRITE_KEYS", hide_env_values = true, value_parser = SecretParser::<WriteKeys>::new())]
    pub write_keys: Option<WriteKeys>,
    /// Views per client address: `<N>/s` or `<N>/m` (a burst of N, then N per
    /// period); a batch costs its number of views. Unset (default): no limit.
    #[arg(long, env = "RATE_LIMIT_PER_ADDR")]
    pub rate_limit_per_addr: Option<Rate>,
    /// Reads (GET /api/views, POST /api/views/counts, GET /api/views/daily, /top,
    /// /badge.svg) per client address:
    /// `<N>/s` or `<N>/m`, each read costing 1; over it, 429 with Retry-After. Unset
    /// (default): no limit.
    #[arg(long, env = "READ_RATE_LIMIT_PER_ADDR")]
    pub read_rate_limit_per_addr: Option<Rate>,
    /// Most GET /api/views/top reads (range scans) this ingest runs at once; one
    /// more is answered 503 `busy` with Retry-After.
    #[arg(long, env = "MAX_TOP_READS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_top_reads: u32,
    /// Views per app of WRITE_KEYS (an app's keys share it): `<N>/s` or `<N>/m`.
    /// Needs WRITE_KEYS. Unset (default): no limit.
    #[arg(long, env = "RATE_LIMIT_PER_KEY")]
    pub rate_limit_per_key: Option<Rate>,
    /// The header a proxy in front of the ingest sets to the client's address
    /// (`X-Forwarded-For`: its rightmost entry; `X-Real-IP`; `Forwarded`), used by
    /// RATE_LIMIT_PER_ADDR and VISITOR_HASH. Set it only behind a proxy you control
    /// that always sets it. Unset (default): the TCP peer's address.
    #[arg(long, env = "TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<ProxyHeader>,
    /// `drop`: a view from a known crawler's User-Agent is answered 202 but not
    /// published (counted in viewpipe_ingest_bot_views_total). `off`: counted.
    #[arg(long, env = "BOT_FILTER", value_enum, default_value_t)]
    pub bot_filter: BotFilter,
    /// Key the read endpoints require (`Authorization: Bearer <key>`,
    /// `X-Viewpipe-Key: <key>` or `?key=<key>`), 16 to 256 characters of
    /// `[A-Za-z0-9._~-]`. Unset (default): counts are public.
    #[arg(long, env = "READ_KEY", hide_env_values = true, value_parser = SecretParser::<ApiKey>::new())]
    pub read_key: Option<ApiKey>,
    /// A second listener serving /metrics, /healthz and /readyz (e.g. on an internal
    /// interface); the API port then answers 404 for /metrics. Unset (default):
    /// /metrics is served on the API port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        protect: ProtectSettings,
    }

    fn parse(args: &[&str]) -> Result<ProtectSettings, String> {
        Cli::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))
            .map(|c| c.protect)
            .map_err(|e| e.to_string())
    }

    const KEY: &str = "0123456789abcdef-key";

    #[test]
    fn unset_is_off() {
        let s = parse(&[]).expect("defaults");
        assert!(s.write_keys.is_none() && s.read_key.is_none());
        assert!(s.rate_limit_per_addr.is_none() && s.rate_limit_per_key.is_none());
        assert!(s.trusted_proxy_header.is_none() && s.metrics_addr.is_none());
        assert_eq!(s.bot_filter, BotFilter::Off);
    }

    #[test]
    fn good_values() {
        let s = parse(&[
            &format!("--write-keys=web:{KEY},mobile:{KEY}2:course"),
            "--rate-limit-per-addr=100/s",
            "--rate-limit-per-key=6000/m",
            "--trusted-proxy-header=X-Forwarded-For",
            "--bot-filter=drop",
            &format!("--read-key={KEY}"),
            "--metrics-addr=127.0.0.1:9464",
        ])
        .expect("valid");
        let keys = s.write_keys.as_ref().expect("keys");
        assert_eq!(keys.apps(), ["web", "mobile"]);
        assert_eq!(
            s.rate_limit_per_addr.map(|r| r.to_string()).as_deref(),
            Some("100/s")
        );
        assert_eq!(s.rate_limit_per_key.map(|r| r.views), Some(6000));
        assert_eq!(
            s.trusted_proxy_header
                .as_ref()
                .map(|h| h.0.to_string())
                .as_deref(),
            Some("x-forwarded-for")
        );
        assert_eq!(s.bot_filter, BotFilter::Drop);
        assert!(s.read_key.as_ref().is_some_and(|k| k.matches(KEY)));
        assert_eq!(
            s.metrics_addr,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains(KEY), "Debug shows a key: {shown}");
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (arg, setting) in [
            ("--write-keys=web", "WRITE_KEYS"),
            ("--write-keys=web:short", "WRITE_KEYS"),
            ("--rate-limit-per-addr=100/h", "RATE_LIMIT_PER_ADDR"),
            ("--rate-limit-per-addr=0/s", "RATE_LIMIT_PER_ADDR"),
            ("--rate-limit-per-key=lots", "RATE_LIMIT_PER_KEY"),
            ("--trusted-proxy-header=X Forwarded", "TRUSTED_PROXY_HEADER"),
            ("--bot-filter=block", "BOT_FILTER"),
            ("--read-key=short", "READ_KEY"),
            ("--metrics-addr=localhost", "METRICS_ADDR"),
        ] {
            let err = parse(&[arg]).expect_err(arg);
            assert!(err.contains(setting), "{arg}: {err}");
        }
    }

    #[test]
    fn a_bad_secret_is_not_repeated() {
        let secret = "web:a-secret-but-bad key!";
        let err = parse(&[&format!("--write-keys={secret}")]).expect_err("bad");
        assert!(err.contains("WRITE_KEYS: entry 1 (app web)"), "{err}");
        assert!(!err.contains("a-secret"), "{err}");
        let err = parse(&["--read-key=tiny-secret"]).expect_err("bad");
        assert!(
            err.contains("READ_KEY") && !err.contains("tiny-secret"),
            "{err}"
        );
    }
}
