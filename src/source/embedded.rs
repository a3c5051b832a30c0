//! The embedded log: topics and partitions with Kafka-style offsets, durable in one redb file.
//!
//! One writer thread owns every append: it takes whatever publish requests are
//! waiting, writes them in one transaction (group commit, fsynced), then hands
//! the new records to the hub in offset order, and only then answers the
//! publishers. Reads for catch-up run on the blocking pool against redb's MVCC
//! snapshots, so they never wait for the writer. Retention (by count and age)
//! runs on the writer thread between batches.
//!
//! Durability (`embedded.durability`): with `"fsync"` (the default) every
//! batch is fsynced before fan-out. With `embedded.commit_wait` set (off by
//! default), while publishes arrive at least two per that span, the writer
//! holds each batch open that long for more, so they share the commit and
//! its fsync (`embedded/writer.rs`). With `"os"` a batch is committed without
//! an fsync, fanned out and acknowledged at once; the writer fsyncs whenever
//! it has nothing waiting, and at least every [`OS_SYNC_EVERY`] under load.
//! The `meta` flag `unsynced` is set (durably) while such a run is open and
//! cleared by [`Source::close`] after a final fsync. Found set at open, it
//! means an unclean shutdown may have lost acknowledged records, whose
//! offsets will be reused: the log takes a new epoch, so every cursor from
//! before gets a gap (`reason: "epoch"`) instead of resuming past them.
//!
//! Layout: table `meta` (`epoch`), table `partitions` topic -> partition
//! count (every topic the log has, listed or created), table `positions`
//! (topic, partition) -> next offset, and two tables per topic, `records/<topic>`:
//! (partition, offset) -> `[timestamp i64 LE][key flag u8][key len u32 LE][key][json]`,
//! and `latest/<topic>`: (partition, key) -> `[offset u64 LE]` and that
//! key's latest record as `records` stores it (see `embedded/latest.rs`).
//!
//! Topics: the `[[topics]]` listed by name exist from the start. A name a
//! `[[topics]] pattern` matches is created by its first publish (with that
//! entry's settings and `partitions`), recorded in `partitions`, and found
//! again at every later start while a pattern still matches it. Its epoch, like
//! every topic's, is made from the log's epoch and its name, so cursors resume
//! across restarts.
//!
//! A record whose JSON is `null` is a tombstone: it removes its key from the view.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};
use tokio::sync::{mpsc, oneshot};

mod latest;
mod writer;

use super::{Source, SourceError};
use crate::hub::{Hub, StoredView, Topic, TopicSettings};
use crate::record::{partition_for_key, Appended, LogRecord, NewRecord, TOMBSTONE_EXTRA};
use crate::source::embedded_config::Durability as Mode;
use crate::source::topics::{TopicConfig, TopicRules};
use crate::source::Settings;
use crate::traces::TraceParent;
use writer::Writer;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POSITIONS: TableDefinition<(&str, u32), u64> = TableDefinition::new("positions");
const PARTITIONS: TableDefinition<&str, u32> = TableDefinition::new("partitions");
/// Publish requests batched into one transaction at most.
const MAX_BATCH: usize = 256;
/// With `durability = "os"`: the longest a busy writer goes without an fsync.
pub const OS_SYNC_EVERY: Duration = Duration::from_millis(20);
/// Records deleted by one retention pass per partition, so a pass stays short.
const MAX_TRIM: usize = 100_000;

/// What `/readyz` names while the embedded log opens.
pub const READINESS: &str = "embedded_log";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("`topics[{index}].partitions` is {configured}, but the log already has {existing} partitions for `{name}`; partitions can be added, never removed")]
    PartitionsLowered {
        index: usize,
        name: String,
        configured: u32,
        existing: u32,
    },
}

fn storage<E: Into<redb::Error>>(e: E) -> LogError {
    LogError::Storage(e.into())
}

struct TopicLog {
    name: String,
    table: String,
    partitions: u32,
    retention_records: u64,
    retention_age: Option<Duration>,
    earliest: Vec<AtomicU64>,
    hub: Arc<Topic>,
    /// Next offset per partition when the topic was registered (the writer starts from it).
    start: Vec<u64>,
    /// The `[[topics]] pattern` it was found by; `None` when listed by name.
    pattern: Option<String>,
}

/// The topics the log serves, by index (appends name topics by index).
#[derive(Default)]
struct Registry {
    list: Vec<Arc<TopicLog>>,
    by_name: HashMap<String, usize>,
}

