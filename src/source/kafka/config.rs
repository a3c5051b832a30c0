//! `[kafka]`: the Kafka source's settings (brokers, TLS, SASL, librdkafka properties) and their checks.
//!
//! Parsed in every build, so a file for a source the build left out gets a
//! clear error at start instead of an unknown-key one; the source's code is
//! behind the `kafka` feature.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::topics::{valid_topic_name, TopicConfig};
use super::{invalid, InvalidSetting};

/// How a Kafka node fills its ring and view at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmStart {
    /// The last `source.warm_start_records` records of each partition.
    Tail,
    /// Everything retained (compacted topics that hold a full view).
    Earliest,
}

/// Which records of transactions a Kafka node reads (librdkafka `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Only committed records, up to the last stable offset: aborted ones never reach a client.
    ReadCommitted,
    /// Every record as soon as written, aborted transactions included.
    ReadUncommitted,
}

impl IsolationLevel {
    /// The librdkafka property value.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationLevel::ReadCommitted => "read_committed",
            IsolationLevel::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// `[kafka]`: used when `source.kind = "kafka"`; every key is documented in `config/kafka.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub client_id: String,
    pub warm_start: WarmStart,
    /// Transactional records: committed only (the default) or everything.
    pub isolation_level: IsolationLevel,
    /// librdkafka `fetch.wait.max.ms`: the longest a fetch waits for data (its default, 500, would dominate latency).
    pub fetch_wait_max_ms: u32,
    /// librdkafka `linger.ms` for the publish API's producer.
    pub linger_ms: u32,
    /// How often topic metadata is checked for new partitions, new topics and recreated topics.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh_interval: Duration,
    /// How long start-up waits for the broker before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Catch-up readers (separate consumers) reading older ranges at once.
    pub catchup_readers: usize,
    /// Records kept per partition from recent catch-up reads, shared by nearby resumes.
    pub catchup_cache_records: usize,
    /// Longest a catch-up read waits for the broker.
    #[serde(with = "humantime_serde")]
    pub catchup_timeout: Duration,
    /// Records whose value is larger than this are skipped (counted, logged, dead-lettered).
    pub max_record_bytes: usize,
    /// Topic that skipped records are copied to, unchanged; empty for none.
    pub dead_letter_topic: String,
    /// TLS to the brokers (`[kafka.tls]`).
    pub tls: KafkaTlsConfig,
    /// SASL authentication (`[kafka.sasl]`).
    pub sasl: KafkaSaslConfig,
    /// Extra librdkafka properties for every client; they win over everything above.
    pub properties: KafkaProperties,
}

/// `[kafka.tls]`: TLS to the brokers. On when `enabled = true` or when any file is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTlsConfig {
    /// Unset: TLS is on exactly when a file below is set. `true` with no
    /// `ca_file` trusts the system's CA bundle (managed clusters).
    pub enabled: Option<bool>,
    /// PEM CA certificate(s) that signed the brokers' certificates.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require mutual TLS.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (unencrypted).
    pub key_file: PathBuf,
}

impl KafkaTlsConfig {
    /// Whether clients connect with TLS.
    pub fn is_on(&self) -> bool {
        self.enabled.unwrap_or_else(|| {
            [&self.ca_file, &self.cert_file, &self.key_file]
                .iter()
                .any(|f| !f.as_os_str().is_empty())
        })
    }
}

/// A SASL mechanism pushgate configures by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
    OauthBearer,
}

impl SaslMechanism {
    pub const ALL: [(&'static str, SaslMechanism); 4] = [
        ("PLAIN", SaslMechanism::Plain),
        ("SCRAM-SHA-256", SaslMechanism::ScramSha256),
        ("SCRAM-SHA-512", SaslMechanism::ScramSha512),
        ("OAUTHBEARER", SaslMechanism::OauthBearer),
    ];

    /// librdkafka's (and Kafka's) name of the mechanism.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("PLAIN")
    }
}

/// `[kafka.sasl]`: authentication; on when `mechanism` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSaslConfig {
    /// "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512" or "OAUTHBEARER"; empty: no SASL.
    pub mechanism: String,
    pub username: String,
    /// Best from the environment: `PUSHGATE__KAFKA__SASL__PASSWORD`.
    pub password: Secret,
    /// File holding the password (one trailing newline is ignored).
    pub password_file: PathBuf,
    /// OAUTHBEARER (OIDC client credentials): the token endpoint URL.
    pub oauth_token_endpoint: String,
    pub oauth_client_id: String,
    /// Best from the environment: `PUSHGATE__KAFKA__SASL__OAUTH_CLIENT_SECRET`.
    pub oauth_client_secret: Secret,
    pub oauth_client_secret_file: PathBuf,
    /// Space-separated scopes to ask for; empty: none.
    pub oauth_scope: String,
}

