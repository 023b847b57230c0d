//! Kafka client configuration shared by producers and consumers.

mod properties;
mod settings;

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

pub use settings::{KafkaProperty, KafkaSettings, PropertiesFile, SaslMechanism, SecurityProtocol};

/// Applies the connection settings (TLS, SASL, passed-through properties) last, so
/// an operator's property wins over our tuning; the properties the guarantees rest
/// on cannot be passed through (see [`KafkaProperty`]).
fn with_settings(mut config: ClientConfig, kafka: &KafkaSettings) -> ClientConfig {
    for property in kafka.client_properties() {
        config.set(property.name, property.value);
    }
    config
}

/// A base configuration: brokers, security and quiet librdkafka logging.
pub fn base_config(kafka: &KafkaSettings) -> ClientConfig {
    with_settings(defaults(&kafka.brokers), kafka)
}

fn defaults(brokers: &str) -> ClientConfig {
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
pub fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = defaults(&kafka.brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        // View events are small JSON documents that compress several times over.
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "10000")
        .set("queue.buffering.max.messages", "100000");
    with_settings(config, kafka)
}

/// A group consumer as the aggregator runs it: offsets committed only by hand, after
/// Postgres holds them; starting from the log's beginning when the group has no
/// position. The benchmark's raw consumer uses the same settings.
pub fn consumer_config(
    kafka: &KafkaSettings,
    group: &str,
    session_timeout: Duration,
) -> ClientConfig {
    let session_timeout_ms = session_timeout.as_millis();
    let mut config = defaults(&kafka.brokers);
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
    with_settings(config, kafka)
}

/// A client context that keeps the first failure librdkafka reported, such as a TLS
/// handshake or SASL authentication failure, which a failed request alone reports
/// only as "transport failure" or a timeout. librdkafka logs these (facility `FAIL`);
/// like its errors, they reach the context when the client is polled.
#[derive(Default)]
pub(crate) struct FirstError(Mutex<Option<String>>);

impl FirstError {
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut last| last.take())
    }

    /// Keeps the first failure: the ones after it ("all brokers are down") are its
    /// consequences.
    fn keep(&self, reason: String) {
        if let Ok(mut last) = self.0.lock() {
            last.get_or_insert(reason);
        }
    }
}

impl ClientContext for FirstError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" || (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            self.keep(message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.keep(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for FirstError {}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rdkafka::producer::BaseProducer;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaSettings,
    }

    fn parse(args: &[&str]) -> KafkaSettings {
        let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()));
        cli.map(|c| c.kafka)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// What librdkafka itself holds once our settings are applied, read back from
    /// its configuration object.
    fn effective(config: &ClientConfig, names: &[&str]) -> Vec<String> {
        let native = config
            .create_native_config()
            .expect("librdkafka accepts the settings");
        names
            .iter()
            .map(|n| native.get(n).unwrap_or_else(|e| panic!("{n}: {e}")))
            .collect()
    }

    #[test]
    fn sasl_and_tls_settings_reach_librdkafka() {
        let kafka = parse(&[
            "--kafka-brokers",
            "b1.example:9096",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "viewpipe",
            "--kafka-sasl-password",
            "hunter2",
            "--kafka-tls-verify-hostname",
            "false",
            "--kafka-property",
            "client.id=vp-eu;linger.ms=7",
        ]);
        assert!(kafka.check().is_ok());
        let producer = producer_config(&kafka);
        assert_eq!(
            effective(
                &producer,
                &[
                    "bootstrap.servers",
                    "security.protocol",
                    "sasl.mechanisms",
                    "sasl.username",
                    "sasl.password",
                    "ssl.endpoint.identification.algorithm",
                    "client.id",
                    "linger.ms",
                    "acks",
                ]
            ),
            [
                "b1.example:9096",
                "sasl_ssl",
                "SCRAM-SHA-512",
                "viewpipe",
                "hunter2",
                "none",
                "vp-eu",
                // A passed-through property wins over our tuning...
                "7",
                // ...but not over what the guarantees rest on.
                "-1",
            ]
        );
        // librdkafka was built with OpenSSL, which sasl_ssl and SCRAM need: without
        // it, creating the client fails.
        let created: Result<BaseProducer, _> = producer.create();
        assert!(created.is_ok(), "{:?}", created.err());
        assert!(!format!("{kafka:?}").contains("hunter2"));
    }

    #[test]
    fn tls_files_and_a_properties_file_reach_every_client() {
        let dir = std::env::temp_dir().join(format!("vp-kafka-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# from the provider\nclient.id=from-file\nsocket.timeout.ms=30000\n",
        )
        .expect("write");
        let file = file.display().to_string();
        let kafka = parse(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-tls-ca",
            "/etc/ssl/ca.pem",
            "--kafka-tls-cert",
            "/etc/ssl/client.pem",
            "--kafka-tls-key",
            "/etc/ssl/client.key",
            "--kafka-properties-file",
            &file,
            "--kafka-property",
            "client.id=from-flag",
        ]);
        let names = [
            "security.protocol",
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "ssl.endpoint.identification.algorithm",
            "socket.timeout.ms",
            "client.id",
        ];
        let consumer = consumer_config(&kafka, "group", Duration::from_secs(6));
        for config in [base_config(&kafka), producer_config(&kafka), consumer] {
            assert_eq!(
                effective(&config, &names),
                [
                    "ssl",
                    "/etc/ssl/ca.pem",
                    "/etc/ssl/client.pem",
                    "/etc/ssl/client.key",
                    "https",
                    "30000",
                    "from-flag",
                ]
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_kafka_settings_are_refused_by_name() {
        let cli = Cli::try_parse_from(["t", "--kafka-property", "enable.auto.commit=true"]);
        let e = cli.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("--kafka-property") && e.contains("enable.auto.commit"),
            "{e}"
        );
        let cli = Cli::try_parse_from(["t", "--kafka-properties-file", "/no/such.properties"]);
        let e = cli.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cannot read /no/such.properties"), "{e}");
        let cli = Cli::try_parse_from(["t", "--kafka-sasl-mechanism", "GSSAPI"]);
        assert!(cli.is_err());
    }
}
