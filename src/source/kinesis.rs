//! The Kinesis Data Streams source: every shard of every configured stream read by one task each, parents before children, positions as Kinesis's own sequence numbers.
//!
//! - A stream is a topic and a shard is a partition, numbered from its id
//!   (`shardId-000000000003` is partition 3). Shard numbers only grow, and a
//!   child's number is above its parents', so partition order is stable.
//! - Each shard is read with `GetShardIterator` (`TRIM_HORIZON` at start,
//!   `AFTER_SEQUENCE_NUMBER` after an expired iterator) and `GetRecords`, at
//!   most one call per `kinesis.poll_interval` per shard (Kinesis allows five a
//!   second), backing off up to `kinesis.max_backoff` on
//!   `ProvisionedThroughputExceededException`.
//! - The hub numbers each shard's records with this node's ordinals and keeps
//!   ordinal -> sequence number (`Hub::add_shard_topic`); cursors carry the
//!   sequence numbers themselves (cursor version 2), so any node resumes them.
//! - Resharding: a shard made by a split or merge is read only once every
//!   parent (`ParentShardId`, `AdjacentParentShardId`) has been read to its end
//!   (Kinesis's rule for per-key order); a parent read to its end is closed in
//!   the cursor. `ListShards` runs every `kinesis.shard_refresh_interval`.
//! - Warm start: every shard is read from its trim horizon to its end before
//!   the topic is served, so ring, view and sequence-number index cover all
//!   that is retained.
//! - Older resumes read back with `AT_SEQUENCE_NUMBER` (at most
//!   `kinesis.catchup_readers` at once); a resume older than the trim horizon
//!   is answered with `recovered:false` and a gap.
//! - The partition key is the record key; data that is JSON is passed on as
//!   JSON, anything else as base64 with `"encoding":"base64"`.
//! - The epoch is an FNV hash of the stream ARN and creation time, so a
//!   recreated stream's cursors are foreign. The refresh notices a new
//!   incarnation: the old topic is closed (its subscribers get 4004) and the
//!   new one read from its start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use aws_sdk_kinesis::Client;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

mod reader;

use super::{Cause, Source, SourceError};
use crate::cursor::{decimal_to_position, position_to_decimal};
use crate::hub::{Hub, Topic, TopicSettings};
use crate::record::{json_or_base64, Appended, LogRecord, NewRecord};
use crate::shutdown::Shutdown;
use crate::source::kinesis_config::KinesisConfig;
use crate::source::Settings;
use crate::telemetry;
use reader::Reader;

/// What `/readyz` names while Kinesis is not ready.
pub const READINESS: &str = "kinesis";

#[derive(Debug, thiserror::Error)]
pub enum KinesisSourceError {
    #[error("stream `{stream}`: {message}")]
    Stream { stream: String, message: String },
    #[error("the shards were not read to their end within kinesis.startup_timeout ({0:?})")]
    StartupTimeout(Duration),
}

/// The Kinesis source; see the module documentation.
pub struct KinesisSource {
    client: Client,
    /// Each configured stream's current incarnation (replaced when the stream is recreated).
    streams: HashMap<Box<str>, Mutex<Arc<Stream>>>,
    /// Per stream: ring and view sizes, for a recreated incarnation.
    settings: HashMap<Box<str>, TopicSettings>,
    hub: Arc<Hub>,
    catchup: Semaphore,
    config: KinesisConfig,
    ready: AtomicBool,
}

/// One stream as this node follows it.
struct Stream {
    name: String,
    topic: Arc<Topic>,
    /// Shard id -> what this node knows of it.
    shards: Mutex<HashMap<String, ShardState>>,
    /// Set when the stream was recreated: this incarnation's readers stop.
    retired: AtomicBool,
    /// Held by a shard's reader while it ingests a page. One shard's ingest
    /// runs from its fan-out to publishing its frontier; another shard's
    /// record encoding its cursor in between would read the old frontier, and a
    /// client could get a record before a cursor that does not cover it (a
    /// repeat on resume). Serialized per stream, as the Kafka source's one
    /// consumer thread is. A sync lock, never held across an await.
    ingest: Mutex<()>,
}

struct ShardState {
    number: u32,
    /// True once the shard was read to its end (closed parents only).
    done: watch::Receiver<bool>,
    /// True once the shard's reader reached the end of what is there (warm start).
    caught_up: watch::Receiver<bool>,
}

