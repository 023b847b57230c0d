//! Kafka client configuration shared by producers and consumers.

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
