//! Kafka connection settings: brokers, TLS, SASL, and librdkafka properties passed
//! through for everything else. Secrets (the SASL password, the key's password,
//! properties whose name says password or secret) never reach `Debug`, logs or
//! `--help`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::settings::{Secret, SecretParser};

use super::properties::*;
pub use super::properties::{KafkaProperty, PropertiesFile};

/// How every viewpipe process connects to Kafka.
#[derive(Args, Clone, Debug)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's
    /// `security.protocol`).
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value_t
    )]
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`
    /// (the last with librdkafka's unsecured JWT or properties of your own); required
    /// with the `sasl_*` protocols.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password (never logged).
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        value_parser = SecretParser::<Secret>::new()
    )]
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA certificates that sign the brokers' certificates (default:
    /// the system's trust store).
    #[arg(long = "kafka-tls-ca", env = "KAFKA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require mutual TLS.
    #[arg(long = "kafka-tls-cert", env = "KAFKA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this client's private key.
    #[arg(long = "kafka-tls-key", env = "KAFKA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Password of the private key, if it is encrypted (never logged).
    #[arg(
        long = "kafka-tls-key-password",
        env = "KAFKA_TLS_KEY_PASSWORD",
        hide_env_values = true,
        value_parser = SecretParser::<Secret>::new()
    )]
    pub tls_key_password: Option<Secret>,
    /// Check that the broker's certificate names the host connected to. Turn off only
    /// for brokers whose certificates name something else, and know what it costs.
    #[arg(
        long = "kafka-tls-verify-hostname",
        env = "KAFKA_TLS_VERIFY_HOSTNAME",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub tls_verify_hostname: bool,
    /// Further librdkafka properties, `name=value`, applied after every other
    /// setting; repeat the flag, or separate them with `;` in the variable. Values
    /// are never logged.
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = SecretParser::<KafkaProperty>::new()
    )]
    pub properties: Vec<KafkaProperty>,
    /// A file of librdkafka properties, one `name=value` per line (`#` starts a
    /// comment), applied before `KAFKA_PROPERTIES`.
    #[arg(
        long = "kafka-properties-file",
        env = "KAFKA_PROPERTIES_FILE",
        value_parser = read_properties_file
    )]
    pub properties_file: Option<PropertiesFile>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN", alias = "plain")]
    Plain,
    #[value(name = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
    #[value(name = "OAUTHBEARER", alias = "oauthbearer")]
    OauthBearer,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

