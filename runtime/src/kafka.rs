//! Kafka client configuration shared by producers and consumers.

use std::time::Duration;

use rdkafka::ClientConfig;

/// A base configuration: brokers and quiet librdkafka logging.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("log_level", "4")
        .set("socket.keepalive.enable", "true")
        // Reconnect within a second of a broker coming back (librdkafka's default
        // backoff grows to 10 s).
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        // A connection that accepts requests but never answers them (seen with the
        // mock broker reconnecting while still down) is given up after 10 s rather
        // than librdkafka's 60 s; our publishes time out after 10 s anyway.
        .set("socket.timeout.ms", "10000");
    config
}

/// An idempotent producer with acks=all: a delivery report means the broker holds
/// the message durably, and retries never duplicate it.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = base_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        // View events are small JSON documents that compress several times over.
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "10000")
        .set("queue.buffering.max.messages", "100000");
    config
}

/// A group consumer as the aggregator runs it: offsets committed only by hand, after
/// Postgres holds them; starting from the log's beginning when the group has no
/// position. The benchmark's raw consumer uses the same settings.
pub fn consumer_config(brokers: &str, group: &str, session_timeout: Duration) -> ClientConfig {
    let session_timeout_ms = session_timeout.as_millis();
    let mut config = base_config(brokers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_timeout_ms / 10).max(100).to_string(),
        )
        .set("max.poll.interval.ms", "300000")
        // librdkafka pauses a partition's fetching for `fetch.queue.backoff.ms` (1 s by
        // default) whenever its local queue is over the thresholds; a consumer that
        // drains in batches then starves for most of every second. Measured with
        // `deploy/local/bench`: 117k/s with the default, 233k/s with 20 ms.
        .set("fetch.queue.backoff.ms", "20")
        // A broker may hold a fetch until this wait is over even once data arrived
        // (the dev broker does); librdkafka's 500 ms put half a second into the time
        // from acknowledgement to visible. Measured with `deploy/local/bench
        // --freshness-load 0.05`: p50 451 ms with the default, 48 ms with 25 ms. The
        // cost is 40 empty fetches a second per broker while idle.
        .set("fetch.wait.max.ms", "25")
        // Prefetch a few batches' worth, not whole partitions: librdkafka's defaults
        // (100k messages per partition, 64 MiB) made up most of the aggregator's memory.
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "16384");
    config
}
