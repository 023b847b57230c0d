//! Kafka client configuration shared by producers and consumers.

use rdkafka::ClientConfig;

/// A base configuration: brokers and quiet librdkafka logging.
pub fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("log_level", "4")
        .set("socket.keepalive.enable", "true");
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
        .set("message.timeout.ms", "10000")
        .set("queue.buffering.max.messages", "100000");
    config
}