/// `shardId-000000000003` -> 3.
pub fn shard_number(shard_id: &str) -> Option<u32> {
    let digits = shard_id.rsplit('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn unavailable(why: impl Into<String>) -> SourceError {
    SourceError::Unavailable(why.into())
}

/// A failed Kinesis call, kept as the cause; its message names the service's
/// error code (the SDK error's own message is only "service error").
#[derive(Debug, thiserror::Error)]
#[error("{description}")]
struct CallFailed {
    description: String,
    #[source]
    source: Cause,
}

fn call_failed<E>(e: SdkError<E>) -> SourceError
where
    E: std::error::Error + Send + Sync + 'static,
{
    SourceError::Client(Box::new(CallFailed {
        description: describe(&e),
        source: Box::new(e),
    }))
}

/// The message of an SDK error, with the service's own error code when there is one.
fn describe<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    let mut out = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl KinesisSource {
    /// Connects, reads every shard of every stream to its end, and keeps
    /// following them; returns once every topic is ready.
    pub async fn open(
        config: &Settings,
        hub: Arc<Hub>,
        shutdown: Shutdown,
    ) -> Result<Arc<dyn Source>, KinesisSourceError> {
        let kc = config.kinesis.clone();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(kc.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(kc.request_timeout)
                    .connect_timeout(kc.request_timeout)
                    .build(),
            );
        if !kc.endpoint_url.is_empty() {
            loader = loader.endpoint_url(kc.endpoint_url.clone());
        }
        let client = Client::new(&loader.load().await);
        let deadline = Instant::now() + kc.startup_timeout;

        let mut streams = HashMap::new();
        let mut settings = HashMap::new();
        for tc in &config.topics {
            let name = tc.name.clone();
            let epoch = loop {
                match stream_epoch(&client, &name).await {
                    Ok(epoch) => break epoch,
                    Err(e) if Instant::now() < deadline && !shutdown.is_triggered() => {
                        tracing::warn!(stream = %name, error = %e, "Kinesis not reachable yet; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(message) => {
                        return Err(KinesisSourceError::Stream {
                            stream: name,
                            message,
                        })
                    }
                }
            };
            let topic_settings = TopicSettings {
                ring_records: tc.ring_records,
                view_max_keys: tc.view_max_keys,
                view_max_bytes: tc.view_max_bytes,
            };
            let topic =
                hub.add_shard_topic(&name, epoch, 1, topic_settings, kc.position_index_records);
            settings.insert(Box::from(name.as_str()), topic_settings);
            let stream = Arc::new(Stream {
                name: name.clone(),
                topic,
                shards: Mutex::new(HashMap::new()),
                retired: AtomicBool::new(false),
                ingest: Mutex::new(()),
            });
            streams.insert(Box::from(name.as_str()), Mutex::new(stream));
        }
        let source = Arc::new(Self {
            client,
            streams,
            settings,
            hub,
            catchup: Semaphore::new(kc.catchup_readers),
            config: kc,
            ready: AtomicBool::new(false),
        });

        // Start every shard's reader; children wait for their parents.
        for stream in source.all_streams() {
            let shards = list_shards(&source.client, &stream.name)
                .await
                .map_err(|message| KinesisSourceError::Stream {
                    stream: stream.name.clone(),
                    message,
                })?;
            source.adopt(&stream, &shards, &shutdown);
        }
        // Warm start: every shard read to the end of what is there.
        for stream in source.all_streams() {
            tokio::select! {
                warm = tokio::time::timeout_at(deadline, warm_start(&stream)) => {
                    if warm.is_err() {
                        return Err(KinesisSourceError::StartupTimeout(source.config.startup_timeout));
                    }
                }
                () = shutdown.triggered() => break,
            }
        }
        source.ready.store(true, Ordering::Release);

        // Shards made by splits and merges.
        let refresher = Arc::clone(&source);
        let stop = shutdown.clone();
        shutdown.tracker().spawn(async move {
            let mut tick = tokio::time::interval(refresher.config.shard_refresh_interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.triggered() => break,
                    _ = tick.tick() => {}
                }
                for stream in refresher.all_streams() {
                    // Deleted and created again: a new incarnation, a new epoch.
                    if let Ok(epoch) = stream_epoch(&refresher.client, &stream.name).await {
                        if epoch != stream.topic.epoch {
                            refresher.replace(&stream, epoch, &stop).await;
                            continue;
                        }
                    }
                    match list_shards(&refresher.client, &stream.name).await {
                        Ok(shards) => refresher.adopt(&stream, &shards, &stop),
                        Err(e) => {
                            tracing::warn!(stream = %stream.name, error = %e, "ListShards failed")
                        }
                    }
                }
            }
        });
        Ok(source)
    }

    fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .values()
            .map(|s| Arc::clone(&s.lock().expect("stream lock")))
            .collect()
    }

    /// The stream was deleted and created again: its old incarnation's readers
    /// stop and its subscribers are disconnected (close 4004; their cursors
    /// then get `recovered:false`, reason `epoch`), and the new incarnation is
    /// read from its start, served once read to its end.
    async fn replace(self: &Arc<Self>, old: &Arc<Stream>, epoch: u64, shutdown: &Shutdown) {
        let Ok(shards) = list_shards(&self.client, &old.name).await else {
            return;
        };
        let settings = self.settings[old.name.as_str()];
        let topic = self.hub.add_shard_topic(
            &old.name,
            epoch,
            1,
            settings,
            self.config.position_index_records,
        );
        let stream = Arc::new(Stream {
            name: old.name.clone(),
            topic,
            shards: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
            ingest: Mutex::new(()),
        });
        old.retired.store(true, Ordering::Release);
        let closed = old.topic.close();
        tracing::warn!(stream = %old.name, disconnected = closed, "stream recreated: a new incarnation is read from its start");
        *self.streams[old.name.as_str()].lock().expect("stream lock") = Arc::clone(&stream);
        self.adopt(&stream, &shards, shutdown);
        let stop = shutdown.clone();
        shutdown.tracker().spawn(async move {
            tokio::select! {
                () = warm_start(&stream) => {}
                () = stop.triggered() => {}
            }
        });
    }

    /// Starts a reader for each shard of `shards` this node does not follow yet.
    fn adopt(self: &Arc<Self>, stream: &Arc<Stream>, shards: &[Shard], shutdown: &Shutdown) {
        // Parents first: a child's number is above its parents'.
        let mut ordered: BTreeMap<u32, &Shard> = BTreeMap::new();
        for shard in shards {
            match shard_number(shard.shard_id()) {
                Some(n) => {
                    ordered.insert(n, shard);
                }
                None => {
                    tracing::warn!(stream = %stream.name, shard = shard.shard_id(), "shard id without a number; skipped")
                }
            }
        }
        let mut known = stream.shards.lock().expect("shards lock");
        for (number, shard) in ordered {
            if known.contains_key(shard.shard_id()) {
                continue;
            }
            stream.topic.ensure_partitions(number + 1);
            let parents: Vec<watch::Receiver<bool>> =
                [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    // A parent this node does not know is past retention: nothing to wait for.
                    .filter_map(|id| known.get(id).map(|p| p.done.clone()))
                    .collect();
            let (done_tx, done) = watch::channel(false);
            let (caught_tx, caught_up) = watch::channel(false);
            known.insert(
                shard.shard_id().to_owned(),
                ShardState {
                    number,
                    done,
                    caught_up,
                },
            );
            let span = tracing::info_span!(
                "shard_consumer",
                stream = %stream.name,
                shard = %shard.shard_id()
            );
            let reader = Reader {
                source: Arc::clone(self),
                stream: Arc::clone(stream),
                shard_id: shard.shard_id().to_owned(),
                number,
                parents,
                done: done_tx,
                caught_up: caught_tx,
                shutdown: shutdown.clone(),
            };
            shutdown.tracker().spawn(reader.run().instrument(span));
        }
    }

    fn stream(&self, topic: &str) -> Result<Arc<Stream>, SourceError> {
        self.streams
            .get(topic)
            .map(|s| Arc::clone(&s.lock().expect("stream lock")))
            .ok_or(SourceError::UnknownTopic)
    }

    fn shard_id(stream: &Stream, partition: u32) -> Option<String> {
        stream
            .shards
            .lock()
            .expect("shards lock")
            .iter()
            .find(|(_, s)| s.number == partition)
            .map(|(id, _)| id.clone())
    }

    /// The first record at `iterator` and after, reading on over empty answers
    /// until the end of the shard's data (at most `calls` calls).
    async fn first_record(
        &self,
        mut iterator: String,
        calls: usize,
    ) -> Result<Option<String>, SourceError> {
        for _ in 0..calls {
            let out = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(self.config.records_per_call)
                .send()
                .await
                .map_err(call_failed)?;
            if let Some(r) = out.records().first() {
                return Ok(Some(r.sequence_number().to_owned()));
            }
            match out.next_shard_iterator() {
                Some(next) if out.millis_behind_latest().unwrap_or(0) > 0 => {
                    iterator = next.to_owned();
                    tokio::time::sleep(self.config.poll_interval).await;
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn iterator(
        &self,
        stream: &str,
        shard_id: &str,
        kind: ShardIteratorType,
        sequence: Option<&str>,
    ) -> Result<String, SourceError> {
        let out = self
            .client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence.map(str::to_owned))
            .send()
            .await
            .map_err(call_failed)?;
        out.shard_iterator
            .ok_or_else(|| unavailable("GetShardIterator answered no iterator"))
    }
}

/// The epoch of the stream's current incarnation: an FNV hash of its ARN and
/// creation time (and its id, when Kinesis gives one).
async fn stream_epoch(client: &Client, name: &str) -> Result<u64, String> {
    let out = client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let summary = out
        .stream_description_summary
        .ok_or("DescribeStreamSummary answered no stream")?;
    let created = summary.stream_creation_timestamp();
    Ok(fnv64(&[
        summary.stream_arn().as_bytes(),
        &created.secs().to_le_bytes(),
        &created.subsec_nanos().to_le_bytes(),
        // Newer Kinesis answers name the incarnation outright.
        summary.stream_id().unwrap_or_default().as_bytes(),
    ]))
}

/// Waits until every shard of `stream` known now was read to the end of what
/// is there, then marks its topic ready.
async fn warm_start(stream: &Stream) {
    let waits: Vec<watch::Receiver<bool>> = stream
        .shards
        .lock()
        .expect("shards lock")
        .values()
        .map(|s| s.caught_up.clone())
        .collect();
    for mut caught_up in waits {
        // An error means the reader ended (shutdown): nothing more to wait for.
        let _ = caught_up.wait_for(|c| *c).await;
    }
    stream.topic.mark_ready();
    tracing::info!(stream = %stream.name, partitions = stream.topic.partition_count(), "Kinesis stream ready");
}

/// Every shard, open and closed, following `NextToken`.
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, String> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            // ListShards refuses a stream name together with a token.
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req.send().await.map_err(|e| describe(&e))?;
        shards.extend(out.shards().iter().cloned());
        match out.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(shards),
        }
    }
}

#[async_trait]
impl Source for KinesisSource {
    async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, SourceError> {
        let stream = self.stream(topic)?;
        let mut results: Vec<Option<Appended>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..6 {
            let entries = pending
                .iter()
                .map(|&i| {
                    let r = &records[i];
                    // Kinesis needs a partition key: a record without a key gets a random one.
                    let key = match &r.key {
                        Some(k) => k.to_string(),
                        None => format!("{:032x}", rand::random::<u128>()),
                    };
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(r.data.as_bytes().to_vec()))
                        .partition_key(key)
                        .build()
                        .map_err(|e| SourceError::Client(Box::new(e)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .put_records()
                .stream_name(&stream.name)
                .set_records(Some(entries))
                .send()
                .await
                .map_err(call_failed)?;
            let mut again = Vec::new();
            for (&i, entry) in pending.iter().zip(out.records()) {
                match (entry.shard_id(), entry.sequence_number()) {
                    (Some(shard), Some(seq)) if entry.error_code().is_none() => {
                        results[i] = Some(Appended {
                            partition: shard_number(shard).unwrap_or(0),
                            offset: 0,
                            position: Some(Arc::from(seq)),
                        });
                    }
                    _ => again.push(i),
                }
            }
            if again.is_empty() {
                break;
            }
            telemetry::kinesis_throttled("put_records");
            if attempt == 5 {
                return Err(unavailable(format!(
                    "{} of {} records were not accepted by Kinesis",
                    again.len(),
                    records.len()
                )));
            }
            pending = again;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        Ok(results.into_iter().flatten().collect())
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError> {
        let stream = self.stream(topic)?;
        let topic = &stream.topic;
        let Some(start) = topic.position_at(partition, from) else {
            let earliest = topic
                .ordinal_at_or_after(partition, &[0])
                .map_or(0, |(_, first)| first);
            return Err(SourceError::Gap {
                requested: from,
                earliest,
            });
        };
        let shard_id = Self::shard_id(&stream, partition).ok_or(SourceError::UnknownTopic)?;
        let _permit = self
            .catchup
            .acquire()
            .await
            .map_err(|_| unavailable("the catch-up readers are closed"))?;
        telemetry::kinesis_catchup();
        let want = (until.saturating_sub(from) as usize).min(max);
        let mut out = Vec::with_capacity(want);
        let mut iterator = self
            .iterator(
                &stream.name,
                &shard_id,
                ShardIteratorType::AtSequenceNumber,
                Some(&position_to_decimal(&start)),
            )
            .await?;
        let mut ordinal = from;
        while out.len() < want {
            let answer = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(
                    self.config
                        .records_per_call
                        .min(want as i32 - out.len() as i32)
                        .max(1),
                )
                .send()
                .await;
            let page = match answer {
                Ok(page) => page,
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(GetRecordsError::ProvisionedThroughputExceededException(_))
                    ) =>
                {
                    telemetry::kinesis_throttled("get_records");
                    tokio::time::sleep(self.config.poll_interval).await;
                    continue;
                }
                Err(e) => return Err(call_failed(e)),
            };
            for r in page.records() {
                if out.len() >= want {
                    break;
                }
                let Some(pos) = decimal_to_position(r.sequence_number()) else {
                    continue;
                };
                // The records read back must be the ones this node numbered.
                match topic.position_at(partition, ordinal) {
                    Some(expected) if expected == pos => {}
                    _ => {
                        let earliest = topic
                            .ordinal_at_or_after(partition, &pos)
                            .map_or(ordinal, |(at, _)| at);
                        return Err(SourceError::Gap {
                            requested: ordinal,
                            earliest,
                        });
                    }
                }
                out.push(log_record(r, partition, ordinal));
                ordinal += 1;
            }
            match page.next_shard_iterator() {
                Some(next) if out.len() < want => {
                    if page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0 {
                        // Trimmed meanwhile: what was numbered is no longer there.
                        return Err(SourceError::Gap {
                            requested: ordinal,
                            earliest: topic
                                .frontier()
                                .get(partition as usize)
                                .copied()
                                .unwrap_or(0),
                        });
                    }
                    iterator = next.to_owned();
                    tokio::time::sleep(self.config.poll_interval).await;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn earliest(&self, topic: &str) -> Result<Vec<u64>, SourceError> {
        let stream = self.stream(topic)?;
        let frontier = stream.topic.frontier();
        let mut out = Vec::with_capacity(frontier.len());
        for (p, &end) in frontier.iter().enumerate() {
            let Some(shard_id) = Self::shard_id(&stream, p as u32) else {
                // No such shard (a gap in the numbering, or expired): nothing retained.
                out.push(end);
                continue;
            };
            let it = self
                .iterator(
                    &stream.name,
                    &shard_id,
                    ShardIteratorType::TrimHorizon,
                    None,
                )
                .await?;
            let first = self.first_record(it, 10).await?;
            out.push(match first.as_deref().and_then(decimal_to_position) {
                Some(pos) => stream
                    .topic
                    .ordinal_at_or_after(p as u32, &pos)
                    .map_or(end, |(at, _)| at),
                None => end,
            });
        }
        Ok(out)
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A Kinesis record as the hub takes it: `offset` is this node's count of the
/// shard's records, `position` the sequence number.
fn log_record(r: &aws_sdk_kinesis::types::Record, partition: u32, ordinal: u64) -> LogRecord {
    let mut extra = String::new();
    let data = json_or_base64(r.data().as_ref(), &mut extra);
    LogRecord {
        partition,
        offset: ordinal,
        timestamp: r
            .approximate_arrival_timestamp()
            .and_then(|t| t.to_millis().ok())
            .unwrap_or(0),
        key: r.partition_key().map(Arc::from),
        data,
        extra: (!extra.is_empty()).then(|| extra.into_boxed_str()),
        delete: false,
        position: Some(Arc::from(r.sequence_number())),
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_numbers_come_from_ids() {
        assert_eq!(shard_number("shardId-000000000003"), Some(3));
        assert_eq!(shard_number("shardId-000000000000"), Some(0));
        assert_eq!(shard_number("shardId-"), None);
        assert_eq!(shard_number("nope"), None);
    }

    #[test]
    fn epochs_differ_per_incarnation() {
        let arn = b"arn:aws:kinesis:us-east-1:000000000000:stream/s".as_slice();
        assert_ne!(
            fnv64(&[arn, &1u64.to_le_bytes()]),
            fnv64(&[arn, &2u64.to_le_bytes()])
        );
    }
}