impl KafkaSettings {
    /// Brokers without TLS, SASL or extra properties (the dev stack, tests).
    pub fn plain(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_key_password: None,
            tls_verify_hostname: true,
            properties: Vec::new(),
            properties_file: None,
        }
    }

    /// Settings that contradict each other, named: SASL credentials without a SASL
    /// protocol, certificates without TLS, a SASL protocol without a mechanism.
    pub fn check(&self) -> Result<(), String> {
        let protocol = self.security_protocol;
        let sasl_set = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some();
        if sasl_set && !protocol.uses_sasl() {
            return Err(format!(
                "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is {}: use sasl_ssl (or sasl_plaintext)",
                protocol.as_str()
            ));
        }
        if protocol.uses_sasl() && self.sasl_mechanism.is_none() {
            return Err(format!(
                "KAFKA_SECURITY_PROTOCOL {} needs KAFKA_SASL_MECHANISM",
                protocol.as_str()
            ));
        }
        let tls_set = self.tls_ca.is_some() || self.tls_cert.is_some();
        if tls_set && !protocol.uses_tls() {
            return Err(format!(
                "KAFKA_TLS_* is set but KAFKA_SECURITY_PROTOCOL is {}: use ssl (or sasl_ssl)",
                protocol.as_str()
            ));
        }
        for file in [&self.tls_ca, &self.tls_cert, &self.tls_key]
            .into_iter()
            .flatten()
        {
            if !file.is_file() {
                return Err(format!("no such file: {}", file.display()));
            }
        }
        Ok(())
    }

    /// The librdkafka properties these settings set, in the order they apply; later
    /// ones win.
    pub(crate) fn client_properties(&self) -> Vec<KafkaProperty> {
        let mut out = Vec::new();
        let mut set = |name: &str, value: &str| {
            out.push(KafkaProperty {
                name: name.to_owned(),
                value: value.to_owned(),
            })
        };
        let protocol = self.security_protocol;
        if protocol != SecurityProtocol::Plaintext {
            set("security.protocol", protocol.as_str());
        }
        if let Some(mechanism) = self.sasl_mechanism {
            set("sasl.mechanisms", mechanism.as_str());
        }
        if let Some(user) = &self.sasl_username {
            set("sasl.username", user);
        }
        if let Some(password) = &self.sasl_password {
            set("sasl.password", password.expose());
        }
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &self.tls_ca {
            set("ssl.ca.location", &path(ca));
        }
        if let Some(cert) = &self.tls_cert {
            set("ssl.certificate.location", &path(cert));
        }
        if let Some(key) = &self.tls_key {
            set("ssl.key.location", &path(key));
        }
        if let Some(password) = &self.tls_key_password {
            set("ssl.key.password", password.expose());
        }
        if protocol.uses_tls() {
            let check = if self.tls_verify_hostname {
                "https"
            } else {
                "none"
            };
            set("ssl.endpoint.identification.algorithm", check);
        }
        let passed = self.properties_file.iter().flat_map(|f| &f.properties);
        out.extend(passed.chain(&self.properties).cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_refuse_what_the_guarantees_own() {
        let p: KafkaProperty = "client.id = viewpipe-eu".parse().expect("property");
        assert_eq!(
            (p.name.as_str(), p.value.as_str()),
            ("client.id", "viewpipe-eu")
        );
        let e = "enable.auto.commit=true"
            .parse::<KafkaProperty>()
            .expect_err("refused");
        assert!(e.contains("enable.auto.commit cannot be changed"), "{e}");
        assert!("acks=1".parse::<KafkaProperty>().is_err());
        // Cooperative rebalancing is refused by name, eager strategies pass.
        for bad in [
            "partition.assignment.strategy=cooperative-sticky",
            "partition.assignment.strategy=range, cooperative-sticky",
            "group.protocol=consumer",
            "partitioner=random",
            "partitioner=fnv1a",
        ] {
            let e = bad.parse::<KafkaProperty>().expect_err(bad);
            assert!(
                e.contains("is not supported") && e.contains(bad.split('=').next().unwrap_or("")),
                "{e}"
            );
        }
        for good in [
            "partition.assignment.strategy=roundrobin",
            "group.protocol=classic",
            "partitioner=murmur2_random",
        ] {
            assert!(good.parse::<KafkaProperty>().is_ok(), "{good}");
        }
        assert!("no-equals".parse::<KafkaProperty>().is_err());
        assert!("Bad Name=1".parse::<KafkaProperty>().is_err());
        let parsed = parse_properties("# tuned\n\nlinger.ms=5\nsasl.password=pw=with=equals\n")
            .expect("file");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].value, "pw=with=equals");
        let bad = parse_properties("linger.ms=5\nacks=0\n").expect_err("refused");
        assert!(bad.starts_with("line 2: acks"), "{bad}");
    }

    #[test]
    fn secret_properties_do_not_debug_print() {
        let p: KafkaProperty = "sasl.password=hunter2".parse().expect("property");
        assert_eq!(format!("{p:?}"), "sasl.password=***");
        let p: KafkaProperty = "sasl.oauthbearer.client.secret=s"
            .parse()
            .expect("property");
        assert!(!format!("{p:?}").contains("=s"));
        let p: KafkaProperty = "linger.ms=5".parse().expect("property");
        assert_eq!(format!("{p:?}"), "linger.ms=5");
    }

    #[test]
    fn contradicting_settings_are_named() {
        let mut s = KafkaSettings::plain("b:9093");
        assert!(s.check().is_ok());
        s.sasl_username = Some("app".into());
        assert!(s
            .check()
            .expect_err("refused")
            .contains("KAFKA_SECURITY_PROTOCOL is plaintext"));
        s.security_protocol = SecurityProtocol::SaslSsl;
        assert!(s
            .check()
            .expect_err("refused")
            .contains("needs KAFKA_SASL_MECHANISM"));
        s.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        assert!(s.check().is_ok());
        s.tls_ca = Some("/no/such/ca.pem".into());
        assert!(s.check().expect_err("refused").contains("/no/such/ca.pem"));
    }
}
