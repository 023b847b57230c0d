//! Settings both services share. Each is an environment variable and the matching
//! long flag; the services flatten [`CommonSettings`] into their own clap structs.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::Args;

use crate::kafka::KafkaSettings;
use crate::telemetry::LogFormat;

/// Settings every viewpipe process reads.
#[derive(Args, Clone, Debug)]
pub struct CommonSettings {
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Topic of live view events.
    #[arg(long, env = "VIEWS_TOPIC", default_value = "views")]
    pub views_topic: String,
    /// Topic of historical events read by backfill.
    #[arg(long, env = "REPLAY_TOPIC", default_value = "views.replay")]
    pub replay_topic: String,
    /// Topic for messages the aggregator could not use.
    #[arg(long, env = "DLQ_TOPIC", default_value = "views.dlq")]
    pub dlq_topic: String,
    /// The aggregators' consumer group id.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "viewpipe-aggregator")]
    pub consumer_group: String,
    /// Postgres connection URL (its password is never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_parser = SecretParser::<SecretUrl>::new(),
        default_value = "postgres://postgres@127.0.0.1:5432/viewpipe"
    )]
    pub database_url: SecretUrl,
    /// Redis URL, or `none` for database-only mode (its password is never logged).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        value_parser = SecretParser::<RedisSetting>::new(),
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: RedisSetting,
    /// PEM file of the CA certificates that sign the Redis servers' certificates, for
    /// `rediss://` URLs (default: the system's trust store).
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Prefix of every Redis key, so deployments and tests can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "viewpipe")]
    pub redis_prefix: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// A whole number of milliseconds (the `*_MS` settings), as a [`Duration`].
pub fn millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))
}

/// A duration with its unit: `500ms`, `5s` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: expected e.g. 500ms, 5s or 2m");
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

/// A connection URL whose password never reaches `Debug` or `Display`.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The full URL, password included: pass it to a client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `host:port` (or whatever follows the credentials up to the path), for messages.
    pub fn address(&self) -> String {
        let (_, host, _) = self.parts();
        host.split('/').next().unwrap_or(host).to_owned()
    }

    /// The URL cut where a password can hide: credentials (before the last `@`),
    /// host and path, and query. The query starts at the first `?`, unless the
    /// credentials hold a `?` (an unencoded password), seen as an `@` after it
    /// with no `=` or `&` before.
    fn parts(&self) -> (Option<&str>, &str, Option<&str>) {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        let (main, query) = match rest.split_once('?') {
            Some((main, query)) => (main, Some(query)),
            None => (rest, None),
        };
        if let Some((userinfo, host)) = main.rsplit_once('@') {
            return (Some(userinfo), host, query);
        }
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if !userinfo.contains(['=', '&']) {
                let (host, query) = match host.split_once('?') {
                    Some((host, query)) => (host, Some(query)),
                    None => (host, None),
                };
                return (Some(userinfo), host, query);
            }
        }
        (None, main, query)
    }
}

/// Whether a URL's query parameter may carry a secret (`password`, `sslpassword`,
/// `auth_token`, ..): its value is not shown.
fn secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "auth", "cred"]
        .iter()
        .any(|s| name.contains(s))
}

/// Whether `s` is plainly a name (a user, a parameter), not a fragment of a
/// malformed URL that might hold a secret.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%'))
}

impl std::str::FromStr for SecretUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains("://") {
            return Err("expected a URL such as scheme://user@host:port/name".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for SecretUrl {
    /// The URL with its password, and every query value that may be one, as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, _)) = self.0.split_once("://") else {
            return f.write_str("(url)");
        };
        let (userinfo, host, query) = self.parts();
        write!(f, "{scheme}://")?;
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some(("", _)) => f.write_str(":***@")?,
                Some((user, _)) if plain_name(user) => write!(f, "{user}:***@")?,
                None if plain_name(userinfo) => write!(f, "{userinfo}@")?,
                _ => f.write_str("***@")?,
            }
        }
        f.write_str(host)?;
        if let Some(query) = query {
            f.write_str("?")?;
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    f.write_str("&")?;
                }
                match pair.split_once('=') {
                    Some((name, value)) if plain_name(name) && !secret_param(name) => {
                        write!(f, "{name}={value}")?
                    }
                    Some((name, _)) if plain_name(name) => write!(f, "{name}=***")?,
                    _ => f.write_str("***")?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// `REDIS_URL`: a Redis URL, or `none` for database-only mode.
#[derive(Clone, Debug)]
pub enum RedisSetting {
    Disabled,
    Url(SecretUrl),
}

impl RedisSetting {
    pub fn url(&self) -> Option<&SecretUrl> {
        match self {
            RedisSetting::Disabled => None,
            RedisSetting::Url(url) => Some(url),
        }
    }
}

impl std::str::FromStr for RedisSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            Ok(RedisSetting::Disabled)
        } else {
            s.parse().map(RedisSetting::Url)
        }
    }
}

/// Parses a secret setting (`DATABASE_URL`, `ADMIN_TOKEN`, ..). Unlike clap's own
/// error, which repeats the value it could not parse, its error names the setting
/// and says what is wrong without showing the value.
pub struct SecretParser<T>(fn(&str) -> Result<T, String>);

impl<T> Clone for SecretParser<T> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<T: std::str::FromStr<Err = String>> SecretParser<T> {
    /// With `T::from_str`.
    pub fn new() -> Self {
        Self(|s| s.parse())
    }
}

impl<T: std::str::FromStr<Err = String>> Default for SecretParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SecretParser<T> {
    /// With `parse`, whose errors must not repeat the value.
    pub fn with(parse: fn(&str) -> Result<T, String>) -> Self {
        Self(parse)
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for SecretParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        // The flag and the variable both, never the value.
        let env = arg.and_then(|a| a.get_env()).and_then(OsStr::to_str);
        let long = arg.and_then(|a| a.get_long());
        let name = match (long, env) {
            (Some(long), Some(env)) => format!("--{long} or {env}"),
            (Some(long), None) => format!("--{long}"),
            (None, Some(env)) => env.to_owned(),
            (None, None) => "a secret setting".to_owned(),
        };
        let fail = |why: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {name}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| fail("is not valid UTF-8".to_owned()))?;
        (self.0)(text).map_err(fail)
    }
}

/// A secret token (e.g. `ADMIN_TOKEN`) that `Debug` never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests;
