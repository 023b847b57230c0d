//! librdkafka properties passed through (`KAFKA_PROPERTIES`, `KAFKA_PROPERTIES_FILE`):
//! parsed, refused where the guarantees rest on them, and never shown when they hold
//! a secret.

use std::fmt;
use std::path::PathBuf;

/// Properties the exactly-once guarantee rests on, or that a setting of ours owns;
/// a passed-through property may not change them.
pub(super) const OWNED: [(&str, &str); 8] = [
    ("bootstrap.servers", "set KAFKA_BROKERS"),
    ("group.id", "set CONSUMER_GROUP"),
    (
        "enable.auto.commit",
        "offsets are committed only after Postgres holds them",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only after Postgres holds them",
    ),
    (
        "auto.offset.reset",
        "a new group must read the log from its start",
    ),
    (
        "acks",
        "an acknowledgement must mean every in-sync replica has the event",
    ),
    (
        "enable.idempotence",
        "producer retries must not duplicate events",
    ),
    (
        "transactional.id",
        "viewpipe's producers are idempotent, not transactional",
    ),
];

/// Why a property's value would break the aggregator's partition hand-over, if it
/// would. The aggregator claims and flushes partitions in eager rebalance callbacks
/// (the whole assignment is revoked, then assigned); cooperative rebalancing
/// delivers increments instead and fails with "Erroneous state" under eager calls,
/// leaving an aggregator that looks ready and counts nothing.
pub(super) fn unsupported(name: &str, value: &str) -> Option<&'static str> {
    match name {
        "partition.assignment.strategy"
            if value.split(',').any(|s| s.trim() == "cooperative-sticky") =>
        {
            Some("the aggregator hands partitions over with eager rebalances; use range or roundrobin")
        }
        "partitioner"
            if !["consistent_random", "consistent", "murmur2_random", "murmur2"]
                .contains(&value.trim()) =>
        {
            Some("reads find a key's views by where librdkafka's default (CRC-32) or murmur2 partitioner places its key; use consistent_random (the default) or murmur2_random")
        }
        "group.protocol" if value != "classic" => Some(
            "the aggregator needs the classic group protocol's eager rebalances; leave group.protocol unset",
        ),
        _ => None,
    }
}

/// One librdkafka property; its value is hidden when its name suggests a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub name: String,
    pub value: String,
}

impl KafkaProperty {
    /// Whether the value must stay out of logs: passwords, secrets, keys, tokens.
    pub(crate) fn is_secret(&self) -> bool {
        [
            "password",
            "secret",
            "key.pem",
            "oauthbearer.config",
            "jaas",
            "token",
        ]
        .iter()
        .any(|s| self.name.contains(s))
    }
}

impl std::str::FromStr for KafkaProperty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| "expected name=value, e.g. client.id=viewpipe".to_owned())?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
        {
            return Err(format!(
                "a property name is lower case letters, digits, dots and underscores (e.g. client.id){}",
                // A malformed name may hold a secret: shown only when plainly a name.
                if name.chars().all(|c| c.is_ascii_graphic()) && !name.contains("pass") {
                    format!("; {name:?} is not one")
                } else {
                    String::new()
                }
            ));
        }
        if let Some((_, why)) = OWNED.iter().find(|(owned, _)| *owned == name) {
            return Err(format!("{name} cannot be changed: {why}"));
        }
        let value = value.trim();
        if let Some(why) = unsupported(name, value) {
            // Only a few non-secret properties are refused by value.
            return Err(format!("{name}={value} is not supported: {why}"));
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_secret() {
            write!(f, "{}=***", self.name)
        } else {
            write!(f, "{}={}", self.name, self.value)
        }
    }
}

/// The properties of `KAFKA_PROPERTIES_FILE`, read when the settings are.
#[derive(Clone, Debug)]
pub struct PropertiesFile {
    pub path: PathBuf,
    pub properties: Vec<KafkaProperty>,
}

pub(super) fn read_properties_file(path: &str) -> Result<PropertiesFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let properties = parse_properties(&text).map_err(|e| format!("{path}: {e}"))?;
    Ok(PropertiesFile {
        path: path.into(),
        properties,
    })
}

/// `name=value` lines; blank lines and `#` comments are skipped.
pub(super) fn parse_properties(text: &str) -> Result<Vec<KafkaProperty>, String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| line.parse().map_err(|e| format!("line {n}: {e}")))
        .collect()
}