/// What the log, its writer thread and topic creation (on the blocking pool) share.
struct Shared {
    db: Database,
    epoch: u64,
    registry: RwLock<Registry>,
    rules: TopicRules,
    hub: Arc<Hub>,
    warm_records: u64,
    /// Serializes topic creation, so two first publishes to one name create it once.
    creating: Mutex<()>,
    /// A read transaction that holds exactly what the hub has ingested: the
    /// writer holds the write side while it ingests a batch and then stores
    /// the transaction it opened right after that batch's commit (see
    /// `embedded/latest.rs`). `None` if it could not be opened.
    pinned: RwLock<Option<Arc<ReadTransaction>>>,
}

impl Shared {
    fn topic(&self, name: &str) -> Option<(usize, Arc<TopicLog>)> {
        let registry = self.registry.read().expect("registry lock");
        let index = *registry.by_name.get(name)?;
        Some((index, Arc::clone(&registry.list[index])))
    }

    fn topics(&self) -> Vec<Arc<TopicLog>> {
        self.registry.read().expect("registry lock").list.clone()
    }

    /// Registers a topic with the hub, warms it from the log, and serves it.
    fn register(
        &self,
        name: &str,
        tc: &TopicConfig,
        partitions: u32,
        next: Vec<u64>,
    ) -> Result<usize, LogError> {
        let hub_topic = self.hub.add_topic(
            name,
            topic_epoch(self.epoch, name),
            partitions,
            TopicSettings {
                ring_records: tc.ring_records,
                view_max_keys: tc.view_max_keys,
                view_max_bytes: tc.view_max_bytes,
            },
        );
        let topic = TopicLog {
            name: name.to_owned(),
            table: table_name(name),
            partitions,
            retention_records: tc.retention_records,
            retention_age: tc.retention_age,
            earliest: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            hub: hub_topic,
            start: next,
            pattern: tc.pattern.as_ref().map(|p| p.as_str().to_owned()),
        };
        warm(&self.db, &topic, &topic.start, self.warm_records)?;
        let hub_topic = Arc::clone(&topic.hub);
        let index = {
            let mut registry = self.registry.write().expect("registry lock");
            let index = registry.list.len();
            registry.by_name.insert(name.to_owned(), index);
            registry.list.push(Arc::new(topic));
            index
        };
        // Served only once the log can answer reads of it (catch-up, earliest).
        hub_topic.mark_ready();
        Ok(index)
    }

    /// Runs `ingest` with the pinned transaction's lock held for writing,
    /// then pins a read transaction opened before it: what the hub ingests
    /// is exactly what that transaction holds.
    fn repin<T>(&self, ingest: impl FnOnce() -> T) -> T {
        let txn = self.db.begin_read();
        let mut pinned = self.pinned.write().expect("pinned lock");
        let out = ingest();
        *pinned = match txn {
            Ok(txn) => Some(Arc::new(txn)),
            Err(e) => {
                // Snapshots of partitions whose view lacks keys say partial meanwhile.
                tracing::error!(error = %e, "cannot open a read transaction for snapshots");
                None
            }
        };
        out
    }

    /// Creates `name`, which a `[[topics]] pattern` matches, for its first publish.
    fn create(&self, name: &str) -> Result<usize, SourceError> {
        let _creating = self.creating.lock().expect("create lock");
        if let Some((index, _)) = self.topic(name) {
            return Ok(index);
        }
        let tc = match self.rules.topic_for(name) {
            Some(tc) if tc.pattern.is_some() => tc,
            // Listed topics exist from the start; anything else is not ours.
            _ => return Err(SourceError::UnknownTopic),
        };
        let pattern = tc.pattern.as_ref().map(|p| p.as_str()).unwrap_or("");
        let served = self
            .topics()
            .iter()
            .filter(|t| t.pattern.as_deref() == Some(pattern))
            .count();
        if served >= tc.max_topics {
            return Err(SourceError::TopicLimit {
                pattern: pattern.to_owned(),
                max: tc.max_topics,
            });
        }
        let fail = |e: LogError| SourceError::Storage(Box::new(e));
        // Recorded before it is served: a restart finds it even if no record lands.
        let (partitions, next) = record_topic(&self.db, name, tc.partitions).map_err(fail)?;
        let index = self.register(name, tc, partitions, next).map_err(fail)?;
        tracing::info!(topic = %name, pattern = %pattern, partitions, "topic created by its first publish");
        Ok(index)
    }
}

