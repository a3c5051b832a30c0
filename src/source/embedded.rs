//! The embedded log: topics and partitions with Kafka-style offsets, durable in one redb file.
//!
//! One writer thread owns every append: it takes whatever publish requests are
//! waiting, writes them in one transaction (group commit, fsynced), then hands
//! the new records to the hub in offset order, and only then answers the
//! publishers. Reads for catch-up run on the blocking pool against redb's MVCC
//! snapshots, so they never wait for the writer. Retention (by count and age)
//! runs on the writer thread between batches.
//!
//! Layout: table `meta` (`epoch`), table `positions` (topic, partition) ->
//! next offset, and one table per topic, `records/<topic>`:
//! (partition, offset) -> `[timestamp i64 LE][key flag u8][key len u32 LE][key][json]`.
//! A record whose JSON is `null` is a tombstone: it removes its key from the view.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{Source, SourceError};
use crate::config::{Config, TopicConfig};
use crate::hub::{Hub, Topic, TopicSettings};
use crate::record::{partition_for_key, Appended, LogRecord, NewRecord, TOMBSTONE_EXTRA};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POSITIONS: TableDefinition<(&str, u32), u64> = TableDefinition::new("positions");
const PARTITIONS: TableDefinition<&str, u32> = TableDefinition::new("partitions");
/// Publish requests batched into one transaction at most.
const MAX_BATCH: usize = 256;
/// Records deleted by one retention pass per partition, so a pass stays short.
const MAX_TRIM: usize = 100_000;

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
}

enum Message {
    Append(Append),
    /// Wakes the writer for retention when nothing is published.
    Tick,
}

struct Append {
    topic: usize,
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Vec<Appended>, SourceError>>,
}

