//! The catch-up reader: serves resumes older than the ring from Kafka itself.
//!
//! Reads run on separate consumers (never the live one), each `assign()`ed to
//! one partition at the requested offset, on the blocking pool. At most
//! `kafka.catchup_readers` run at once; idle consumers are kept for reuse.
//!
//! Sharing: each partition keeps the last contiguous range it read
//! (`kafka.catchup_cache_records` records at most). A resume whose position
//! falls inside that range is served from memory, and reads of one partition
//! are single-flight (an in-flight flag and a `Notify` per partition; no lock
//! is held across an `.await`): when a node dies and its clients resume on
//! this one from nearby positions, the first read fetches from Kafka and the
//! others wait for it and reuse it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, Semaphore};

use super::{consumer_config, decode, Inner, META_TIMEOUT};
use crate::record::LogRecord;
use crate::source::kafka_config::KafkaConfig;
use crate::source::SourceError;

/// The last contiguous range read from one partition: every record in `[start, end)`.
#[derive(Default)]
struct Segment {
    start: u64,
    end: u64,
    records: VecDeque<LogRecord>,
    /// A read of this partition is under way; others wait for it.
    fetching: bool,
}

/// One partition's cache and its single-flight state.
#[derive(Default)]
struct PartitionCache {
    segment: Mutex<Segment>,
    fetched: Notify,
}

/// Clears the in-flight flag even if the reading future is dropped mid-fetch.
struct FetchingGuard<'a>(&'a PartitionCache);

impl Drop for FetchingGuard<'_> {
    fn drop(&mut self) {
        self.0.segment.lock().expect("segment lock").fetching = false;
        self.0.fetched.notify_waiters();
    }
}

impl Segment {
    /// Records in `[from, until)`, at most `max`, if the segment covers `from`.
    fn serve(&self, from: u64, until: u64, max: usize) -> Option<Vec<LogRecord>> {
        if from < self.start || from >= self.end {
            return None;
        }
        let first = self.records.partition_point(|r| r.offset < from);
        let out: Vec<LogRecord> = self
            .records
            .iter()
            .skip(first)
            .take_while(|r| r.offset < until)
            .take(max)
            .cloned()
            .collect();
        if out.is_empty() && self.end < until {
            // Nothing here (compacted away) but more may follow the segment.
            return None;
        }
        Some(out)
    }

    fn store(&mut self, from: u64, end: u64, records: Vec<LogRecord>, cap: usize) {
        if from != self.end || self.records.is_empty() && self.start == self.end {
            self.records.clear();
            self.start = from;
        }
        self.end = end;
        self.records.extend(records);
        while self.records.len() > cap {
            self.records.pop_front();
            self.start = self.records.front().map(|r| r.offset).unwrap_or(self.end);
        }
    }
}

type SegmentLock = Arc<PartitionCache>;

pub(super) struct CatchUpReader {
    permits: Semaphore,
    idle: Mutex<Vec<BaseConsumer>>,
    segments: Mutex<HashMap<(String, u32), SegmentLock>>,
    cache_records: usize,
    timeout: Duration,
}

impl CatchUpReader {
    pub(super) fn new(config: &KafkaConfig) -> Self {
        Self {
            permits: Semaphore::new(config.catchup_readers),
            idle: Mutex::new(Vec::new()),
            segments: Mutex::new(HashMap::new()),
            cache_records: config.catchup_cache_records,
            timeout: config.catchup_timeout,
        }
    }

    pub(super) async fn read(
        &self,
        inner: Arc<Inner>,
        topic: &str,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, SourceError> {
        if from >= until || max == 0 {
            return Ok(Vec::new());
        }
        let lock = Arc::clone(
            self.segments
                .lock()
                .expect("segments lock")
                .entry((topic.to_owned(), partition))
                .or_default(),
        );
        let cache = &*lock;
        loop {
            // Registered before the check, so a fetch ending in between still wakes us.
            let fetched = cache.fetched.notified();
            {
                let mut segment = cache.segment.lock().expect("segment lock");
                if let Some(records) = segment.serve(from, until, max) {
                    crate::telemetry::kafka_catchup("cache");
                    return Ok(records);
                }
                if !segment.fetching {
                    segment.fetching = true;
                    break;
                }
            }
            fetched.await;
        }
        let _fetching = FetchingGuard(cache);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SourceError::Unavailable("catch-up reader closed".into()))?;
        let consumer = match self.idle.lock().expect("idle lock").pop() {
            Some(c) => c,
            None => consumer_config(&inner.config, true)
                .create::<BaseConsumer>()
                .map_err(super::client)?,
        };
        let topic_name = topic.to_owned();
        let timeout = self.timeout;
        let want = max.max(self.cache_records.min(4096));
        let (consumer, result) = tokio::task::spawn_blocking(move || {
            let result = fetch(
                &inner,
                &consumer,
                &topic_name,
                partition,
                from,
                until,
                want,
                timeout,
            );
            let _ = consumer.unassign();
            (consumer, result)
        })
        .await?;
        self.idle.lock().expect("idle lock").push(consumer);
        crate::telemetry::kafka_catchup("kafka");
        let (records, end) = result?;
        let mut segment = cache.segment.lock().expect("segment lock");
        segment.store(from, end, records, self.cache_records);
        // An empty answer means "nothing in the range": a read that got nothing
        // at `from` is an error (the resume is retried), never an empty range.
        segment.serve(from, until, max).ok_or_else(|| {
            SourceError::Unavailable(format!(
                "catch-up read of {topic}/{partition} at {from} returned nothing"
            ))
        })
    }
}

