//! Sources: where records come from (the embedded log, Kafka, or Kinesis).
//!
//! A source feeds every record of its topics to the [`Hub`](crate::hub::Hub)
//! through [`Topic::ingest`](crate::hub::Topic::ingest), in offset order per
//! partition, and answers the three questions the rest of the gateway asks of
//! it: append these records, read this older range back, and what is the
//! earliest position still retained. The router and the transports only ever
//! see this trait.

pub mod embedded;
// Each source's `[section]` is parsed in every build, so a file naming a
// source the build left out gets a clear error; its code is behind its feature.
#[path = "embedded/config.rs"]
pub mod embedded_config;
#[cfg(feature = "kafka")]
pub mod kafka;
#[path = "kafka/config.rs"]
pub mod kafka_config;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[path = "kinesis/config.rs"]
pub mod kinesis_config;
#[path = "kafka/registry/config.rs"]
pub mod registry_config;
pub mod topics;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::hub::{Hub, StoredView};
use crate::record::{Appended, LogRecord, NewRecord};
use crate::shutdown::Shutdown;
use topics::{TopicConfig, TopicRules};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
/// Which source the `[source]` section picks.
pub enum SourceKind {
    Embedded,
    Kafka,
    /// Amazon Kinesis Data Streams: the `[[topics]]` names are stream names.
    Kinesis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
/// The `[source]` section.
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Records read back per partition at start to fill the ring and the view.
    pub warm_start_records: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Embedded,
            warm_start_records: 10_000,
        }
    }
}

/// A source setting that cannot work: its key and why. The config loader
/// reports it as `ConfigError::Invalid`.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {problem}")]
pub struct InvalidSetting {
    pub key: String,
    pub problem: String,
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        problem: problem.into(),
    }
}

/// What a source is opened with: its sections of the config, the topics
/// and the rules that pick a topic's entry.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceConfig,
    pub topics: Vec<TopicConfig>,
    pub rules: TopicRules,
    pub embedded: embedded_config::EmbeddedConfig,
    pub kafka: kafka_config::KafkaConfig,
    pub schema_registry: registry_config::SchemaRegistryConfig,
    pub kinesis: kinesis_config::KinesisConfig,
}

