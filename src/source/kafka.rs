//! The Kafka source: every node assigns itself every partition of its topics and feeds the hub.
//!
//! - **Live consumer**: one librdkafka consumer on its own thread, `assign()`ed
//!   (no consumer group, no `subscribe()`: rebalances would cut streams, and
//!   every node needs every record) to all partitions of the configured topics,
//!   tuned for latency (`fetch.wait.max.ms` small). It hands each record to
//!   [`Topic::ingest`] in offset order. When the broker goes away librdkafka
//!   keeps the fetch position and reconnects; delivery resumes from there, and
//!   the hub ignores anything it has already seen.
//! - **Positions** are Kafka offsets; the epoch of a topic is a hash of the
//!   cluster id and the topic id (see [`meta`]), so a recreated topic gets a new
//!   epoch and old cursors are answered with `recovered:false`.
//! - **Warm start**: each partition is read from `max(low, high - warm_start_records)`
//!   (or from the low watermark with `warm_start = "earliest"`). A topic is
//!   served once every one of its partitions has reached the high watermark
//!   seen when it was added, and the node is ready once all the topics found
//!   at start are. A topic whose watermarks cannot be read is not added yet
//!   (it is retried): guessing them would serve history as if it were live.
//! - **Metadata refresh** (every `metadata_refresh_interval`): the cluster's
//!   topics are listed, and those this node serves (named in `[[topics]]`, or
//!   matched by a `[[topics]] pattern`) are described. Added partitions and
//!   topics created after start are assigned (and warmed like any new topic),
//!   a recreated topic replaces the hub's topic (its subscribers are
//!   disconnected to resume), a deleted topic a pattern matched is no longer
//!   served (its subscribers are disconnected with 4004 and it leaves
//!   `GET /topics`), lag and broker state are published as metrics; a resume
//!   whose cursor names more partitions than known asks for one soon, and is
//!   answered `bad_cursor` if that refresh confirms the count (see
//!   [`Source::confirm_partition_counts`]).
//! - **Egress**: the live consumer's statistics give
//!   `pushgate_kafka_fetch_bytes_total{topic}` (see [`fetch_stats`]).
//! - **Catch-up reads** for resumes older than the ring: see [`catchup`].
//! - **Publish** produces with an idempotent producer, `acks=all`, and Kafka's
//!   own (murmur2) partitioner, the same as the embedded log and Java clients.
//! - **Security**: every client (live, admin, catch-up, producer) gets the
//!   `[kafka.tls]`/`[kafka.sasl]` settings from [`security`] in [`base_config`].

mod catchup;
pub mod debezium;
pub mod decode;
mod earliest;
mod fetch_stats;
mod live;
pub mod meta;
pub mod registry;
pub mod security;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use self::catchup::CatchUpReader;
use self::earliest::EarliestCache;
use self::fetch_stats::FetchStats;
use self::live::Live;
use self::meta::{describe_topics, list_topics, topic_epoch, Described, MetaError};
use super::{Source, SourceError};
use crate::hub::{Hub, Topic, TopicSettings};
use crate::record::{Appended, LogRecord, NewRecord};
use crate::shutdown::Shutdown;
use crate::source::kafka_config::{KafkaConfig, WarmStart};
use crate::source::topics::{RecordFormat, TopicRules};
use crate::source::Settings;
use crate::telemetry;

/// How long one metadata or watermark request may take.
const META_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a resume naming unknown partitions waits for a metadata refresh
/// (one request, plus the live loop's 200 ms spacing) before `unavailable`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(4);

