//! Start-up connections that fail fast with one line naming the service and address.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::{FirstError, KafkaSettings};
use crate::redis_conn::{RedisConn, Timeouts};
use crate::settings::SecretUrl;

/// Connects to Redis (a server or a cluster, see [`RedisConn`]), failing fast with
/// the address when it does not answer. `tls_ca` (`REDIS_TLS_CA`): a PEM file of the
/// CA certificates that sign the servers' certificates, for `rediss://` URLs.
pub async fn connect_redis(url: &SecretUrl, tls_ca: Option<&Path>) -> anyhow::Result<RedisConn> {
    let address = url.address();
    let ca = match tls_ca {
        None => None,
        Some(_) if !url.expose().starts_with("rediss") => anyhow::bail!(
            "REDIS_TLS_CA is set but REDIS_URL {url} does not use TLS: use rediss:// (or rediss+cluster://)"
        ),
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!("cannot read REDIS_TLS_CA {}", path.display())
        })?),
    };
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        RedisConn::connect_with_ca(url.expose(), Timeouts::default(), ca.as_deref()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach Redis at {address}: timed out"))?
    .map_err(|e| {
        let reason = tls_hint(e.to_string(), "REDIS_TLS_CA (or the system's trust store)");
        anyhow::anyhow!("cannot reach Redis at {address}: {reason}")
    })?;
    Ok(conn)
}

/// A TLS failure's reason with what it means for the operator: rustls names the
/// cause (`UnknownIssuer`, `NotValidForName`, `Expired`) in its own terms.
pub(crate) fn tls_hint(reason: String, ca_setting: &str) -> String {
    let hint = if reason.contains("UnknownIssuer") {
        format!("the server's certificate is not signed by a CA in {ca_setting}")
    } else if reason.contains("NotValidForName") {
        "the server's certificate does not name the host connected to".to_owned()
    } else if reason.contains("Expired") {
        "the server's certificate has expired".to_owned()
    } else {
        return reason;
    };
    format!("{reason} ({hint})")
}

/// Fails when the Redis user may not run `INFO`: the aggregator's scripts and the
/// ingest's reads ask `INFO replication` for the data set's replication id (a
/// promoted replica has another), and without it every batch and read would fail.
pub async fn check_info_allowed(conn: &RedisConn) -> anyhow::Result<()> {
    let mut conn = conn.clone();
    let info: redis::RedisResult<String> = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await;
    match info {
        Err(e) if e.code() == Some("NOPERM") => anyhow::bail!(
            "the Redis user may not run INFO ({e}): viewpipe asks INFO replication for the \
             data set's replication id; grant it +info (e.g. ACL SETUSER <user> +info)"
        ),
        // Unreachable or otherwise failing: the readiness probe says so.
        _ => Ok(()),
    }
}

/// Warns when Redis may evict keys: pending counts must not silently vanish.
pub async fn check_eviction_policy(conn: &RedisConn) {
    let mut conn = conn.clone();
    let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await;
    if let Ok(values) = policy {
        if let Some(policy) = values.get(1) {
            if policy != "noeviction" {
                tracing::warn!(
                    policy = %policy,
                    "REDIS EVICTION POLICY IS NOT noeviction: Redis may drop pending counts and eventId records under memory pressure; set maxmemory-policy noeviction"
                );
            }
        }
    }
}

/// Checks the Kafka settings and that the brokers answer, naming them when they do
/// not, with librdkafka's own reason (a TLS or SASL failure says which).
pub async fn check_kafka(kafka: &KafkaSettings) -> anyhow::Result<()> {
    kafka
        .check()
        .map_err(|e| anyhow::anyhow!("invalid Kafka settings: {e}"))?;
    let probe: BaseConsumer<FirstError> = crate::kafka::base_config(kafka)
        .create_with_context(FirstError::default())
        .context("invalid Kafka settings")?;
    let brokers = kafka.brokers.clone();
    let protocol = kafka.security_protocol.as_str();
    tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
            .inspect_err(|_| {
                // librdkafka hands its logs and errors over as events: poll them in.
                for _ in 0..5 {
                    let _ = probe.poll(Duration::from_millis(10));
                }
            })
            .map_err(|e| match probe.context().take() {
                Some(reason) => {
                    anyhow::anyhow!("cannot reach Kafka at {brokers} ({protocol}): {reason}")
                }
                None => anyhow::anyhow!("cannot reach Kafka at {brokers} ({protocol}): {e}"),
            })
    })
    .await?
}