/// Records `name` in the `partitions` table (keeping a larger stored count) and
/// creates its records table; returns its partition count and next offsets.
fn record_topic(db: &Database, name: &str, partitions: u32) -> Result<(u32, Vec<u64>), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let result;
    {
        let mut parts = txn.open_table(PARTITIONS).map_err(storage)?;
        let stored = parts.get(name).map_err(storage)?.map(|v| v.value());
        let partitions = stored.unwrap_or(0).max(partitions);
        parts.insert(name, partitions).map_err(storage)?;
        txn.open_table(records_table(&table_name(name)))
            .map_err(storage)?;
        latest::ensure(&txn, name)?;
        let positions = txn.open_table(POSITIONS).map_err(storage)?;
        let mut next = Vec::new();
        for p in 0..partitions {
            let n = positions
                .get((name, p))
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0);
            next.push(n);
        }
        result = (partitions, next);
    }
    txn.commit().map_err(storage)?;
    Ok(result)
}

enum Message {
    Append(Append),
    /// Wakes the writer for retention when nothing is published.
    Tick,
    /// Fsync, mark the shutdown clean, and commit durably from then on.
    Close(oneshot::Sender<()>),
}

struct Append {
    topic: usize,
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Vec<Appended>, SourceError>>,
}

pub struct EmbeddedLog {
    shared: Arc<Shared>,
    appends: mpsc::Sender<Message>,
    ready: AtomicBool,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.embedded.data_dir`, registers its
    /// topics with `hub` (the listed ones, and those created earlier through a
    /// pattern that still matches them), warms the hub from the tail of each
    /// partition, and starts the writer thread. The thread ends when the log is dropped.
    pub fn open(config: &Settings, hub: &Arc<Hub>) -> Result<Self, LogError> {
        let dir = &config.embedded.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| LogError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        // A bounded page cache: redb's default (1 GiB) grows with the file.
        let db = redb::Builder::new()
            .set_cache_size(config.embedded.cache_bytes)
            .create(dir.join("pushgate.redb"))
            .map_err(storage)?;
        let rules = config.rules.clone();
        let mode = config.embedded.durability;
        let (epoch, prepared) = prepare(&db, &config.topics, &rules, mode)?;
        let shared = Arc::new(Shared {
            db,
            epoch,
            registry: RwLock::new(Registry::default()),
            rules,
            hub: Arc::clone(hub),
            warm_records: config.source.warm_start_records,
            creating: Mutex::new(()),
            pinned: RwLock::new(None),
        });
        for topic in prepared {
            shared.register(&topic.name, &topic.config, topic.partitions, topic.next)?;
        }
        // Before the writer starts: the log holds what the warm start read.
        // A topic created later is missing from it until the writer's next
        // batch pins a newer one, which is right: nothing of it is ingested.
        shared.repin(|| ());

        let (appends, rx) = mpsc::channel(1024);
        let writer = Writer {
            shared: Arc::clone(&shared),
            next: Vec::new(),
            round_robin: Vec::new(),
            retention_every: config.embedded.retention_check_interval,
            last_retention: Instant::now() - config.embedded.retention_check_interval,
            fast: mode == Mode::Os,
            unsynced: false,
            last_sync: Instant::now(),
            commit_wait: config.embedded.commit_wait,
            arrivals: 0.0,
            last_pick: Instant::now(),
        };
        std::thread::Builder::new()
            .name("pushgate-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::Storage(redb::Error::Io(e)))?;
        // The ticker holds only a weak sender, so it never keeps the log alive.
        let weak = appends.downgrade();
        let every = config.embedded.retention_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(sender) = weak.upgrade() else { break };
                if sender.try_send(Message::Tick).is_err() && sender.is_closed() {
                    break;
                }
            }
        });
        Ok(Self {
            shared,
            appends,
            ready: AtomicBool::new(true),
        })
    }

    fn topic(&self, topic: &str) -> Result<(usize, Arc<TopicLog>), SourceError> {
        self.shared.topic(topic).ok_or(SourceError::UnknownTopic)
    }
}

/// A topic found at open, before it is registered.
struct Prepared {
    name: String,
    config: TopicConfig,
    partitions: u32,
    next: Vec<u64>,
}

/// Creates tables and the epoch, and lists the topics to serve: the listed
/// ones, then stored ones a pattern matches, with their next offset per partition.
fn prepare(
    db: &Database,
    topics: &[TopicConfig],
    rules: &TopicRules,
    mode: Mode,
) -> Result<(u64, Vec<Prepared>), LogError> {
    // Committed with redb's default durability (fsynced): the `unsynced` flag
    // is on disk before any unsynced batch.
    let txn = db.begin_write().map_err(storage)?;
    let epoch;
    let mut prepared = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let existing = meta.get("epoch").map_err(storage)?.map(|v| v.value());
        let unclean = meta.get("unsynced").map_err(storage)?.map(|v| v.value()) == Some(1);
        epoch = match existing {
            Some(e) if !unclean => e,
            _ => {
                if unclean {
                    tracing::warn!(
                        "the last run (embedded.durability = \"os\") did not shut down cleanly: \
                         records acknowledged after its last fsync may be lost, so the log takes a \
                         new epoch and clients resuming from before get a gap (reason \"epoch\")"
                    );
                }
                let e: u64 = rand::random();
                meta.insert("epoch", e).map_err(storage)?;
                e
            }
        };
        meta.insert("unsynced", u64::from(mode == Mode::Os))
            .map_err(storage)?;
        let mut parts = txn.open_table(PARTITIONS).map_err(storage)?;
        let positions = txn.open_table(POSITIONS).map_err(storage)?;
        for (index, tc) in topics.iter().enumerate() {
            if tc.pattern.is_some() {
                continue;
            }
            let existing = parts
                .get(tc.name.as_str())
                .map_err(storage)?
                .map(|v| v.value());
            if let Some(existing) = existing {
                if existing > tc.partitions {
                    return Err(LogError::PartitionsLowered {
                        index,
                        name: tc.name.clone(),
                        configured: tc.partitions,
                        existing,
                    });
                }
            }
            prepared.push(Prepared {
                name: tc.name.clone(),
                config: tc.clone(),
                partitions: tc.partitions,
                next: Vec::new(),
            });
        }
        if rules.has_patterns() {
            let mut stored = Vec::new();
            for entry in parts.iter().map_err(storage)? {
                let (name, count) = entry.map_err(storage)?;
                stored.push((name.value().to_owned(), count.value()));
            }
            for (name, count) in stored {
                if prepared.iter().any(|p| p.name == name) {
                    continue;
                }
                // Not matched any more: kept on disk, not served.
                let Some(tc) = rules.topic_for(&name).filter(|t| t.pattern.is_some()) else {
                    continue;
                };
                prepared.push(Prepared {
                    config: tc.clone(),
                    // Never fewer than stored; more if the pattern's `partitions` grew.
                    partitions: count.max(tc.partitions),
                    name,
                    next: Vec::new(),
                });
            }
        }
        for topic in &mut prepared {
            parts
                .insert(topic.name.as_str(), topic.partitions)
                .map_err(storage)?;
            txn.open_table(records_table(&table_name(&topic.name)))
                .map_err(storage)?;
            if latest::ensure(&txn, &topic.name)? {
                tracing::info!(topic = %topic.name, "latest record per key rebuilt from the retained log");
            }
            for p in 0..topic.partitions {
                let n = positions
                    .get((topic.name.as_str(), p))
                    .map_err(storage)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                topic.next.push(n);
            }
        }
    }
    txn.commit().map_err(storage)?;
    Ok((epoch, prepared))
}

/// Feeds the last `count` records of each partition to the hub, and sets earliest offsets.
fn warm(db: &Database, topic: &TopicLog, next: &[u64], count: u64) -> Result<(), LogError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn
        .open_table(records_table(&topic.table))
        .map_err(storage)?;
    for p in 0..topic.partitions {
        let next = next[p as usize];
        let earliest = first_offset(&table, p)?.unwrap_or(next);
        topic.earliest[p as usize].store(earliest, Ordering::Release);
        let from = next.saturating_sub(count).max(earliest);
        if from > 0 {
            // The view holds the keys of the tail only: snapshots read the rest from disk.
            topic.hub.mark_incomplete(p);
        }
        for entry in table.range((p, from)..(p, next)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (_, offset) = k.value();
            topic.hub.ingest(&decode(p, offset, v.value()));
        }
        topic.hub.advance(p, next);
        topic.hub.set_high_watermark(p, next);
    }
    Ok(())
}

fn first_offset(
    table: &impl ReadableTable<(u32, u64), &'static [u8]>,
    partition: u32,
) -> Result<Option<u64>, LogError> {
    let mut range = table
        .range((partition, 0)..=(partition, u64::MAX))
        .map_err(storage)?;
    match range.next() {
        Some(entry) => Ok(Some(entry.map_err(storage)?.0.value().1)),
        None => Ok(None),
    }
}

fn table_name(topic: &str) -> String {
    format!("records/{topic}")
}

fn records_table(name: &str) -> TableDefinition<'_, (u32, u64), &'static [u8]> {
    TableDefinition::new(name)
}

/// Identifies one topic of one log in cursors: a wiped log gets a new epoch,
/// and a cursor of one topic is foreign to every other.
pub fn topic_epoch(log_epoch: u64, topic: &str) -> u64 {
    // FNV-1a over the log epoch and the topic name: stable across builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in log_epoch.to_le_bytes().iter().chain(topic.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode(timestamp: i64, record: &NewRecord) -> Vec<u8> {
    let key = record.key.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(13 + key.len() + record.data.len());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.push(u8::from(record.key.is_some()));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(record.data.as_bytes());
    out
}

fn decode(partition: u32, offset: u64, bytes: &[u8]) -> LogRecord {
    // Written only by `encode`; a short or non-UTF-8 value means a damaged file,
    // which we surface as an empty record rather than a panic.
    let get = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or(&[]);
    let timestamp = i64::from_le_bytes(get(0..8).try_into().unwrap_or([0; 8]));
    let has_key = get(8..9) == [1];
    let key_len = u32::from_le_bytes(get(9..13).try_into().unwrap_or([0; 4])) as usize;
    let key = std::str::from_utf8(get(13..13 + key_len)).unwrap_or("");
    let data = std::str::from_utf8(bytes.get(13 + key_len..).unwrap_or(&[])).unwrap_or("null");
    let data = if data.is_empty() { "null" } else { data };
    stored(
        partition,
        offset,
        timestamp,
        has_key.then(|| Arc::from(key)),
        data.into(),
        None,
    )
}

/// A record of this log as the hub sees it. A publish with `"data": null` is
/// this log's tombstone: it deletes its key from the view, like a Kafka tombstone.
fn stored(
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: Option<Arc<str>>,
    data: Box<str>,
    trace: Option<TraceParent>,
) -> LogRecord {
    let delete = &*data == "null";
    LogRecord {
        partition,
        offset,
        timestamp,
        key,
        data,
        extra: delete.then(|| TOMBSTONE_EXTRA.into()),
        delete,
        position: None,
        trace,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Source for EmbeddedLog {
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError> {
        let topic = match self.shared.topic(topic) {
            Some((index, _)) => index,
            // Not served yet: a name a pattern matches is created now (redb I/O: off the async workers).
            None => {
                let shared = Arc::clone(&self.shared);
                let name = topic.to_owned();
                tokio::task::spawn_blocking(move || shared.create(&name)).await??
            }
        };
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Message::Append(Append {
                topic,
                records,
                reply,
            }))
            .await
            .map_err(|_| SourceError::Unavailable("log writer stopped".into()))?;
        answer
            .await
            .map_err(|_| SourceError::Unavailable("log writer stopped".into()))?
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError> {
        let (_, topic) = self.topic(topic)?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let fail = |e: LogError| SourceError::Storage(Box::new(e));
            let txn = shared.db.begin_read().map_err(|e| fail(storage(e)))?;
            let table = txn
                .open_table(records_table(&topic.table))
                .map_err(|e| fail(storage(e)))?;
            // Checked in the same snapshot as the read, so retention cannot slip in between.
            let earliest = first_offset(&table, partition)
                .map_err(fail)?
                .unwrap_or(until);
            if from < earliest {
                return Err(SourceError::Gap {
                    requested: from,
                    earliest,
                });
            }
            let mut out = Vec::new();
            for entry in table
                .range((partition, from)..(partition, until))
                .map_err(|e| fail(storage(e)))?
                .take(max)
            {
                let (k, v) = entry.map_err(|e| fail(storage(e)))?;
                out.push(decode(partition, k.value().1, v.value()));
            }
            Ok(out)
        })
        .await?
    }

    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError> {
        let (_, topic) = self.topic(topic)?;
        Ok(topic
            .earliest
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .collect())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// One process owns the log: its topics' partition counts are the log's.
    fn partition_counts_are_final(&self) -> bool {
        true
    }

    fn pinned_view(&self, topic: &str, register: &mut dyn FnMut(Option<Arc<dyn StoredView>>)) {
        let Some((_, topic)) = self.shared.topic(topic) else {
            return register(None);
        };
        // Held while registering: the writer ingests nothing meanwhile.
        let pinned = self.shared.pinned.read().expect("pinned lock");
        let view = pinned.as_ref().map(|txn| {
            Arc::new(latest::PinnedLatest {
                txn: Arc::clone(txn),
                table: latest::latest_name(&topic.name),
            }) as Arc<dyn StoredView>
        });
        register(view);
    }

    async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.appends.send(Message::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}