impl KafkaSaslConfig {
    /// The configured mechanism; `None` when SASL is off or the name is unknown.
    pub fn mechanism(&self) -> Option<SaslMechanism> {
        SaslMechanism::ALL
            .iter()
            .find(|(n, _)| self.mechanism.eq_ignore_ascii_case(n))
            .map(|(_, m)| *m)
    }

    pub fn is_on(&self) -> bool {
        !self.mechanism.is_empty()
    }
}

/// A secret string: Debug and Serialize print `[redacted]` (or nothing when
/// empty), so it never reaches a log line, an error or a dump of the config.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// Reads a TOML string; anything else is refused without echoing it (serde's
/// usual "invalid type: integer `12345`" would print the secret).
struct SecretVisitor;

const NOT_A_STRING: &str = "a secret must be a quoted string";

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a quoted string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(NOT_A_STRING))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(serde::de::Error::custom(NOT_A_STRING))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(serde::de::Error::custom(NOT_A_STRING))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the Kafka client and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            "[redacted]"
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

/// `[kafka.properties]`: raw librdkafka settings. Values of secret-looking
/// keys (`*password*`, `*secret*`, `*.pem`, `sasl.oauthbearer.config`) are
/// redacted in Debug and Serialize.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

/// One librdkafka value: a string, or a number or boolean written bare
/// (librdkafka takes them all as strings); anything else is refused without echoing it.
struct PropertyValue(String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        match Raw::deserialize(d) {
            Ok(Raw::S(s)) => Ok(Self(s)),
            Ok(Raw::I(i)) => Ok(Self(i.to_string())),
            Ok(Raw::F(f)) => Ok(Self(f.to_string())),
            Ok(Raw::B(b)) => Ok(Self(b.to_string())),
            Err(_) => Err(serde::de::Error::custom(
                "a librdkafka property must be a string, a number or a boolean",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, PropertyValue>::deserialize(d)?;
        Ok(Self(map.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

impl KafkaProperties {
    /// Whether librdkafka treats `key` as sensitive (or it looks like it should).
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        ["password", "secret", "passphrase"]
            .iter()
            .any(|w| key.contains(w))
            || key.ends_with(".pem")
            || key == "sasl.oauthbearer.config"
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn redacted(&self) -> std::collections::BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret(k) { "[redacted]" } else { v };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.redacted().fmt(f)
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "pushgate".into(),
            warm_start: WarmStart::Tail,
            isolation_level: IsolationLevel::ReadCommitted,
            fetch_wait_max_ms: 10,
            linger_ms: 1,
            metadata_refresh_interval: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
            catchup_readers: 4,
            catchup_cache_records: 10_000,
            catchup_timeout: Duration::from_secs(10),
            max_record_bytes: 1 << 20,
            dead_letter_topic: String::new(),
            tls: KafkaTlsConfig::default(),
            sasl: KafkaSaslConfig::default(),
            properties: Default::default(),
        }
    }
}

impl KafkaConfig {
    pub(crate) fn validate(&self, topics: &[TopicConfig]) -> Result<(), InvalidSetting> {
        if self.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
        }
        if self.fetch_wait_max_ms > 5_000 {
            return Err(invalid("kafka.fetch_wait_max_ms", "must be at most 5000"));
        }
        for (key, value) in [
            ("kafka.catchup_readers", self.catchup_readers),
            ("kafka.max_record_bytes", self.max_record_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (key, value) in [
            (
                "kafka.metadata_refresh_interval",
                self.metadata_refresh_interval,
            ),
            ("kafka.startup_timeout", self.startup_timeout),
            ("kafka.catchup_timeout", self.catchup_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if !self.dead_letter_topic.is_empty() {
            if !valid_topic_name(&self.dead_letter_topic) {
                return Err(invalid(
                    "kafka.dead_letter_topic",
                    "must be 1-249 characters of [a-zA-Z0-9._-]",
                ));
            }
            if topics.iter().any(|t| t.name == self.dead_letter_topic) {
                return Err(invalid(
                    "kafka.dead_letter_topic",
                    "must not be one of the [[topics]] it guards",
                ));
            }
        }
        self.validate_security()
    }

    /// `[kafka.tls]` and `[kafka.sasl]`: files readable, mechanism known, credentials complete.
    fn validate_security(&self) -> Result<(), InvalidSetting> {
        let tls = &self.tls;
        for (key, path) in [
            ("kafka.tls.ca_file", &tls.ca_file),
            ("kafka.tls.cert_file", &tls.cert_file),
            ("kafka.tls.key_file", &tls.key_file),
        ] {
            if tls.enabled == Some(false) && !path.as_os_str().is_empty() {
                return Err(invalid(key, "is set but kafka.tls.enabled is false"));
            }
            check_readable(key, path)?;
        }
        let has = |p: &PathBuf| !p.as_os_str().is_empty();
        if has(&tls.cert_file) != has(&tls.key_file) {
            let key = if has(&tls.cert_file) {
                "kafka.tls.key_file"
            } else {
                "kafka.tls.cert_file"
            };
            return Err(invalid(
                key,
                "is required: a client certificate needs both cert_file and key_file",
            ));
        }
        let sasl = &self.sasl;
        if !sasl.is_on() {
            let stray = [
                ("kafka.sasl.username", !sasl.username.is_empty()),
                ("kafka.sasl.password", !sasl.password.is_empty()),
                ("kafka.sasl.password_file", has(&sasl.password_file)),
                (
                    "kafka.sasl.oauth_token_endpoint",
                    !sasl.oauth_token_endpoint.is_empty(),
                ),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *key,
                    "is set but kafka.sasl.mechanism is empty (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
                ));
            }
            return Ok(());
        }
        let Some(mechanism) = sasl.mechanism() else {
            return Err(invalid(
                "kafka.sasl.mechanism",
                format!(
                    "is `{}`; must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
                    sasl.mechanism
                ),
            ));
        };
        check_secret_pair(
            "kafka.sasl.password",
            &sasl.password,
            "kafka.sasl.password_file",
            &sasl.password_file,
        )?;
        check_secret_pair(
            "kafka.sasl.oauth_client_secret",
            &sasl.oauth_client_secret,
            "kafka.sasl.oauth_client_secret_file",
            &sasl.oauth_client_secret_file,
        )?;
        if mechanism == SaslMechanism::OauthBearer {
            let endpoint = &sasl.oauth_token_endpoint;
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(invalid(
                    "kafka.sasl.oauth_token_endpoint",
                    "is required for OAUTHBEARER: the OIDC token endpoint, https://...",
                ));
            }
            if sasl.oauth_client_id.is_empty() {
                return Err(invalid(
                    "kafka.sasl.oauth_client_id",
                    "is required for OAUTHBEARER",
                ));
            }
            if sasl.oauth_client_secret.is_empty() && !has(&sasl.oauth_client_secret_file) {
                return Err(invalid(
                    "kafka.sasl.oauth_client_secret",
                    "is required for OAUTHBEARER (or kafka.sasl.oauth_client_secret_file; env PUSHGATE__KAFKA__SASL__OAUTH_CLIENT_SECRET)",
                ));
            }
        } else {
            if sasl.username.is_empty() {
                return Err(invalid(
                    "kafka.sasl.username",
                    format!("is required for {}", mechanism.name()),
                ));
            }
            if sasl.password.is_empty() && !has(&sasl.password_file) {
                return Err(invalid(
                    "kafka.sasl.password",
                    format!(
                        "is required for {} (or kafka.sasl.password_file; env PUSHGATE__KAFKA__SASL__PASSWORD)",
                        mechanism.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A file key, when set, must name a file this process can read.
fn check_readable(key: &str, path: &Path) -> Result<(), InvalidSetting> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    match std::fs::File::open(path) {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => Ok(()),
        Ok(_) => Err(invalid(key, format!("{} is not a file", path.display()))),
        Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
    }
}

/// A secret comes from the config/environment or from a file, not both.
fn check_secret_pair(
    key: &str,
    value: &Secret,
    file_key: &str,
    file: &Path,
) -> Result<(), InvalidSetting> {
    if !value.is_empty() && !file.as_os_str().is_empty() {
        return Err(invalid(
            key,
            format!("and {file_key} are both set; set one"),
        ));
    }
    check_readable(file_key, file)
}

/// Reads a secret file; one trailing newline (as `echo` writes) is not part of the secret.
pub fn read_secret_file(path: &Path) -> std::io::Result<Secret> {
    let mut text = std::fs::read_to_string(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Secret::new(text))
}