/// Reads `[from, until)` of one partition (up to `want` records); returns the
/// records and the offset up to which the range was fully read.
#[allow(clippy::too_many_arguments)]
fn fetch(
    inner: &Inner,
    consumer: &BaseConsumer,
    topic: &str,
    partition: u32,
    from: u64,
    until: u64,
    want: usize,
    timeout: Duration,
) -> Result<(Vec<LogRecord>, u64), SourceError> {
    let (low, high) = inner
        .admin
        .fetch_watermarks(topic, partition as i32, META_TIMEOUT)
        .map_err(super::client)?;
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    if from < low {
        return Err(SourceError::Gap {
            requested: from,
            earliest: low,
        });
    }
    // `until` is below what this node ingested, so below the high watermark it
    // saw. A lower one now is a broker that restarted and has not yet moved it
    // up again: the records exist, they are not readable yet.
    if high < until {
        return Err(SourceError::Unavailable(format!(
            "{topic}/{partition}: high watermark {high} below {until} (broker recovering)"
        )));
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition as i32, Offset::Offset(from as i64))
        .map_err(super::client)?;
    consumer.assign(&list).map_err(super::client)?;
    let deadline = Instant::now() + timeout;
    let how = inner.decoding(topic);
    let mut out = Vec::new();
    let mut end = from;
    while end < until && out.len() < want {
        if Instant::now() >= deadline {
            if out.is_empty() {
                return Err(SourceError::Unavailable(format!(
                    "catch-up read of {topic}/{partition} at {from} timed out"
                )));
            }
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(msg)) if msg.topic() != topic || msg.partition() != partition as i32 => {}
            Some(Ok(msg)) => {
                let offset = msg.offset().max(0) as u64;
                if offset < end {
                    continue;
                }
                if offset >= until {
                    end = until;
                    break;
                }
                end = offset + 1;
                match decode::decode(
                    &msg,
                    inner.config.max_record_bytes,
                    how,
                    inner.registry.as_deref(),
                ) {
                    Ok(record) => out.push(record),
                    Err(bad) => crate::telemetry::kafka_bad_record(bad.label()),
                }
            }
            // The end of the partition. Before `until` with no message, the
            // offsets left hold none (compacted away, or transaction markers),
            // unless the broker restarted and its high watermark went back:
            // asked again, below `until` it is "not readable yet".
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition as i32 => {
                let (_, high) = inner
                    .admin
                    .fetch_watermarks(topic, partition as i32, META_TIMEOUT)
                    .map_err(super::client)?;
                if (high.max(0) as u64) < until {
                    return Err(SourceError::Unavailable(format!(
                        "{topic}/{partition}: high watermark {high} below {until} (broker recovering)"
                    )));
                }
                end = until;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) => {
                return Err(SourceError::Gap {
                    requested: from,
                    earliest: low,
                });
            }
            Some(Err(e)) => tracing::debug!(error = %e, "catch-up read error"),
        }
    }
    Ok((out, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64) -> LogRecord {
        LogRecord {
            trace: None,
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            data: "1".into(),
            extra: None,
            delete: false,
            position: None,
        }
    }

    #[test]
    fn segment_serves_what_it_covers_and_extends() {
        let mut s = Segment::default();
        assert!(s.serve(0, 10, 5).is_none());
        s.store(10, 20, (10..20).map(rec).collect(), 15);
        assert!(s.serve(9, 30, 5).is_none());
        let got = s.serve(12, 30, 3).unwrap();
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![12, 13, 14]
        );
        assert!(s.serve(20, 30, 3).is_none(), "end is not covered");
        s.store(20, 30, (20..30).map(rec).collect(), 15);
        assert_eq!(s.start, 15, "bounded to 15 records");
        assert_eq!(s.serve(28, 30, 5).unwrap().len(), 2);
        s.store(100, 101, vec![rec(100)], 15);
        assert!(s.serve(20, 30, 5).is_none(), "a jump replaces the segment");
    }
}
