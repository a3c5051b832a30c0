//! Configuration: the TOML file, environment overrides, and the checks run before binding.
//!
//! Every key is documented in `config/pushgate.toml`. With no file, pushgate
//! runs the demo configuration in `config/demo.toml` (loopback only, anonymous
//! subscribe and publish, a simulated stock ticker).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod env;
use env::apply_override;

// Each source owns its section and the topic schema it reads; this file
// composes them (and re-exports the types a config file names).
pub use crate::source::embedded_config::EmbeddedConfig;
pub use crate::source::kafka_config::KafkaConfig;
pub use crate::source::kinesis_config::KinesisConfig;
pub use crate::source::topics::{
    valid_topic_name, Encoding, KeyRule, RecordFormat, TopicConfig, TopicPattern, TopicRules,
};
pub use crate::source::{InvalidSetting, SourceConfig, SourceKind};
pub use crate::traces::TelemetryConfig;

/// The demo configuration, compiled in so the binary runs from any directory.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");
/// Environment variables with this prefix override file keys: `PUSHGATE__LIMITS__QUEUE_BYTES=65536`.
pub const ENV_PREFIX: &str = "PUSHGATE__";

/// What the command line sets over the file and the environment.
///
/// `--listen` and `--data-dir` (or their own variables `PUSHGATE_LISTEN` and
/// `PUSHGATE_DATA_DIR`, read by the flag parser) win over `server.listen` and
/// `embedded.data_dir` from the file or from `PUSHGATE__SERVER__LISTEN` and
/// `PUSHGATE__EMBEDDED__DATA_DIR`. Both spellings are kept (deployments use
/// them); this is their one order.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl From<InvalidSetting> for ConfigError {
    fn from(e: InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: e.key,
            problem: e.problem,
        }
    }
}

impl From<crate::traces::InvalidTelemetry> for ConfigError {
    fn from(e: crate::traces::InvalidTelemetry) -> Self {
        invalid(e.key, e.problem)
    }
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub source: SourceConfig,
    pub embedded: EmbeddedConfig,
    pub topics: Vec<TopicConfig>,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    pub sse: SseConfig,
    pub auth: AuthConfig,
    pub demo: DemoConfig,
    pub testing: TestingConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: crate::source::registry_config::SchemaRegistryConfig,
    pub kinesis: KinesisConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
}

/// `[admin]`: the operator's API (`/admin/...`), off unless enabled.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// The static bearer secret (`PUSHGATE__ADMIN__TOKEN`); at least 16 characters.
    pub token: crate::source::kafka_config::Secret,
    /// A separate address for the admin routes; not set: the main listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The control topic every node reads revocations and grant changes
    /// from. Not set: `pushgate.control` on the embedded log (reserved
    /// there), none on Kafka and Kinesis; `""`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_topic: Option<String>,
}

/// The embedded log's reserved control topic, when `admin.control_topic` is not set.
pub const DEFAULT_CONTROL_TOPIC: &str = "pushgate.control";

/// The shortest `admin.token` accepted.
pub const ADMIN_TOKEN_MIN: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `listen(2)`'s backlog (capped at `net.core.somaxconn`): a reconnect storm beyond it waits for SYN retries.
    pub listen_backlog: u32,
    /// Folder served at `/` instead of the page built into the binary; empty
    /// to serve no page. Not set: the built-in page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A drain closes its clients at random moments over this interval (each
    /// with the usual reconnect code), so the fleet's other nodes take them
    /// gradually. At most half of `shutdown_grace` is used, so the drain
    /// still ends within the grace; 0: all at once.
    #[serde(with = "humantime_serde")]
    pub drain_spread: Duration,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Load balancers (addresses or CIDR networks) whose `X-Forwarded-For`,
    /// or PROXY protocol header, is believed for the client address.
    pub trusted_proxies: Vec<crate::proxy::ProxyNet>,
    /// Read a PROXY protocol header (v1 or v2) on every connection from a
    /// trusted proxy (HAProxy `send-proxy-v2`, an AWS NLB's proxy protocol v2).
    pub proxy_protocol: bool,
    /// TLS on the listener itself (single-node deployments without a load
    /// balancer in front): HTTP/2 and HTTP/1.1 by ALPN. Absent: cleartext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// How long a page of `GET /topics/{topic}/records` that ends below the
    /// log's head may be cached (`Cache-Control: max-age`); 0: never.
    #[serde(with = "humantime_serde")]
    pub records_max_age: Duration,
}