/// Why the configured source could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the embedded log: {0}")]
    Embedded(#[from] embedded::LogError),
    #[cfg(feature = "kafka")]
    #[error("cannot start the Kafka source: {0}")]
    Kafka(#[from] kafka::KafkaSourceError),
    #[cfg(feature = "kinesis")]
    #[error("cannot start the Kinesis source: {0}")]
    Kinesis(#[from] kinesis::KinesisSourceError),
    /// `source.kind` names a source this binary was built without.
    #[error(
        "source.kind = \"{0}\": this build has no {0} source (built without the `{0}` feature)"
    )]
    NotBuilt(&'static str),
    #[error("startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The source opening, as [`open`] starts it.
pub type Opened = Pin<Box<dyn Future<Output = Result<Arc<dyn Source>, OpenError>> + Send>>;

/// Opens the configured source: the only place that looks at `source.kind`.
///
/// Returns at once the [`Opening`] the HTTP surface serves from (it refuses
/// as unavailable and names the source in `/readyz` until it is set) and the
/// future that opens the source: the embedded log read and warmed on a
/// blocking thread, Kafka connected within `kafka.startup_timeout`, Kinesis
/// shards read to their end within `kinesis.startup_timeout`.
pub fn open(config: &Settings, hub: Arc<Hub>, shutdown: Shutdown) -> (Arc<Opening>, Opened) {
    let config = config.clone();
    let (name, opened): (&'static str, Opened) = match config.source.kind {
        SourceKind::Embedded => (
            embedded::READINESS,
            Box::pin(async move {
                // redb I/O and the warm start block; keep them off the async workers.
                let log =
                    tokio::task::spawn_blocking(move || embedded::EmbeddedLog::open(&config, &hub))
                        .await??;
                Ok(Arc::new(log) as Arc<dyn Source>)
            }),
        ),
        #[cfg(feature = "kafka")]
        SourceKind::Kafka => (
            kafka::READINESS,
            Box::pin(async move {
                let source = kafka::KafkaSource::open(&config, hub, shutdown).await?;
                Ok(Arc::new(source) as Arc<dyn Source>)
            }),
        ),
        #[cfg(feature = "kinesis")]
        SourceKind::Kinesis => (
            kinesis::READINESS,
            Box::pin(
                async move { Ok(kinesis::KinesisSource::open(&config, hub, shutdown).await?) },
            ),
        ),
        #[cfg(not(feature = "kafka"))]
        SourceKind::Kafka => not_built("kafka", hub, shutdown),
        #[cfg(not(feature = "kinesis"))]
        SourceKind::Kinesis => not_built("kinesis", hub, shutdown),
    };
    (Arc::new(Opening::new(name)), opened)
}

/// A source this build leaves out: the run ends with [`OpenError::NotBuilt`].
#[cfg(not(all(feature = "kafka", feature = "kinesis")))]
fn not_built(name: &'static str, _: Arc<Hub>, _: Shutdown) -> (&'static str, Opened) {
    (
        name,
        Box::pin(async move { Err(OpenError::NotBuilt(name)) }),
    )
}

/// The error a source's client or storage failed with, kept as the cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a source answers when it cannot. Each variant that wraps a failure
/// keeps it as its `source()` (its message is also in the variant's, so one
/// line of log or a client's `unavailable` message reads the same as before).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown topic")]
    UnknownTopic,
    /// The requested position is older than anything retained.
    #[error("position {requested} is no longer retained (earliest is {earliest})")]
    Gap { requested: u64, earliest: u64 },
    /// Not open yet, a task it needs has stopped, or a read ran out of time: retry later.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// The log's client (Kafka, Kinesis) failed: retry later.
    #[error("the log is unavailable: {0}")]
    Client(#[source] Cause),
    /// The embedded log's storage failed.
    #[error("storage error: {0}")]
    Storage(#[source] Cause),
    /// A blocking task ended without answering (it panicked, or the runtime is stopping).
    #[error("storage error: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A publish would create a topic, but its `pattern` already serves `max` topics.
    #[error("`{pattern}` already serves {max} topics (its max_topics)")]
    TopicLimit { pattern: String, max: usize },
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Appends `records` to `topic` and returns where each landed, in order.
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError>;

    /// Reads up to `max` records of one partition, from offset `from` up to (not
    /// including) `until`. [`SourceError::Gap`] when `from` is no longer retained.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError>;

    /// The earliest retained offset of each partition of `topic`.
    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError>;

    /// True once the source has filled the hub and follows its topics live.
    fn is_ready(&self) -> bool;

    /// Whether this node's partition counts are the log's own, final ones (the
    /// embedded log), so a cursor naming more partitions is malformed, not
    /// ahead of this node (Kafka, Kinesis: partitions are added while nodes run).
    fn partition_counts_are_final(&self) -> bool {
        false
    }

    /// Whether this node's partition counts now cover every cursor issued
    /// before this call: true where they are final, and on Kafka once a
    /// metadata refresh started after the call has completed (it waits a few
    /// seconds at most); false where no such confirmation exists (Kinesis:
    /// shards split while nodes run) or the refresh failed.
    async fn confirm_partition_counts(&self) -> bool {
        self.partition_counts_are_final()
    }

    /// Configured topics the source cannot serve for a lasting reason the
    /// operator must fix (Kafka: ACLs deny READ), with that reason; empty
    /// for sources that have none. Retried by the source: a fix needs no restart.
    fn unavailable_topics(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The reason `topic` is in [`Source::unavailable_topics`], if it is.
    fn unavailable_cause(&self, topic: &str) -> Option<String> {
        self.unavailable_topics()
            .into_iter()
            .find_map(|(name, reason)| (name == topic).then_some(reason))
    }

    /// Runs `register` with `topic`'s stored view: the latest record per key
    /// as the log itself keeps it, pinned at exactly what the hub has
    /// ingested, and nothing ingested until `register` returns (it must not
    /// block on anything but the hub's locks). `None` where the source keeps
    /// none (Kafka, Kinesis: a snapshot of a view that evicted keys is partial).
    fn pinned_view(&self, _topic: &str, register: &mut dyn FnMut(Option<Arc<dyn StoredView>>)) {
        register(None)
    }

    /// Called once, after the drain: makes everything acknowledged durable and
    /// records a clean shutdown. Later publishes still work.
    async fn close(&self) {}
}

/// The source as the HTTP surface sees it from the first moment: not ready,
/// and refusing with [`SourceError::Unavailable`], until the real one has
/// opened (connected to its brokers, warmed the hub) and is [`set`](Opening::set).
/// Health checks answer meanwhile, which is what a load balancer and an
/// orchestrator need from a node that is still starting.
pub struct Opening {
    /// What the node waits for, as `/readyz` names it ("kafka", "kinesis", "embedded_log").
    waiting_for: &'static str,
    source: OnceLock<Arc<dyn Source>>,
}

impl Opening {
    pub fn new(waiting_for: &'static str) -> Self {
        Self {
            waiting_for,
            source: OnceLock::new(),
        }
    }

    /// Hands over the opened source; later calls are ignored.
    pub fn set(&self, source: Arc<dyn Source>) {
        let _ = self.source.set(source);
    }

    /// The source's name in `/readyz`'s `waiting_for`.
    pub fn waiting_for(&self) -> &'static str {
        self.waiting_for
    }

    /// The opened source, if it has opened.
    pub fn opened(&self) -> Option<&Arc<dyn Source>> {
        self.source.get()
    }

    fn get(&self) -> Result<&Arc<dyn Source>, SourceError> {
        self.source.get().ok_or_else(|| {
            SourceError::Unavailable(format!(
                "still connecting to the {}",
                self.waiting_for.replace('_', " ")
            ))
        })
    }
}

#[async_trait]
impl Source for Opening {
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError> {
        self.get()?.publish(topic, records).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError> {
        self.get()?.read(topic, partition, from, until, max).await
    }

    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError> {
        self.get()?.earliest(topic).await
    }

    fn is_ready(&self) -> bool {
        self.source.get().is_some_and(|s| s.is_ready())
    }

    fn partition_counts_are_final(&self) -> bool {
        self.source
            .get()
            .is_some_and(|s| s.partition_counts_are_final())
    }

    async fn confirm_partition_counts(&self) -> bool {
        match self.source.get() {
            Some(s) => s.confirm_partition_counts().await,
            None => false,
        }
    }

    fn unavailable_topics(&self) -> Vec<(String, String)> {
        self.source
            .get()
            .map(|s| s.unavailable_topics())
            .unwrap_or_default()
    }

    fn pinned_view(&self, topic: &str, register: &mut dyn FnMut(Option<Arc<dyn StoredView>>)) {
        match self.source.get() {
            Some(s) => s.pinned_view(topic, register),
            None => register(None),
        }
    }
}
