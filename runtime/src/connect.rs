//! Start-up connections that fail fast with one line naming the service and address.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;

use crate::settings::SecretUrl;
use viewpipe_store::redis_conn::{RedisConn, Timeouts};

use crate::Probes;

/// Connects to Redis (a server or a cluster, see [`RedisConn`]), failing fast with
/// the address when it does not answer.
pub async fn connect_redis(url: &SecretUrl) -> anyhow::Result<RedisConn> {
    let address = url.address();
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        RedisConn::connect(url.expose(), Timeouts::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach Redis at {address}: timed out"))?
    .with_context(|| format!("cannot reach Redis at {address}"))?;
    Ok(conn)
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

/// Checks that the Kafka brokers answer, naming them when they do not.
pub async fn check_kafka(brokers: &str) -> anyhow::Result<()> {
    let probe = Probes::kafka_client(brokers).context("invalid Kafka settings")?;
    let brokers_owned = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
    })
    .await?
    .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {brokers_owned}: {e}"))
}
