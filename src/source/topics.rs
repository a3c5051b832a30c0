//! The topics a source reads: the `[[topics]]` schema, the rules that say
//! which entry serves a topic name, and the topic-name rule shared by every source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod pattern;
pub(crate) use pattern::select;
pub use pattern::TopicPattern;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    pub name: String,
    /// Instead of `name`: every topic whose whole name this regex matches (see `config/pattern.rs`).
    pub pattern: Option<TopicPattern>,
    /// Embedded log, `pattern` entries: how many topics publishes may create through it.
    pub max_topics: usize,
    pub partitions: u32,
    /// Keep at most this many records per partition (0 = no count limit).
    pub retention_records: u64,
    /// Drop records older than this (unset = no age limit).
    #[serde(with = "humantime_serde")]
    pub retention_age: Option<Duration>,
    /// Recent records kept in memory per partition for fast resume.
    pub ring_records: usize,
    /// Latest value kept per key for snapshots, per partition (0 = no snapshots).
    pub view_max_keys: usize,
    /// Bytes the views of all the topic's partitions may hold together (0 =
    /// no byte bound); past it the partition being written evicts its keys
    /// updated longest ago.
    pub view_max_bytes: usize,
    /// How record values are read (Kafka source): plain JSON, or Debezium change events.
    pub format: RecordFormat,
    /// How a Debezium key struct becomes the record key (`format = "debezium"` only).
    pub key: KeyRule,
    /// How the value's bytes are encoded (Kafka source): as they are (`"json"`), or
    /// in the schema registry's wire format (`"avro"`, `"protobuf"`, `"json-schema"`),
    /// decoded to JSON at ingest. `format` (the envelope) applies to the decoded value.
    pub encoding: Encoding,
    /// The same for the key; a key decoded from Avro or Protobuf is its JSON text
    /// (a JSON string: the string itself).
    pub key_encoding: Encoding,
}

/// How the bytes of a key or value are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// As they are: JSON (else base64) values, UTF-8 keys.
    #[default]
    Json,
    /// Avro, in the registry's wire format (magic byte 0, 4-byte schema id, datum).
    Avro,
    /// Protobuf, in the registry's wire format (with the message-index list).
    Protobuf,
    /// JSON after the registry's wire header (the schema id must be known).
    JsonSchema,
}

impl Encoding {
    /// Whether bytes in this encoding carry a schema id the registry must know.
    pub fn needs_registry(self) -> bool {
        self != Encoding::Json
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Avro => "avro",
            Encoding::Protobuf => "protobuf",
            Encoding::JsonSchema => "json-schema",
        }
    }
}

/// How the records of a topic are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// The value is passed on as it is (JSON, else base64); a tombstone deletes its key.
    #[default]
    Json,
    /// Debezium change events (JSON, with or without the schema/payload wrapper).
    Debezium,
}

/// How a Debezium key (a JSON struct such as `{"id":1001}`) becomes the record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRule {
    /// A struct of one field: that field's value (`{"id":1001}` -> `1001`);
    /// a struct of several fields: its canonical JSON, as with `Json`.
    #[default]
    Field,
    /// Always the canonical JSON of the struct: members sorted, compact.
    Json,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            pattern: None,
            max_topics: 100,
            partitions: 1,
            retention_records: 1_000_000,
            retention_age: None,
            ring_records: 1024,
            view_max_keys: 100_000,
            view_max_bytes: 256 << 20,
            format: RecordFormat::Json,
            key: KeyRule::Field,
            encoding: Encoding::Json,
            key_encoding: Encoding::Json,
        }
    }
}

/// Which topics a node serves (as `Config::topic_for`), kept by a source.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    topics: Vec<TopicConfig>,
    excluded: Option<String>,
}

impl TopicRules {
    /// The rules for `topics`, leaving out `excluded` (a topic no pattern may serve).
    pub fn new(topics: Vec<TopicConfig>, excluded: Option<String>) -> Self {
        Self { topics, excluded }
    }

    /// The entry serving `name`, as `Config::topic_for`.
    pub fn topic_for(&self, name: &str) -> Option<&TopicConfig> {
        pattern::select(&self.topics, name, self.excluded.as_deref())
    }

    /// The topics named outright (not by a pattern).
    pub fn named(&self) -> impl Iterator<Item = &str> {
        self.topics
            .iter()
            .filter(|t| t.pattern.is_none())
            .map(|t| t.name.as_str())
    }

    /// Whether any topic's key or value is read through the schema registry.
    pub fn uses_registry(&self) -> bool {
        self.topics
            .iter()
            .any(|t| t.encoding.needs_registry() || t.key_encoding.needs_registry())
    }

    pub fn has_patterns(&self) -> bool {
        self.topics.iter().any(|t| t.pattern.is_some())
    }
}

/// Kafka's rule for topic names, so a topic name works in both sources.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}