pub struct EmbeddedLog {
    db: Arc<Database>,
    topics: Arc<Vec<TopicLog>>,
    by_name: HashMap<String, usize>,
    appends: mpsc::Sender<Message>,
    ready: AtomicBool,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.embedded.data_dir`, registers its
    /// topics with `hub`, warms the hub from the tail of each partition, and
    /// starts the writer thread. The thread ends when the log is dropped.
    pub fn open(config: &Config, hub: &Hub) -> Result<Self, LogError> {
        let dir = &config.embedded.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| LogError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = Database::create(dir.join("pushgate.redb")).map_err(storage)?;
        let db = Arc::new(db);

        let (epoch, next_offsets) = prepare(&db, &config.topics)?;
        let mut topics = Vec::new();
        let mut by_name = HashMap::new();
        for (i, tc) in config.topics.iter().enumerate() {
            let hub_topic = hub.add_topic(
                &tc.name,
                topic_epoch(epoch, &tc.name),
                tc.partitions,
                TopicSettings {
                    ring_records: tc.ring_records,
                    view_max_keys: tc.view_max_keys,
                },
            );
            let earliest = (0..tc.partitions).map(|_| AtomicU64::new(0)).collect();
            by_name.insert(tc.name.clone(), i);
            topics.push(TopicLog {
                name: tc.name.clone(),
                table: table_name(&tc.name),
                partitions: tc.partitions,
                retention_records: tc.retention_records,
                retention_age: tc.retention_age,
                earliest,
                hub: hub_topic,
            });
        }
        for (t, topic) in topics.iter().enumerate() {
            warm(
                &db,
                topic,
                &next_offsets[t],
                config.source.warm_start_records,
            )?;
            topic.hub.mark_ready();
        }

        let topics = Arc::new(topics);
        let (appends, rx) = mpsc::channel(1024);
        let writer = Writer {
            db: Arc::clone(&db),
            topics: Arc::clone(&topics),
            next: next_offsets,
            round_robin: vec![0; config.topics.len()],
            retention_every: config.embedded.retention_check_interval,
            last_retention: Instant::now() - config.embedded.retention_check_interval,
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
            db,
            topics,
            by_name,
            appends,
            ready: AtomicBool::new(true),
        })
    }

    fn topic_index(&self, topic: &str) -> Result<usize, SourceError> {
        self.by_name
            .get(topic)
            .copied()
            .ok_or(SourceError::UnknownTopic)
    }
}

/// Creates tables, the epoch and positions; returns the epoch and next offset per partition.
fn prepare(db: &Database, topics: &[TopicConfig]) -> Result<(u64, Vec<Vec<u64>>), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    let epoch;
    let mut next_offsets = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let existing = meta.get("epoch").map_err(storage)?.map(|v| v.value());
        epoch = match existing {
            Some(e) => e,
            None => {
                let e: u64 = rand::random();
                meta.insert("epoch", e).map_err(storage)?;
                e
            }
        };
        let mut parts = txn.open_table(PARTITIONS).map_err(storage)?;
        let positions = txn.open_table(POSITIONS).map_err(storage)?;
        for (index, tc) in topics.iter().enumerate() {
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
            parts
                .insert(tc.name.as_str(), tc.partitions)
                .map_err(storage)?;
            let table = table_name(&tc.name);
            txn.open_table(records_table(&table)).map_err(storage)?;
            let mut next = Vec::new();
            for p in 0..tc.partitions {
                let n = positions
                    .get((tc.name.as_str(), p))
                    .map_err(storage)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                next.push(n);
            }
            next_offsets.push(next);
        }
    }
    txn.commit().map_err(storage)?;
    Ok((epoch, next_offsets))
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
        for entry in table.range((p, from)..(p, next)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (_, offset) = k.value();
            topic.hub.ingest(&decode(p, offset, v.value()));
        }
        topic.hub.advance(p, next);
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
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Writer {
    db: Arc<Database>,
    topics: Arc<Vec<TopicLog>>,
    next: Vec<Vec<u64>>,
    round_robin: Vec<u32>,
    retention_every: Duration,
    last_retention: Instant,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        // Ends when every sender is gone: the log was dropped.
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(message) = next {
                if let Message::Append(append) = message {
                    batch.push(append);
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.append(batch);
            }
            self.maybe_retain();
        }
        tracing::debug!("log writer stopped");
    }

    fn append(&mut self, batch: Vec<Append>) {
        let started = Instant::now();
        let timestamp = now_ms();
        let mut next = self.next.clone();
        let mut placed: Vec<Vec<Appended>> = Vec::with_capacity(batch.len());
        for req in &batch {
            let parts = self.topics[req.topic].partitions;
            let mut out = Vec::with_capacity(req.records.len());
            for rec in &req.records {
                let partition = match &rec.key {
                    Some(key) => partition_for_key(key.as_bytes(), parts),
                    None => {
                        let rr = &mut self.round_robin[req.topic];
                        *rr = rr.wrapping_add(1);
                        *rr % parts
                    }
                };
                let slot = &mut next[req.topic][partition as usize];
                out.push(Appended {
                    partition,
                    offset: *slot,
                });
                *slot += 1;
            }
            placed.push(out);
        }
        if let Err(e) = self.commit(&batch, &placed, &next, timestamp) {
            tracing::error!(error = %e, "append failed");
            for req in batch {
                let _ = req.reply.send(Err(SourceError::Storage(e.to_string())));
            }
            return;
        }
        self.next = next;
        // Visible to subscribers before the publisher hears back.
        for (req, out) in batch.into_iter().zip(placed) {
            let topic = &self.topics[req.topic];
            for (rec, at) in req.records.into_iter().zip(&out) {
                topic.hub.ingest(&stored(
                    at.partition,
                    at.offset,
                    timestamp,
                    rec.key,
                    rec.data,
                ));
            }
            let _ = req.reply.send(Ok(out));
        }
        crate::telemetry::append_latency(started.elapsed());
    }

    fn commit(
        &self,
        batch: &[Append],
        placed: &[Vec<Appended>],
        next: &[Vec<u64>],
        timestamp: i64,
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        {
            let mut positions = txn.open_table(POSITIONS)?;
            let mut touched = vec![false; self.topics.len()];
            for (req, out) in batch.iter().zip(placed) {
                touched[req.topic] = true;
                let topic = &self.topics[req.topic];
                let mut table = txn.open_table(records_table(&topic.table))?;
                for (rec, at) in req.records.iter().zip(out) {
                    table.insert((at.partition, at.offset), encode(timestamp, rec).as_slice())?;
                }
            }
            for (t, topic) in self.topics.iter().enumerate() {
                if touched[t] {
                    for (p, n) in next[t].iter().enumerate() {
                        positions.insert((topic.name.as_str(), p as u32), *n)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn maybe_retain(&mut self) {
        if self.last_retention.elapsed() < self.retention_every {
            return;
        }
        self.last_retention = Instant::now();
        if let Err(e) = self.retain() {
            tracing::error!(error = %e, "retention pass failed");
        }
    }

    /// Deletes records beyond each topic's count and age limits.
    fn retain(&self) -> Result<(), redb::Error> {
        let now = now_ms();
        let mut updates = Vec::new();
        let txn = self.db.begin_write()?;
        {
            for (t, topic) in self.topics.iter().enumerate() {
                if topic.retention_records == 0 && topic.retention_age.is_none() {
                    continue;
                }
                let mut table = txn.open_table(records_table(&topic.table))?;
                for p in 0..topic.partitions {
                    let next = self.next[t][p as usize];
                    let earliest = topic.earliest[p as usize].load(Ordering::Acquire);
                    let mut cut = earliest;
                    if topic.retention_records > 0 {
                        cut = cut.max(next.saturating_sub(topic.retention_records));
                    }
                    if let Some(age) = topic.retention_age {
                        let cutoff = now - age.as_millis() as i64;
                        for entry in table.range((p, cut)..(p, next))?.take(MAX_TRIM) {
                            let (k, v) = entry?;
                            if decode(p, 0, v.value()).timestamp >= cutoff {
                                break;
                            }
                            cut = k.value().1 + 1;
                        }
                    }
                    let cut = cut.min(earliest + MAX_TRIM as u64);
                    if cut > earliest {
                        table.retain_in((p, earliest)..(p, cut), |_, _| false)?;
                        updates.push((t, p, cut));
                    }
                }
            }
        }
        txn.commit()?;
        for (t, p, cut) in updates {
            self.topics[t].earliest[p as usize].store(cut, Ordering::Release);
        }
        Ok(())
    }
}

#[async_trait]
impl Source for EmbeddedLog {
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError> {
        let topic = self.topic_index(topic)?;
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
        let t = self.topic_index(topic)?;
        let db = Arc::clone(&self.db);
        let topics = Arc::clone(&self.topics);
        tokio::task::spawn_blocking(move || {
            let topic = &topics[t];
            let fail = |e: LogError| SourceError::Storage(e.to_string());
            let txn = db.begin_read().map_err(|e| fail(storage(e)))?;
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
        .await
        .map_err(|e| SourceError::Storage(e.to_string()))?
    }

    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError> {
        let t = self.topic_index(topic)?;
        Ok(self.topics[t]
            .earliest
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .collect())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