/// What `/readyz` names while Kafka is not ready.
pub const READINESS: &str = "kafka";

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("cannot create a Kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error(transparent)]
    Startup(#[from] security::StartupFailure),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("cannot start the Kafka consumer thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

/// One configured topic as this node knows it.
#[derive(Clone)]
struct Known {
    hub: Arc<Topic>,
    id: Option<[u8; 16]>,
    partitions: u32,
    /// Served because a `[[topics]] pattern` matches it: once deleted, it is no longer served.
    by_pattern: bool,
}

struct Inner {
    config: KafkaConfig,
    /// Which topics this node serves, with which settings and decoding (`format`, `key`,
    /// `encoding`, `key_encoding`).
    rules: TopicRules,
    /// The schema registry, when a topic's key or value is read through it.
    registry: Option<Arc<registry::Registry>>,
    warm_records: u64,
    hub: Arc<Hub>,
    cluster_id: String,
    /// Metadata, watermarks and topic ids; never assigned anything.
    admin: BaseConsumer<security::Probe>,
    producer: FutureProducer,
    topics: RwLock<HashMap<String, Known>>,
    /// Configured topics the broker's ACLs keep this node from reading, and why;
    /// described again at every metadata refresh, served once allowed.
    denied: RwLock<BTreeMap<String, String>>,
    ready: AtomicBool,
    catchup: CatchUpReader,
    /// Each topic's low watermarks, shared by the resumes of one second.
    earliest: EarliestCache,
    /// Set by a resume whose cursor names more partitions than this node
    /// knows; the live thread then refreshes metadata soon.
    refresh_wanted: AtomicBool,
    /// When the last successful metadata refresh started: a refresh that
    /// started after a cursor arrived confirms (or not) its partition count.
    refreshed: tokio::sync::watch::Sender<Option<Instant>>,
}

pub struct KafkaSource {
    inner: Arc<Inner>,
}

/// Settings every client shares (user `properties` last, so they win).
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("socket.nagle.disable", "true")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    for (k, v) in security::settings(config) {
        c.set(k, v);
    }
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// A consumer that is only ever `assign()`ed: no group, no commits, tuned for latency.
fn consumer_config(config: &KafkaConfig, partition_eof: bool) -> ClientConfig {
    let mut c = base_config(config);
    // librdkafka's assign() needs a group id, but nothing here joins the group
    // (no subscribe()) or commits to it: positions live in clients' cursors.
    c.set("group.id", format!("{}-assign-only", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        // Set even though it is librdkafka's default: what clients see of
        // transactions must not depend on a library default.
        .set("isolation.level", config.isolation_level.as_str())
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        .set("fetch.queue.backoff.ms", "5")
        .set(
            "enable.partition.eof",
            if partition_eof { "true" } else { "false" },
        );
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

impl KafkaSource {
    /// Connects, registers the configured topics with `hub` and starts the live
    /// consumer; the node reports ready once the warm start has caught up.
    pub async fn open(
        config: &Settings,
        hub: Arc<Hub>,
        shutdown: Shutdown,
    ) -> Result<Self, KafkaSourceError> {
        // Secret files are read once here; every client below, and every
        // catch-up reader made later, is built from `kc`.
        let kc = security::resolve(&config.kafka)?;
        let admin: BaseConsumer<security::Probe> =
            consumer_config(&kc, false).create_with_context(security::Probe::new(&kc))?;
        let rules = config.rules.clone();
        // Made (TLS files read) before connecting, so a bad file stops the start at once;
        // until it has answered, topics read through it are not served.
        let registry = if rules.uses_registry() {
            let r = Arc::new(registry::Registry::new(
                &config.schema_registry,
                tokio::runtime::Handle::current(),
            )?);
            let probe = Arc::clone(&r);
            tokio::spawn(async move { probe.wait_until_up().await });
            Some(r)
        } else {
            None
        };

        // The first describe proves the broker is there (and takes our TLS and
        // credentials); retry until startup_timeout, then say what went wrong.
        let deadline = Instant::now() + kc.startup_timeout;
        let (admin, cluster_id, described) = tokio::task::spawn_blocking({
            let rules = rules.clone();
            let kc = kc.clone();
            move || {
                let mut last = String::from("no attempt");
                let mut answered = false;
                loop {
                    // No request may outlast the deadline.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let cluster = admin.client().fetch_cluster_id(META_TIMEOUT.min(left));
                    answered |= cluster.is_some();
                    let left = deadline.saturating_duration_since(Instant::now());
                    let described = match cluster {
                        // Without a cluster id there is no point describing.
                        None => None,
                        Some(_) if left.is_zero() => None,
                        Some(_) => Some(discover(admin.client(), &rules, &[])),
                    };
                    match (cluster, described) {
                        (Some(cluster), Some(Ok(described))) => {
                            admin.context().started();
                            return Ok((admin, cluster, described));
                        }
                        (None, _) => last = "no answer to a metadata request".into(),
                        (_, Some(Err(e))) => last = e.to_string(),
                        (_, None) => {}
                    }
                    // Serve the admin client's events (errors reach its Probe
                    // this way) while waiting before the next attempt.
                    let pause = Instant::now() + Duration::from_millis(200);
                    while Instant::now() < pause.min(deadline) {
                        let _ = admin.poll(Duration::from_millis(50));
                    }
                }
                // What queued during the last request. No early stop: a served
                // log event also reads as `None`, like an empty queue.
                for _ in 0..1000 {
                    let _ = admin.poll(Duration::ZERO);
                }
                Err(admin
                    .context()
                    .failure(&kc, kc.startup_timeout, answered, last))
            }
        })
        .await
        .expect("describe task")?;
        // Made once the brokers are known to take our settings, so a failed
        // start-up reports once, from the admin client, not from each client.
        let mut producer_config = base_config(&kc);
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", kc.linger_ms.to_string())
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000");
        for (k, v) in &kc.properties {
            producer_config.set(k, v);
        }
        let producer: FutureProducer = producer_config.create()?;
        tracing::info!(cluster_id = %cluster_id, "connected to Kafka");

        let inner = Arc::new(Inner {
            catchup: CatchUpReader::new(&kc),
            earliest: EarliestCache::default(),
            config: kc,
            rules,
            registry,
            warm_records: config.source.warm_start_records,
            hub,
            cluster_id,
            admin,
            producer,
            topics: RwLock::new(HashMap::new()),
            denied: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            refresh_wanted: AtomicBool::new(false),
            refreshed: tokio::sync::watch::channel(None).0,
        });

        let consumer: BaseConsumer<FetchStats> = consumer_config(&inner.config, false)
            .set(
                "statistics.interval.ms",
                fetch_stats::INTERVAL_MS.to_string(),
            )
            .create_with_context(FetchStats)?;
        let worker = Arc::clone(&inner);
        let shutdown_flag = shutdown.clone();
        std::thread::Builder::new()
            .name("pushgate-kafka".into())
            .spawn(move || {
                // The one live consumer, assigned every partition: its events carry this span.
                let _span = tracing::info_span!("kafka_consumer").entered();
                let mut live = Live::new(worker, consumer);
                live.apply(described);
                live.run(&shutdown_flag);
            })?;
        Ok(Self { inner })
    }
}

/// Lists the cluster's topics and describes those this node serves: the ones
/// named in `[[topics]]`, those a pattern matches, and `known` (so that a
/// deleted one is reported `Missing`).
fn discover<C: ClientContext>(
    client: &Client<C>,
    rules: &TopicRules,
    known: &[String],
) -> Result<Vec<(String, Described)>, MetaError> {
    let listed = list_topics(client, META_TIMEOUT)?;
    let names = wanted(rules, &listed, known);
    describe_topics(client, &names, &listed, META_TIMEOUT)
}

/// The topic names to describe, sorted: named, matched in `listed`, and `known`.
fn wanted(rules: &TopicRules, listed: &[String], known: &[String]) -> Vec<String> {
    let mut names: BTreeSet<String> = rules.named().map(str::to_owned).collect();
    names.extend(
        listed
            .iter()
            .filter(|n| rules.topic_for(n).is_some())
            .cloned(),
    );
    names.extend(known.iter().cloned());
    names.into_iter().collect()
}

/// Offset at which a partition's warm start begins.
fn warm_from(mode: WarmStart, records: u64, low: u64, high: u64) -> u64 {
    match mode {
        WarmStart::Earliest => low,
        WarmStart::Tail => high.saturating_sub(records).max(low),
    }
}

impl Inner {
    fn known(&self, name: &str) -> Option<Known> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    fn set_known(&self, name: &str, known: Known) {
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_owned(), known);
    }

    /// How `topic`'s messages are decoded (json unless configured otherwise).
    fn decoding(&self, topic: &str) -> decode::Decoding {
        self.rules
            .topic_for(topic)
            .map(decode::Decoding::of)
            .unwrap_or_default()
    }

    /// Counts, logs and (if configured) dead-letters a record that cannot be used.
    fn bad_record<M: Message>(&self, msg: &M, bad: decode::Bad) {
        telemetry::kafka_bad_record(bad.label());
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            reason = bad.label(),
            detail = %bad,
            bytes = msg.payload().map(<[u8]>::len).unwrap_or(0),
            "bad record skipped"
        );
        let dlq = &self.config.dead_letter_topic;
        if dlq.is_empty() {
            return;
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(v) = msg.payload() {
            record = record.payload(v);
        }
        if let Some(ms) = msg.timestamp().to_millis() {
            record = record.timestamp(ms);
        }
        // The record's own headers first, unchanged, then where and why it was skipped.
        use rdkafka::message::Headers as _;
        let mut headers = rdkafka::message::OwnedHeaders::new();
        if let Some(own) = msg.headers() {
            for h in own.iter() {
                headers = headers.insert(h);
            }
        }
        let headers = headers
            .insert(rdkafka::message::Header {
                key: "pushgate.source",
                value: Some(&format!(
                    "{}/{}/{}",
                    msg.topic(),
                    msg.partition(),
                    msg.offset()
                )),
            })
            .insert(rdkafka::message::Header {
                key: "pushgate.reason",
                value: Some(bad.label()),
            });
        record = record.headers(headers);
        // Delivery is not awaited: the stream must never stop for the dead-letter topic.
        if let Err((e, _)) = self.producer.send_result(record) {
            tracing::error!(error = %e, topic = %dlq, "cannot queue a dead-letter record");
        }
    }

    fn partitions(&self, topic: &str) -> Result<u32, SourceError> {
        self.known(topic)
            .map(|k| k.partitions)
            .ok_or(SourceError::UnknownTopic)
    }
}

/// A failure of the Kafka client, kept as the cause.
fn client(e: KafkaError) -> SourceError {
    SourceError::Client(Box::new(e))
}

#[async_trait]
impl Source for KafkaSource {
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError> {
        self.inner.partitions(topic)?;
        let producer = &self.inner.producer;
        let mut pending = Vec::with_capacity(records.len());
        // Queue all first (in order; idempotence keeps per-partition order), then await.
        let parents: Vec<Option<String>> = records
            .iter()
            .map(|r| r.trace.map(|t| t.header()))
            .collect();
        for (rec, parent) in records.iter().zip(&parents) {
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(&rec.data);
            if let Some(k) = &rec.key {
                record = record.key(k);
            }
            // The publisher's span travels with the record, so every node's ingest span continues it.
            if let Some(parent) = parent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(parent.as_str()),
                }));
            }
            let future = producer.send_result(record).map_err(|(e, _)| client(e))?;
            pending.push(future);
        }
        let mut out = Vec::with_capacity(pending.len());
        for future in pending {
            let delivery = future
                .await
                .map_err(|_| SourceError::Unavailable("producer stopped".into()))?
                .map_err(|(e, _)| client(e))?;
            out.push(Appended {
                partition: delivery.partition.max(0) as u32,
                offset: delivery.offset.max(0) as u64,
                position: None,
            });
        }
        Ok(out)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError> {
        self.inner.partitions(topic)?;
        let inner = Arc::clone(&self.inner);
        self.inner
            .catchup
            .read(inner, topic, partition, from, until, max)
            .await
    }

    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError> {
        let partitions = self.inner.partitions(topic)?;
        let ask = || {
            let inner = Arc::clone(&self.inner);
            let topic = topic.to_owned();
            async move {
                tokio::task::spawn_blocking(move || {
                    (0..partitions)
                        .map(|p| {
                            inner
                                .admin
                                .fetch_watermarks(&topic, p as i32, META_TIMEOUT)
                                .map(|(low, _)| low.max(0) as u64)
                                .map_err(client)
                        })
                        .collect()
                })
                .await?
            }
        };
        let mut low = self.inner.earliest.get(topic, ask).await?;
        // Partitions added since the answer was taken begin at 0.
        low.resize(low.len().max(partitions as usize), 0);
        Ok(low)
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    async fn confirm_partition_counts(&self) -> bool {
        // Partitions are only ever added: a count described by a refresh that
        // started after the cursor arrived is at least the one that cursor saw.
        let asked = Instant::now();
        let mut refreshed = self.inner.refreshed.subscribe();
        self.inner.refresh_wanted.store(true, Ordering::Release);
        let confirmed = async {
            // The watch's guard is dropped here, not held past this future.
            refreshed
                .wait_for(|at| at.is_some_and(|at| at >= asked))
                .await
                .is_ok()
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .unwrap_or(false)
    }

    fn unavailable_topics(&self) -> Vec<(String, String)> {
        let denied = self.inner.denied.read().expect("denied lock");
        denied.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Give queued dead-letter and publish records a moment to leave.
        let _ = self.inner.producer.flush(Duration::from_millis(500));
    }
}

/// Fills the columns a Debezium update names as unavailable (an unchanged
/// TOASTed value PostgreSQL did not send under `REPLICA IDENTITY DEFAULT`) from
/// the key's previous row in the view, before the record is encoded: live
/// subscribers, the ring and the view (so snapshots) get the row as it is in
/// the database, not the placeholder. A key the view does not hold keeps the
/// placeholder; so does a record read back by a catch-up reader (beyond the ring).
fn fill_unavailable(topic: &Topic, record: &mut LogRecord) {
    if !debezium::may_have_unavailable(&record.data) {
        return;
    }
    let Some(key) = record.key.as_deref() else {
        return;
    };
    if let Some(previous) = topic.latest(key) {
        if let Some(filled) = debezium::fill_unavailable(&record.data, previous.data()) {
            record.data = filled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn shipped_kafka_config_is_valid() {
        let text = include_str!("../../config/kafka.toml");
        let config = Config::from_toml_str(text, std::iter::empty()).unwrap();
        assert_eq!(config.source.kind, crate::source::SourceKind::Kafka);
        assert_eq!(config.kafka.fetch_wait_max_ms, 10);
        let bad = text.replace("catchup_readers = 4", "catchup_readers = 0");
        let err = Config::from_toml_str(&bad, std::iter::empty()).unwrap_err();
        assert!(err.to_string().contains("kafka.catchup_readers"), "{err}");
    }

    pub(super) fn rules(text: &str) -> Settings {
        let base = "[source]\nkind = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\ndead_letter_topic = \"db.dlq\"\n";
        Config::from_toml_str(&format!("{base}{text}"), std::iter::empty())
            .unwrap()
            .source_settings()
    }

    #[test]
    fn wanted_lists_named_matched_and_known_topics() {
        let config =
            rules("[[topics]]\nname = \"prices\"\n[[topics]]\npattern = \"db\\\\.inv\\\\..*\"\n");
        let listed: Vec<String> = [
            "db.inv.a",
            "db.inv.b",
            "db.invx",
            "xdb.inv.a",
            "other",
            "__consumer_offsets",
            "db.dlq",
        ]
        .map(String::from)
        .into();
        let known = vec!["db.inv.gone".to_owned()];
        assert_eq!(
            wanted(&config.rules.clone(), &listed, &known),
            ["db.inv.a", "db.inv.b", "db.inv.gone", "prices"],
            "a named topic is described even when missing (it is reported Missing); a known one so its deletion is seen"
        );
    }

    #[test]
    fn warm_start_range() {
        assert_eq!(warm_from(WarmStart::Tail, 100, 0, 1000), 900);
        assert_eq!(warm_from(WarmStart::Tail, 100, 950, 1000), 950);
        assert_eq!(warm_from(WarmStart::Tail, 100, 0, 10), 0);
        assert_eq!(warm_from(WarmStart::Earliest, 100, 5, 1000), 5);
    }
}