/// `[server.tls]`: the certificate chain and key, PEM, re-read when either file changes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are checked for a change.
    #[serde(with = "humantime_serde", default = "default_tls_reload")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub queue_bytes: usize,
    pub max_connections: usize,
    pub max_subscriptions_per_connection: usize,
    pub max_keys_per_subscription: usize,
    pub max_message_bytes: usize,
    pub max_publish_bytes: usize,
    pub max_publish_records: usize,
    pub max_key_bytes: usize,
    pub max_snapshot_records: usize,
    pub max_connections_per_ip: usize,
    /// A subscription's value filter: compact JSON size, nesting, operators, list length.
    pub max_filter_bytes: usize,
    pub max_filter_depth: usize,
    pub max_filter_operators: usize,
    pub max_filter_list: usize,
    /// Records per second one caller (token subject, or IP when anonymous) may publish.
    pub publish_rate: f64,
    pub publish_burst: f64,
    /// New streaming connections (WebSocket, SSE, gRPC) admitted per second
    /// by this node, before authentication; beyond it a handshake is refused
    /// with 503 and `Retry-After`. 0: no limit.
    pub connect_rate: f64,
    /// Handshakes admitted at once above `connect_rate`.
    pub connect_burst: f64,
    /// Catch-up reads from the log running at once; more resumes queue.
    pub catchup_concurrency: usize,
    /// Bytes of records of recent catch-up reads kept node-wide for resumes
    /// that come a little later (oldest dropped first). 0: none kept; a
    /// resume still joins a read in flight.
    pub catchup_cache_bytes: usize,
    /// A snapshot streaming from clones of the views moves on to the views as
    /// they are now once they have let go of (replaced, deleted) more than
    /// this many bytes of entries since it was taken, which it may be alone
    /// in holding. 0: it never moves.
    pub snapshot_hold_bytes: usize,
    /// A connection whose socket takes no bytes for this long while a write waits is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Origins allowed to open a WebSocket (and to publish with the cookie token); empty = same origin only; "*" = any.
    pub allowed_origins: Vec<String>,
    /// A connection that has not subscribed within this time is closed (4008).
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// permessage-deflate (RFC 7692) without context takeover: "off", or
    /// "shared" (each record compressed once, shared by every connection).
    pub compression: WsCompression,
    /// The fan-out loop writes a record's frame to an idle cleartext socket
    /// itself, instead of waking the connection's task to write it.
    pub direct_writes: bool,
}

/// `websocket.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WsCompression {
    #[default]
    Off,
    Shared,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub anonymous_subscribe: bool,
    pub anonymous_publish: bool,
    /// The claim holding `{"subscribe": [...], "publish": [...]}` grants.
    pub claim: String,
    /// Cookie that may carry the token (empty: none).
    pub cookie: String,
    /// Accepted `iss` values (empty: not checked; set: `iss` is required).
    pub issuer: Vec<String>,
    /// Accepted `aud` values (empty: not checked; set: `aud` is required).
    pub audience: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// After `exp`, a connection has this long to send a fresh token.
    #[serde(with = "humantime_serde")]
    pub expiry_grace: Duration,
    pub jwks_file: PathBuf,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Hmac,
    Rsa,
    Ec,
    Ed25519,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kind: KeyKind,
    #[serde(default)]
    pub kid: String,
    /// HMAC secret (at least 32 bytes).
    #[serde(default)]
    pub secret: String,
    /// PEM public key for rsa, ec and ed25519.
    #[serde(default)]
    pub pem_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Adds `GET /echo`, a WebSocket echo with the production framing settings,
    /// for the Autobahn conformance suite. Never turn it on in production.
    pub echo_endpoint: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub enabled: bool,
    pub topic: String,
    pub symbols: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_backlog: 4096,
            static_dir: None,
            shutdown_grace: Duration::from_secs(10),
            drain_spread: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            tls: None,
            records_max_age: Duration::from_secs(3600),
        }
    }
}

impl LimitsConfig {
    /// The bounds a client's (or a grant's) value filter must stay within.
    pub fn filter_limits(&self) -> crate::shaping::FilterLimits {
        crate::shaping::FilterLimits {
            max_bytes: self.max_filter_bytes,
            max_depth: self.max_filter_depth,
            max_operators: self.max_filter_operators,
            max_list: self.max_filter_list,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            queue_bytes: 1 << 20,
            max_connections: 100_000,
            max_subscriptions_per_connection: 64,
            max_keys_per_subscription: 1000,
            max_message_bytes: 64 * 1024,
            max_publish_bytes: 1 << 20,
            max_publish_records: 1000,
            max_key_bytes: 1024,
            max_snapshot_records: 0,
            max_connections_per_ip: 1000,
            max_filter_bytes: 4096,
            max_filter_depth: 8,
            max_filter_operators: 64,
            max_filter_list: 256,
            publish_rate: 1000.0,
            publish_burst: 2000.0,
            connect_rate: 0.0,
            connect_burst: 500.0,
            catchup_concurrency: 32,
            catchup_cache_bytes: 64 << 20,
            snapshot_hold_bytes: 16 << 20,
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            read_buffer_bytes: 64,
            write_buffer_bytes: 0,
            allowed_origins: Vec::new(),
            subscribe_timeout: Duration::from_secs(30),
            compression: WsCompression::Off,
            direct_writes: true,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            retry: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(25),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        // Safe by default: nothing anonymous unless the config says so.
        Self {
            anonymous_subscribe: false,
            anonymous_publish: false,
            claim: "pushgate".into(),
            cookie: String::new(),
            issuer: Vec::new(),
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            expiry_grace: Duration::from_secs(10),
            jwks_file: PathBuf::new(),
            jwks_refresh: Duration::from_secs(5),
            keys: Vec::new(),
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            topic: "prices".into(),
            symbols: Vec::new(),
            interval: Duration::from_millis(500),
        }
    }
}

impl Config {
    /// The built-in demo configuration.
    pub fn demo() -> Self {
        Self::from_toml_str(DEMO_TOML, std::iter::empty()).expect("demo config is valid")
    }

    /// Reads `path` (or the demo config when `None`), applies `PUSHGATE__…`
    /// overrides from `env`, then the command line's `overrides`, and only
    /// then validates, once: a file whose `server.listen` the flag replaces is
    /// judged by the address that will be used.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => DEMO_TOML.to_owned(),
        };
        let mut config = Self::parse(&text, env)?;
        if let Some(listen) = overrides.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.embedded.data_dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses `text` with `PUSHGATE__…` overrides from `env`, and validates.
    pub fn from_toml_str(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse(text, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses `text` with `PUSHGATE__…` overrides from `env`; not validated yet.
    fn parse(text: &str, env: impl Iterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, path, &value)?;
            }
        }
        table.try_into().map_err(ConfigError::Parse)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics
            .iter()
            .find(|t| t.pattern.is_none() && t.name == name)
    }

    /// Checks that serde cannot express; every error names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        if let Some(tls) = &self.server.tls {
            for (key, path) in [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ] {
                if !path.is_file() {
                    return Err(invalid(key, "must name a readable PEM file"));
                }
            }
            if tls.reload_interval < Duration::from_millis(10) {
                return Err(invalid(
                    "server.tls.reload_interval",
                    "must be at least 10ms",
                ));
            }
        }
        if self.admin.enabled && self.admin.token.expose().chars().count() < ADMIN_TOKEN_MIN {
            return Err(invalid(
                "admin.token",
                format!("must be at least {ADMIN_TOKEN_MIN} characters when admin.enabled is true"),
            ));
        }
        if self.topics.is_empty() {
            return Err(invalid("topics", "must name at least one topic"));
        }
        if let Some(control) = self.control_topic() {
            if !crate::source::topics::valid_topic_name(control) {
                return Err(invalid(
                    "admin.control_topic",
                    "is not a valid topic name (letters, digits, `.`, `_`, `-`; at most 249)",
                ));
            }
            if self.source.kind == SourceKind::Kinesis {
                return Err(invalid(
                    "admin.control_topic",
                    "is not supported on Kinesis yet: set it to \"\"",
                ));
            }
            if let Some(i) = self.topics.iter().position(|t| t.name == control) {
                return Err(invalid(
                    format!("topics[{i}].name"),
                    format!("`{control}` is admin.control_topic: clients cannot read it"),
                ));
            }
        }
        let mut seen = HashSet::new();
        let mut seen_patterns = HashSet::new();
        for (i, topic) in self.topics.iter().enumerate() {
            let key = |field: &str| format!("topics[{i}].{field}");
            match &topic.pattern {
                Some(_) if !topic.name.is_empty() => {
                    return Err(invalid(
                        key("pattern"),
                        "cannot be given together with `name`: use one of them",
                    ))
                }
                Some(p) => {
                    if p.as_str().is_empty() {
                        return Err(invalid(key("pattern"), "must not be empty"));
                    }
                    if let Some(e) = p.error() {
                        return Err(invalid(
                            key("pattern"),
                            format!("is not a valid regex: {e}"),
                        ));
                    }
                    if !seen_patterns.insert(p.as_str()) {
                        return Err(invalid(key("pattern"), format!("repeats `{}`", p.as_str())));
                    }
                    if topic.max_topics == 0 {
                        return Err(invalid(key("max_topics"), "must be at least 1"));
                    }
                }
                None if topic.name.is_empty() => {
                    return Err(invalid(
                        key("name"),
                        "is required (or `pattern`, a regex for many topics)",
                    ))
                }
                None => {
                    if !valid_topic_name(&topic.name) {
                        return Err(invalid(
                            key("name"),
                            "must be 1-249 characters of [a-zA-Z0-9._-]",
                        ));
                    }
                    if !seen.insert(topic.name.as_str()) {
                        return Err(invalid(key("name"), format!("repeats `{}`", topic.name)));
                    }
                }
            }
            if topic.partitions == 0 || topic.partitions as usize > crate::cursor::MAX_PARTITIONS {
                return Err(invalid(key("partitions"), "must be between 1 and 4096"));
            }
            if topic.ring_records == 0 {
                return Err(invalid(key("ring_records"), "must be at least 1"));
            }
            if topic.retention_records != 0 && topic.retention_records < topic.ring_records as u64 {
                return Err(invalid(
                    key("retention_records"),
                    "must be 0 (unlimited) or at least ring_records",
                ));
            }
        }
        for (i, topic) in self.topics.iter().enumerate() {
            // Change events come from Kafka Connect; the embedded log has no connector.
            if topic.format == RecordFormat::Debezium && self.source.kind != SourceKind::Kafka {
                return Err(invalid(
                    format!("topics[{i}].format"),
                    "\"debezium\" needs source.kind = \"kafka\"",
                ));
            }
            // Registry-encoded records are read by the Kafka source only.
            for (field, encoding) in [
                ("encoding", topic.encoding),
                ("key_encoding", topic.key_encoding),
            ] {
                if !encoding.needs_registry() {
                    continue;
                }
                if self.source.kind != SourceKind::Kafka {
                    return Err(invalid(
                        format!("topics[{i}].{field}"),
                        format!("\"{}\" needs source.kind = \"kafka\"", encoding.name()),
                    ));
                }
                if !self.schema_registry.is_set() {
                    return Err(invalid(
                        format!("topics[{i}].{field}"),
                        format!("\"{}\" needs [schema_registry] url", encoding.name()),
                    ));
                }
            }
        }
        let positive = [
            ("limits.queue_bytes", self.limits.queue_bytes),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_subscriptions_per_connection",
                self.limits.max_subscriptions_per_connection,
            ),
            (
                "limits.max_keys_per_subscription",
                self.limits.max_keys_per_subscription,
            ),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            ("limits.max_publish_bytes", self.limits.max_publish_bytes),
            (
                "limits.max_publish_records",
                self.limits.max_publish_records,
            ),
            ("limits.max_key_bytes", self.limits.max_key_bytes),
            ("limits.max_filter_bytes", self.limits.max_filter_bytes),
            ("limits.max_filter_depth", self.limits.max_filter_depth),
            (
                "limits.max_filter_operators",
                self.limits.max_filter_operators,
            ),
            ("limits.max_filter_list", self.limits.max_filter_list),
            (
                "websocket.read_buffer_bytes",
                self.websocket.read_buffer_bytes,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let durations = [
            ("websocket.ping_interval", self.websocket.ping_interval),
            ("sse.keepalive_interval", self.sse.keepalive_interval),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            (
                "websocket.subscribe_timeout",
                self.websocket.subscribe_timeout,
            ),
            ("auth.jwks_refresh", self.auth.jwks_refresh),
            ("limits.write_timeout", self.limits.write_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        self.embedded.validate()?;
        if self.limits.max_filter_depth > 32 {
            // Evaluation recurses once per level: keep it far from the stack's end.
            return Err(invalid("limits.max_filter_depth", "must be at most 32"));
        }
        if !(self.limits.publish_rate > 0.0 && self.limits.publish_rate.is_finite()) {
            return Err(invalid("limits.publish_rate", "must be a positive number"));
        }
        if self.limits.publish_burst < 1.0 {
            return Err(invalid("limits.publish_burst", "must be at least 1"));
        }
        if !(self.limits.connect_rate >= 0.0 && self.limits.connect_rate.is_finite()) {
            return Err(invalid(
                "limits.connect_rate",
                "must be 0 (no limit) or a positive number",
            ));
        }
        if self.limits.connect_burst < 1.0 {
            return Err(invalid("limits.connect_burst", "must be at least 1"));
        }
        if self.limits.catchup_concurrency == 0 {
            return Err(invalid("limits.catchup_concurrency", "must be at least 1"));
        }
        if self.auth.claim.is_empty() {
            return Err(invalid("auth.claim", "must not be empty"));
        }
        for (i, key) in self.auth.keys.iter().enumerate() {
            match key.kind {
                KeyKind::Hmac if key.secret.len() < 32 => {
                    return Err(invalid(
                        format!("auth.keys[{i}].secret"),
                        "must be at least 32 bytes",
                    ))
                }
                KeyKind::Rsa | KeyKind::Ec | KeyKind::Ed25519
                    if key.pem_file.as_os_str().is_empty() =>
                {
                    return Err(invalid(
                        format!("auth.keys[{i}].pem_file"),
                        "is required for this kind",
                    ))
                }
                _ => {}
            }
        }
        if self.source.kind == SourceKind::Kafka {
            self.kafka.validate(&self.topics)?;
            self.schema_registry.validate()?;
        }
        if self.source.kind == SourceKind::Kinesis {
            self.kinesis.validate(&self.topics)?;
        }
        if self.demo.enabled {
            if self.topic(&self.demo.topic).is_none() {
                return Err(invalid(
                    "demo.topic",
                    format!("names `{}`, which is not in [[topics]]", self.demo.topic),
                ));
            }
            if self.demo.symbols.is_empty() {
                return Err(invalid("demo.symbols", "must list at least one symbol"));
            }
            if self.demo.interval.is_zero() {
                return Err(invalid("demo.interval", "must be longer than 0s"));
            }
        }
        Ok(())
    }

    /// True when `name` is one of the `[[topics]]`, or a valid topic name one of their patterns matches.
    pub fn has_topic(&self, name: &str) -> bool {
        self.topic_for(name).is_some()
    }

    /// The `[[topics]]` entry that serves `name`: the one naming it, else the
    /// first `pattern` (in file order) matching it. The Kafka dead-letter
    /// topic is never served by a pattern: its own bad records would be
    /// copied back into it.
    pub fn topic_for(&self, name: &str) -> Option<&TopicConfig> {
        crate::source::topics::select(&self.topics, name, self.pattern_excluded())
    }

    /// The rules `topic_for` applies, owned, for a source to keep.
    /// What the source is opened with (`source::open`).
    pub(crate) fn source_settings(&self) -> crate::source::Settings {
        // The control topic is read like any other, named outright (so no
        // pattern serves it): one partition, its whole history kept.
        let mut topics = self.topics.clone();
        if let Some(control) = self.control_topic() {
            topics.insert(
                0,
                TopicConfig {
                    name: control.to_owned(),
                    partitions: 1,
                    retention_records: 0,
                    ..TopicConfig::default()
                },
            );
        }
        crate::source::Settings {
            source: self.source.clone(),
            rules: TopicRules::new(topics.clone(), self.pattern_excluded().map(str::to_owned)),
            topics,
            embedded: self.embedded.clone(),
            kafka: self.kafka.clone(),
            schema_registry: self.schema_registry.clone(),
            kinesis: self.kinesis.clone(),
        }
    }

    pub fn topic_rules(&self) -> TopicRules {
        TopicRules::new(
            self.topics.clone(),
            self.pattern_excluded().map(str::to_owned),
        )
    }

    fn pattern_excluded(&self) -> Option<&str> {
        (self.source.kind == SourceKind::Kafka && !self.kafka.dead_letter_topic.is_empty())
            .then_some(self.kafka.dead_letter_topic.as_str())
    }

    /// The control topic (see [`AdminConfig::control_topic`]), if there is one.
    pub fn control_topic(&self) -> Option<&str> {
        match self.admin.control_topic.as_deref() {
            Some("") => None,
            Some(name) => Some(name),
            None if self.source.kind == SourceKind::Embedded => Some(DEFAULT_CONTROL_TOPIC),
            None => None,
        }
    }

    /// Whether clients may not name `topic`: it is the control topic.
    pub fn is_control_topic(&self, topic: &str) -> bool {
        self.control_topic() == Some(topic)
    }

    /// True when this config lets anyone publish on a non-loopback address.
    pub fn open_publish_on_network(&self) -> bool {
        self.auth.anonymous_publish && !self.server.listen.ip().is_loopback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kafka_config::SaslMechanism;

    #[test]
    fn shipped_configs_are_valid() {
        let demo = Config::demo();
        assert!(demo.demo.enabled);
        assert!(demo.auth.anonymous_subscribe && demo.auth.anonymous_publish);
        assert!(demo.server.listen.ip().is_loopback());
        let full = include_str!("../config/pushgate.toml");
        let config = Config::from_toml_str(full, std::iter::empty()).unwrap();
        assert!(!config.demo.enabled);
    }

    #[test]
    fn the_control_topic_is_reserved_and_defaults_by_source() {
        let embedded =
            Config::from_toml_str("[[topics]]\nname = \"a\"\n", std::iter::empty()).unwrap();
        assert_eq!(embedded.control_topic(), Some(DEFAULT_CONTROL_TOPIC));
        assert_eq!(
            embedded.source_settings().topics[0].name,
            DEFAULT_CONTROL_TOPIC
        );
        assert!(embedded.topic_for(DEFAULT_CONTROL_TOPIC).is_none());
        let err = Config::from_toml_str(
            "[[topics]]\nname = \"pushgate.control\"\n",
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("topics[0].name"), "{err}");
        let off = Config::from_toml_str(
            "[admin]\ncontrol_topic = \"\"\n[[topics]]\nname = \"a\"\n",
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(off.control_topic(), None);
        let kafka = Config::from_toml_str(
            "[source]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b:9092\"\n[[topics]]\nname = \"a\"\n",
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(kafka.control_topic(), None);
        let bad = Config::from_toml_str(
            "[admin]\ncontrol_topic = \"no spaces\"\n[[topics]]\nname = \"a\"\n",
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(bad.to_string().contains("admin.control_topic"), "{bad}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_toml_str(
            "[[topics]]\nname = \"a\"\npartitions = 0\n",
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("topics[0].partitions"), "{err}");
        let err = Config::from_toml_str(
            "[limits]\nqueue_byte = 5\n[[topics]]\nname = \"a\"\n",
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("queue_byte"), "{err}");
        let err = Config::from_toml_str(
            "[websocket]\nping_interval = \"soon\"\n[[topics]]\nname = \"a\"\n",
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ping_interval"), "{err}");
    }

    #[test]
    fn kinesis_config_is_checked_naming_the_key() {
        let load = |kinesis: &str, topics: &str| {
            Config::from_toml_str(
                &format!("[source]\nkind = \"kinesis\"\n[kinesis]\n{kinesis}\n{topics}"),
                std::iter::empty(),
            )
        };
        let stream = "[[topics]]\nname = \"orders\"\n";
        let config = load("endpoint_url = \"http://127.0.0.1:4567\"", stream).unwrap();
        assert_eq!(config.source.kind, SourceKind::Kinesis);
        assert_eq!(config.kinesis.poll_interval, Duration::from_millis(500));
        for (kinesis, topics, key) in [
            ("poll_interval = \"100ms\"", stream, "kinesis.poll_interval"),
            (
                "records_per_call = 20000",
                stream,
                "kinesis.records_per_call",
            ),
            (
                "endpoint_url = \"127.0.0.1:4567\"",
                stream,
                "kinesis.endpoint_url",
            ),
            ("region = \"\"", stream, "kinesis.region"),
            (
                "position_index_records = 0",
                stream,
                "kinesis.position_index_records",
            ),
            ("", "[[topics]]\npattern = \"o.*\"\n", "topics[0].pattern"),
        ] {
            let err = load(kinesis, topics).unwrap_err();
            assert!(err.to_string().contains(key), "{kinesis}: {err}");
        }
    }

    #[test]
    fn embedded_cache_is_bounded_and_checked() {
        let topic = "[[topics]]\nname = \"a\"\n";
        let config = Config::from_toml_str(topic, std::iter::empty()).unwrap();
        assert_eq!(config.embedded.cache_bytes, 64 << 20);
        for bad in ["0", "1048575"] {
            let err = Config::from_toml_str(
                &format!("[embedded]\ncache_bytes = {bad}\n{topic}"),
                std::iter::empty(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("embedded.cache_bytes"), "{err}");
        }
        let err = Config::from_toml_str(
            &format!("[embedded]\ncache_bytes = -1\n{topic}"),
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cache_bytes"), "{err}");
        let env = [(
            "PUSHGATE__EMBEDDED__CACHE_BYTES".to_owned(),
            "4194304".to_owned(),
        )];
        let config = Config::from_toml_str(topic, env.into_iter()).unwrap();
        assert_eq!(config.embedded.cache_bytes, 4 << 20);
    }

    #[test]
    fn topics_by_pattern_are_validated_naming_the_key() {
        let load = |topics: &str| Config::from_toml_str(topics, std::iter::empty());
        let config = load(
            "[[topics]]\nname = \"a\"\n[[topics]]\npattern = \"^db\\\\.inv\\\\..*\"\nring_records = 5\n",
        )
        .unwrap();
        assert!(config.has_topic("a"));
        assert!(config.has_topic("db.inv.customers"));
        assert_eq!(config.topic_for("db.inv.x").unwrap().ring_records, 5);
        assert!(!config.has_topic("db.invx"));
        assert!(!config.has_topic("b"));
        assert!(
            config.topic("db.inv.x").is_none(),
            "`topic` is by name only"
        );

        let cases = [
            (
                "[[topics]]\nname = \"a\"\npattern = \"a.*\"\n",
                "topics[0].pattern",
                "together with `name`",
            ),
            (
                "[[topics]]\npartitions = 2\n",
                "topics[0].name",
                "or `pattern`",
            ),
            (
                "[[topics]]\nname = \"a\"\n[[topics]]\npattern = \"(unclosed\"\n",
                "topics[1].pattern",
                "not a valid regex",
            ),
            ("[[topics]]\npattern = \"\"\n", "topics[0].pattern", "empty"),
            (
                "[[topics]]\npattern = \"a.*\"\n[[topics]]\npattern = \"a.*\"\n",
                "topics[1].pattern",
                "repeats",
            ),
            (
                "[[topics]]\npattern = \"a.*\"\nmax_topics = 0\n",
                "topics[0].max_topics",
                "at least 1",
            ),
            (
                "[[topics]]\npattern = \"a.*\"\nring_records = 0\n",
                "topics[0].ring_records",
                "at least 1",
            ),
        ];
        for (toml, key, problem) in cases {
            let err = load(toml).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(problem), "{toml}: {err}");
        }
    }

    #[test]
    fn the_dead_letter_topic_is_never_served_by_a_pattern() {
        let text = "[source]\nkind = \"kafka\"\n[kafka]\ndead_letter_topic = \"app.dlq\"\n[[topics]]\npattern = \"app\\\\..*\"\n";
        let config = Config::from_toml_str(text, std::iter::empty()).unwrap();
        assert!(config.has_topic("app.orders"));
        assert!(!config.has_topic("app.dlq"));
        assert!(config.topic_rules().topic_for("app.dlq").is_none());
        assert!(config.topic_rules().topic_for("app.orders").is_some());
    }

    #[test]
    fn environment_overrides_file() {
        let env = vec![
            (
                "PUSHGATE__LIMITS__QUEUE_BYTES".to_owned(),
                "4096".to_owned(),
            ),
            (
                "PUSHGATE__SERVER__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let config = Config::from_toml_str("[[topics]]\nname = \"a\"\n", env.into_iter()).unwrap();
        assert_eq!(config.limits.queue_bytes, 4096);
        assert_eq!(config.server.listen.port(), 9999);
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1111\"\n[[topics]]\nname = \"a\"\n",
        )
        .unwrap();
        let env = [(
            "PUSHGATE__SERVER__LISTEN".to_owned(),
            "127.0.0.1:9999".to_owned(),
        )];
        let overrides = Overrides {
            listen: Some("127.0.0.1:7777".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::load(Some(&file), env.clone().into_iter(), &overrides).unwrap();
        assert_eq!(config.server.listen.port(), 7777);
        assert_eq!(config.embedded.data_dir, dir.path().join("data"));
        let without = Config::load(Some(&file), env.into_iter(), &Overrides::default()).unwrap();
        assert_eq!(without.server.listen.port(), 9999);
        let file_only = Config::load(Some(&file), std::iter::empty(), &Overrides::default());
        assert_eq!(file_only.unwrap().server.listen.port(), 1111);
    }

    #[test]
    fn debezium_format_and_key_rule() {
        let kafka = include_str!("../config/kafka.toml");
        // The commented example at the end of the shipped Kafka config, switched on.
        let at = kafka.find("# [[topics]]").expect("a commented example");
        // Only the TOML lines are switched on; the prose around them stays comment.
        let example: String = kafka[at..]
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(toml)
                    if toml.starts_with("[[")
                        || toml.starts_with(char::is_lowercase) && toml.contains(" = ") =>
                {
                    toml
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The registry-encoded example needs [schema_registry] (commented out above it).
        let example = format!(
            "{}{example}\n[schema_registry]\nurl = \"http://127.0.0.1:8081\"\n",
            &kafka[..at]
        );
        let config = Config::from_toml_str(&example, std::iter::empty()).unwrap();
        let orders = config.topic("orders").expect("registry example topic");
        assert_eq!(
            (orders.encoding, orders.key_encoding),
            (Encoding::Avro, Encoding::Json)
        );
        let without = example.replace("url = \"http://127.0.0.1:8081\"", "");
        let err = Config::from_toml_str(&without, std::iter::empty()).unwrap_err();
        assert!(
            err.to_string().contains("needs [schema_registry] url"),
            "{err}"
        );
        let cdc = config
            .topic("dbserver1.inventory.customers")
            .expect("example topic");
        assert_eq!(
            (cdc.format, cdc.key),
            (RecordFormat::Debezium, KeyRule::Field)
        );
        assert_eq!(config.topic("prices").unwrap().format, RecordFormat::Json);

        let toml = "[[topics]]\nname = \"a\"\nformat = \"debezium\"\nkey = \"json\"\n";
        let err = Config::from_toml_str(toml, std::iter::empty()).unwrap_err();
        assert!(
            err.to_string().contains("topics[0].format"),
            "embedded: {err}"
        );
        let kafka_toml = format!("[source]\nkind = \"kafka\"\n{toml}");
        let config = Config::from_toml_str(&kafka_toml, std::iter::empty()).unwrap();
        assert_eq!(config.topics[0].key, KeyRule::Json);
        let bad = kafka_toml.replace("\"json\"", "\"column\"");
        assert!(Config::from_toml_str(&bad, std::iter::empty()).is_err());
        let bad = kafka_toml.replace("\"debezium\"", "\"avro\"");
        assert!(Config::from_toml_str(&bad, std::iter::empty()).is_err());
    }

    const KAFKA: &str = "[source]\nkind = \"kafka\"\n[[topics]]\nname = \"a\"\n";

    fn kafka(extra: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(&format!("{KAFKA}{extra}"), env.into_iter())
    }

    #[test]
    fn sasl_password_comes_from_the_nested_environment_key_verbatim() {
        let sasl = "[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"alice\"\n";
        for password in ["hunter2-\"quoted\"", "12345", "true", "[x, y]"] {
            let config = kafka(sasl, &[("PUSHGATE__KAFKA__SASL__PASSWORD", password)]).unwrap();
            assert_eq!(config.kafka.sasl.password.expose(), password);
        }
        // The whole section from the environment, no file keys at all.
        let config = kafka(
            "",
            &[
                ("PUSHGATE__KAFKA__SASL__MECHANISM", "PLAIN"),
                ("PUSHGATE__KAFKA__SASL__USERNAME", "key"),
                ("PUSHGATE__KAFKA__SASL__PASSWORD", "pw"),
                ("PUSHGATE__KAFKA__TLS__ENABLED", "true"),
            ],
        )
        .unwrap();
        assert!(config.kafka.tls.is_on());
        assert_eq!(config.kafka.sasl.mechanism(), Some(SaslMechanism::Plain));
    }

    #[test]
    fn secrets_never_show_in_debug_or_serialized_config() {
        let config = kafka(
            "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\noauth_token_endpoint = \"https://idp/token\"\noauth_client_id = \"pushgate\"\n[kafka.properties]\n\"ssl.key.password\" = \"keypass-77\"\n\"socket.timeout.ms\" = \"1000\"\n",
            &[("PUSHGATE__KAFKA__SASL__OAUTH_CLIENT_SECRET", "oauth-secret-42")],
        )
        .unwrap();
        assert_eq!(
            config.kafka.sasl.oauth_client_secret.expose(),
            "oauth-secret-42"
        );
        let config2 = kafka(
            "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"alice\"\n",
            &[("PUSHGATE__KAFKA__SASL__PASSWORD", "pa55-w0rd-99")],
        )
        .unwrap();
        for (config, secrets) in [
            (&config, &["oauth-secret-42", "keypass-77"][..]),
            (&config2, &["pa55-w0rd-99"][..]),
        ] {
            let shown = [
                format!("{config:?}"),
                format!("{config:#?}"),
                format!("{:?}", config.kafka),
                toml::to_string(config).unwrap(),
                serde_json::to_string(config).unwrap(),
            ];
            for text in &shown {
                for secret in secrets {
                    assert!(!text.contains(secret), "{secret} leaked in {text}");
                }
                assert!(text.contains("[redacted]"), "{text}");
            }
        }
        assert!(format!("{:?}", config.kafka.properties).contains("1000"));
        // A secret of the wrong type is refused without being echoed.
        for (bad, secret) in [
            (
                "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\npassword = 987654321\n",
                "987654321",
            ),
            (
                "[kafka.properties]\n\"sasl.password\" = [\"x-secret-list\"]\n",
                "x-secret-list",
            ),
        ] {
            let err = kafka(bad, &[]).unwrap_err().to_string();
            assert!(err.contains("string"), "{err}");
            assert!(!err.contains(secret), "{err}");
        }
        let numbers = kafka("[kafka.properties]\n\"socket.timeout.ms\" = 1000\n\"enable.ssl.certificate.verification\" = true\n", &[]).unwrap();
        assert_eq!(
            numbers.kafka.properties.get("socket.timeout.ms"),
            Some("1000")
        );
        assert_eq!(
            numbers
                .kafka
                .properties
                .get("enable.ssl.certificate.verification"),
            Some("true")
        );
    }

    #[test]
    fn kafka_security_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let ca = ca.display().to_string();
        let missing = dir.path().join("nope.pem").display().to_string();
        let cases: Vec<(String, &str)> = vec![
            (format!("[kafka.tls]\nca_file = \"{missing}\"\n"), "kafka.tls.ca_file"),
            (format!("[kafka.tls]\ncert_file = \"{ca}\"\n"), "kafka.tls.key_file"),
            (
                format!("[kafka.tls]\nenabled = false\nca_file = \"{ca}\"\n"),
                "kafka.tls.ca_file",
            ),
            ("[kafka.sasl]\nmechanism = \"GSSAPI\"\n".into(), "kafka.sasl.mechanism"),
            ("[kafka.sasl]\nusername = \"a\"\n".into(), "kafka.sasl.username"),
            (
                "[kafka.sasl]\nmechanism = \"PLAIN\"\npassword = \"x\"\n".into(),
                "kafka.sasl.username",
            ),
            (
                "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\n".into(),
                "kafka.sasl.password",
            ),
            (
                format!("[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\npassword = \"x\"\npassword_file = \"{ca}\"\n"),
                "kafka.sasl.password",
            ),
            (
                format!("[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\npassword_file = \"{missing}\"\n"),
                "kafka.sasl.password_file",
            ),
            (
                "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\n".into(),
                "kafka.sasl.oauth_token_endpoint",
            ),
            (
                "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\noauth_token_endpoint = \"https://x\"\noauth_client_id = \"c\"\n".into(),
                "kafka.sasl.oauth_client_secret",
            ),
        ];
        for (extra, key) in cases {
            let err = kafka(&extra, &[])
                .map(|_| ())
                .expect_err(&extra)
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
        }
        let ok = kafka(
            &format!("[kafka.tls]\nca_file = \"{ca}\"\ncert_file = \"{ca}\"\nkey_file = \"{ca}\"\n[kafka.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"a\"\npassword_file = \"{ca}\"\n"),
            &[],
        )
        .unwrap();
        assert!(ok.kafka.tls.is_on() && ok.kafka.sasl.is_on());
    }
}

#[cfg(test)]
mod documented {
    use super::*;
    use crate::source::kafka_config::IsolationLevel;

    /// Every `section.key` of the defaults (and every `[[topics]]` key).
    fn keys(config: &Config) -> Vec<(String, String)> {
        let mut with_topic = config.clone();
        with_topic.topics = vec![TopicConfig {
            retention_age: Some(Duration::from_secs(1)),
            pattern: Some(TopicPattern::new("a.*").expect("valid")),
            ..TopicConfig::default()
        }];
        // Keys that serialize only when set.
        with_topic.kafka.tls.enabled = Some(true);
        with_topic.admin.listen = Some("127.0.0.1:9090".parse().expect("an address"));
        let value = toml::Value::try_from(&with_topic).expect("config serializes");
        let mut out = Vec::new();
        for (section, body) in value.as_table().expect("table") {
            match body {
                toml::Value::Table(t) => {
                    out.extend(t.keys().map(|k| (section.clone(), k.clone())));
                    // Sub-sections such as [kafka.tls]: each of their keys too.
                    for (sub, inner) in t {
                        if let toml::Value::Table(inner) = inner {
                            let name = format!("{section}.{sub}");
                            out.extend(inner.keys().map(|k| (name.clone(), k.clone())));
                        }
                    }
                }
                toml::Value::Array(items) => {
                    for item in items.iter().filter_map(|i| i.as_table()) {
                        out.extend(item.keys().map(|k| (section.clone(), k.clone())));
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn kafka_isolation_level_is_read_committed_unless_set_and_checked() {
        let base = "[source]\nkind = \"kafka\"\n[[topics]]\nname = \"a\"\n";
        let parse =
            |extra: &str| Config::from_toml_str(&format!("{base}{extra}"), std::iter::empty());
        assert_eq!(
            parse("").unwrap().kafka.isolation_level,
            IsolationLevel::ReadCommitted
        );
        let uncommitted = parse("[kafka]\nisolation_level = \"read_uncommitted\"\n").unwrap();
        assert_eq!(
            uncommitted.kafka.isolation_level.as_str(),
            "read_uncommitted"
        );
        let err = parse("[kafka]\nisolation_level = \"committed\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("isolation_level") && err.contains("read_committed"),
            "{err}"
        );
    }

    #[test]
    fn every_key_is_documented_in_the_reference_configs() {
        let reference = include_str!("../config/pushgate.toml");
        let kafka = include_str!("../config/kafka.toml");
        let mut missing = Vec::new();
        for (section, key) in keys(&Config::default()) {
            let text = if section == "kafka"
                || section.starts_with("kafka.")
                || section == "schema_registry"
                || section.starts_with("schema_registry.")
            {
                kafka
            } else {
                reference
            };
            // Documented means the key appears as `key =` or as its own table, set or commented out.
            let found = text.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} ="))
                    || line == format!("[{section}.{key}]")
                    || line == format!("[[{section}.{key}]]")
            });
            if !found {
                missing.push(format!("{section}.{key}"));
            }
        }
        assert!(missing.is_empty(), "undocumented config keys: {missing:?}");
    }
}
