//! Opening a subscription: checks, registration, the recovery decision, and catch-up, for every transport (WebSocket, SSE, gRPC).
//!
//! A subscription starts in one of three ways: live only, snapshot then live,
//! or resume from a cursor. A resume is served from the ring when it covers
//! the position, from the source's log when the position is older but still
//! retained, and otherwise the client is told (`recovered: false` plus a `gap`
//! message naming the earliest retained position) and gets a fresh snapshot.
//! The transport drives [`CatchUp::next_batch`] until it returns `None`; the
//! subscription is then live.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

pub use crate::hub::Partial;
pub use crate::hub::TOPIC_READY_WAIT;
use crate::hub::{Filter, Replay, Snap, Snapshot, StoredView, Sub, Topic};
use crate::log_reads::{LogReads, Part, INDEXED_KEYS};
use crate::outbox::CloseReason;
use crate::record::{Body, Framing, LogRecord, Record};
use crate::shaping::{Replayer, Verdict};
use crate::source::{Source, SourceError};
use crate::state::AppState;
use crate::telemetry;

mod checks;
mod open;
mod page;
pub use checks::{admitted, filter_for, parse_cursor, readiness, until_ready, READY_POLL};
pub use open::open;
pub use page::view_page;

/// Records read from the log per catch-up step.
const LOG_CHUNK: usize = 512;

/// A catch-up step from the log ends once its records cost this many bytes
/// (the next step takes the rest of the read again, from the recent reads or
/// the log). Each connection catching up holds its step's records until the
/// socket takes them: 512 records of a few hundred bytes were ~360 KB per
/// connection, and 50 connections ending long snapshots at once held 18 MB.
const STEP_BYTES: usize = 128 << 10;

/// Snapshots being listed from storage or ordered at once, node-wide.
static SNAPSHOT_PREPARATION: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Removes the subscription from the index when the connection lets go of it.
pub struct SubGuard {
    pub topic: Arc<Topic>,
    pub sub: Arc<Sub>,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.topic.unregister(&self.sub);
    }
}

/// A subscription that has been registered and is ready to catch up.
pub struct Opened {
    pub guard: SubGuard,
    pub id: Value,
    pub topic_name: Arc<str>,
    /// The cursor reported in `subscribed`: where this subscription starts.
    pub cursor: String,
    pub recovered: bool,
    /// (`reason`, earliest retained cursor) when a resume could not be honoured.
    pub gap: Option<(&'static str, String)>,
    pub snapshot_len: usize,
    /// The snapshot lacks keys of the view (`subscribed` says why, `live` how many).
    pub partial: Option<Partial>,
    pub catch_up: CatchUp,
    /// The canonical filter the token enforced (a refreshed token must enforce the same).
    pub enforced: Option<Box<str>>,
}

/// The records of `part` that `filter` takes, in offset order. A few keys
/// (a resume after a cold restart has a handful) are looked up in the read's
/// key index, a lookup per key; other filters test every record.
fn of_filter<'a>(part: &'a Part, filter: &'a Filter) -> Vec<&'a LogRecord> {
    match (&filter.keys, &filter.prefix) {
        (Some(keys), None) if keys.len() <= INDEXED_KEYS => part.of_keys(keys.iter().map(|k| &**k)),
        _ => part
            .records()
            .iter()
            .filter(|r| filter.matches(r.key.as_deref()))
            .collect(),
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The `enter`, `leave` or data-less delete form of `record`.
fn variant(topic: &str, record: &Record, verdict: Verdict) -> Record {
    match verdict {
        Verdict::Enter => record.variant(topic, "enter", (Body::Data, record.data())),
        Verdict::Leave => record.variant(topic, "leave", (Body::None, "")),
        _ => record.variant(topic, "delete", (Body::None, "")),
    }
}

enum Segment {
    /// The snapshot taken at registration (what it has left to send, in key
    /// order): sent a page at a time, each page read and reframed only when
    /// the transport asks for it, i.e. once the previous page was written. So
    /// the queue never holds more than a page of it, and a reader that stops
    /// reading stops the snapshot, not the server.
    Snapshot(Snapshot),
    Replay(Replay),
}

/// Snapshot records per page (each page is written before the next is made).
const SNAPSHOT_PAGE: usize = 256;

/// Times in a row a catch-up may start its live part over (its backlog
/// overflowed) without gaining on the log before the client is disconnected
/// as too slow (close 4001: it resumes from its cursor). See [`Resyncs`].
const MAX_RESYNCS: u32 = 16;

/// Whether a catch-up that starts its live part over is gaining on the log.
///
/// A subscription's backlog of live records is bounded by the connection's
/// queue (`limits.queue_bytes`); a long snapshot, or a long replay, outlasts
/// it under writes. The backlog is then dropped and its range read again from
/// the ring or the log ([`Topic::resync`]): the log bounds it, not memory. Each
/// resync replays what was written during the previous round, its `gap`. The
/// first (what was written during the snapshot or the first replay) is not
/// held against the client, however large; after it, a round whose gap is
/// smaller than the one before is progress (the reader outpaces the writes and
/// goes live in a few rounds), and only [`MAX_RESYNCS`] rounds in a row
/// without progress (a reader slower than the topic's write rate, which would
/// never catch up) end it.
#[derive(Debug, Default)]
struct Resyncs {
    /// The previous round's gap (none before the first resync).
    last_gap: Option<u64>,
    /// Rounds in a row whose gap did not shrink.
    stalled: u32,
}

impl Resyncs {
    /// Notes a resync that replays `gap` records; false once the catch-up has
    /// stopped gaining for too long.
    fn note(&mut self, gap: u64) -> bool {
        match self.last_gap.replace(gap) {
            Some(last) if gap >= last => self.stalled += 1,
            _ => self.stalled = 0,
        }
        self.stalled <= MAX_RESYNCS
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The connection's queue closed while catching up: too far behind, the
    /// topic recreated, or an operator closed the connection.
    #[error("connection queue closed: {0:?}")]
    Closed(CloseReason),
    /// The log dropped part of the range being replayed.
    #[error("recovery lost")]
    Lost(#[source] Arc<SourceError>),
}

/// One step of catch-up: records to send, or the point where catch-up ends.
pub enum Step {
    Records(Vec<Arc<Record>>),
    /// Everything before was snapshot or replay; everything after is live.
    /// `replayed` counts the records replayed from the ring or the log.
    /// `cursor` (subscriptions with a spec only) covers everything up to
    /// here, records the spec left out included.
    Live {
        replayed: usize,
        cursor: Option<String>,
        /// With `resume: "latest"`: missed records left out for a later one of their key.
        compacted: Option<usize>,
        /// A partial snapshot: how many keys it left out.
        skipped: Option<usize>,
    },
}

/// The records a new subscription must receive before it is live, in order.
pub struct CatchUp {
    /// The subscription's span (inside its connection's, when the transport
    /// entered one), for the catch-up's reads and what the transport logs about it.
    span: tracing::Span,
    /// Its trace span (traces on only), ended when it goes live.
    trace: crate::traces::CatchUpSpan,
    topic: Arc<Topic>,
    sub: Arc<Sub>,
    source: Arc<dyn Source>,
    /// Where the snapshot's stored entries are read from, page by page.
    stored: Option<Arc<dyn StoredView>>,
    reads: Arc<LogReads>,
    segments: VecDeque<Segment>,
    /// Running resume position: the cursor each replayed record carries.
    position: Vec<u64>,
    high: Vec<u64>,
    high_cursor: String,
    /// `high_cursor`'s bytes: each snapshot record's cursor is it plus its key.
    raw_high: Vec<u8>,
    /// Resuming mid-snapshot, or after the snapshot moved: replays take only
    /// keys up to this one (and their cursors carry it).
    upto: Option<Box<str>>,
    /// `limits.snapshot_hold_bytes`: the snapshot moves on to the views as
    /// they are now once they let go of more than this since it was taken.
    hold: u64,
    /// The backlog taken when the subscription went live, sent after `live`.
    pending: Option<Vec<Arc<Record>>>,
    /// Whether its resyncs still gain on the log.
    resyncs: Resyncs,
    live: bool,
    marked: bool,
    replayed: usize,
    /// Whether each key's last replayed value matched the value filter.
    replayer: Replayer,
    /// `resume: "latest"`: replay only the latest missed record of each key.
    latest: bool,
    compacted: usize,
    /// A partial snapshot: how many keys it left out (for `live`).
    skipped: Option<usize>,
    /// Per partition (read ahead before its log replay): each key's last offset in the range.
    last_of: HashMap<u32, HashMap<Arc<str>, u64>>,
    /// With `delta`: the last value of each key this replay sent, the base of the next patch.
    delta_base: HashMap<Arc<str>, serde_json::Value>,
}

impl CatchUp {
    /// The subscription's span: what a transport logs about the catch-up goes inside it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The subscription went live: its live records now go to the outbox
    /// (behind the `live` step and the backlog this catch-up still returns).
    pub fn went_live(&self) -> bool {
        self.marked
    }

    /// The cursor of everything caught up so far: after [`Step::Live`], the
    /// subscription's start at `high`, records the spec left out included.
    pub fn cursor(&self) -> String {
        self.topic.encode_cursor(&self.position)
    }

    /// One read of the log (up to `LOG_CHUNK` records), shared with identical
    /// reads in flight and recent ones, in a `catch_up_read` span.
    async fn read(&self, partition: u32, from: u64, until: u64) -> Result<Part, CatchUpError> {
        let span = tracing::info_span!(parent: &self.span, "catch_up_read", partition, from, until);
        let records = self
            .reads
            .read(
                &self.source,
                &self.topic.name,
                self.topic.epoch,
                partition,
                from,
                until,
                LOG_CHUNK,
            )
            .instrument(span.clone())
            .await;
        records.map_err(|e| {
            span.in_scope(|| tracing::debug!(error = %e, "catch-up read failed"));
            CatchUpError::Lost(e)
        })
    }

    /// The next step; `None` once the subscription is live. The steps are the
    /// snapshot or replayed records, then [`Step::Live`], then the live records
    /// that arrived meanwhile.
    pub async fn next_batch(&mut self) -> Result<Option<Step>, CatchUpError> {
        loop {
            if self.live {
                return Ok(None);
            }
            if self.segments.is_empty() {
                if self.marked {
                    self.live = true;
                    self.trace.live(self.replayed);
                    return Ok(Some(Step::Records(self.pending.take().unwrap_or_default())));
                }
                match self.sub.go_live() {
                    Err(reason) => return Err(CatchUpError::Closed(reason)),
                    Ok(None) => {
                        self.resync()?;
                        continue;
                    }
                    Ok(Some(backlog)) => self.pending = Some(backlog),
                }
                self.marked = true;
                let cursor = self
                    .sub
                    .spec()
                    .map(|_| self.topic.encode_cursor(&self.position));
                return Ok(Some(Step::Live {
                    replayed: self.replayed,
                    cursor,
                    compacted: self.latest.then_some(self.compacted),
                    skipped: self.skipped,
                }));
            }
            let segment = self.segments.pop_front().expect("not empty");
            let batch = match segment {
                Segment::Snapshot(mut snapshot) => {
                    let let_go = self.topic.view_let_go();
                    if let Some(after) = snapshot.holding_too_much(let_go, self.hold) {
                        let moved = self
                            .topic
                            .rebase(&self.sub, &snapshot, &after, &self.position);
                        match moved {
                            Some((high, replay, rest)) => {
                                self.moved(high, replay, rest, &after);
                                continue;
                            }
                            // It cannot move: counted again from here.
                            None => snapshot.held_from(let_go),
                        }
                    }
                    let entries = snapshot.next_page(SNAPSHOT_PAGE);
                    let done = snapshot.is_empty() || entries.is_empty();
                    let last = entries.len().saturating_sub(1);
                    let mut read = self.read_stored(&entries).await?.into_iter();
                    let page = entries
                        .iter()
                        .enumerate()
                        .map(|(i, entry)| {
                            let r = match entry {
                                Snap::Held(r) => self.shaped(r),
                                Snap::Stored { .. } => self.shaped(&read.next().expect("read")),
                            };
                            // Every snapshot record is a place to resume (its
                            // key), the last one the position the snapshot is at.
                            let cursor = match (&r.key, done && i == last) {
                                (Some(key), false) => {
                                    crate::cursor::snapshot_cursor(&self.raw_high, key)
                                }
                                _ => self.high_cursor.clone(),
                            };
                            let framing = Framing::Snapshot { with_id: true };
                            Arc::new(r.reframe(&self.topic.name, &cursor, framing))
                        })
                        .collect();
                    if !done {
                        self.segments.push_front(Segment::Snapshot(snapshot));
                    }
                    page
                }
                Segment::Replay(Replay::Ring {
                    partition,
                    records,
                    lookback,
                }) => {
                    let records = self.compact(records);
                    let records = self.through_filter_ring(&lookback, records);
                    telemetry::replayed("ring", records.len());
                    self.replayed += records.len();
                    let batch = records
                        .iter()
                        .map(|r| {
                            let cursor = self.advance(partition, r.offset);
                            let r = self.shaped(r);
                            let r = Arc::new(r.reframe(&self.topic.name, &cursor, Framing::Normal));
                            self.delta(r)
                        })
                        .collect();
                    // Records the filter left out are behind the client too.
                    self.position[partition as usize] = self.high[partition as usize];
                    batch
                }
                Segment::Replay(Replay::Log {
                    partition,
                    from,
                    until,
                }) => {
                    if self.latest && !self.last_of.contains_key(&partition) {
                        let last = self.last_offsets(partition, from, until).await?;
                        self.last_of.insert(partition, last);
                    }
                    let part = self.read(partition, from, until).await?;
                    let records = part.records();
                    let mut next_from = records.last().map(|r| r.offset + 1).unwrap_or(until);
                    let mut bytes = 0;
                    let sub = Arc::clone(&self.sub);
                    let filter = &sub.filter;
                    let upto = self.upto.clone();
                    let takes = |key: Option<&str>| {
                        upto.as_deref()
                            .is_none_or(|upto| key.is_some_and(|k| k <= upto))
                    };
                    let picked = of_filter(&part, filter)
                        .into_iter()
                        .filter(|r| takes(r.key.as_deref()));
                    let mut batch: Vec<Arc<Record>> = Vec::new();
                    for r in picked {
                        if bytes >= STEP_BYTES {
                            next_from = r.offset;
                            break;
                        }
                        let last = match (&r.key, self.last_of.get(&partition)) {
                            (Some(key), Some(last)) => last.get(key).copied(),
                            _ => None,
                        };
                        if last.is_some_and(|at| at != r.offset) {
                            // A later record of this key is in the range: only it goes out.
                            self.compacted += 1;
                            continue;
                        }
                        let cursor = self.advance(partition, r.offset);
                        if let Some(record) = self.through_filter_log(r, &cursor) {
                            let record = self.shaped(&record);
                            bytes += record.cost();
                            batch.push(self.delta(record));
                        }
                    }
                    if next_from < until {
                        self.segments.push_front(Segment::Replay(Replay::Log {
                            partition,
                            from: next_from,
                            until,
                        }));
                    } else {
                        self.position[partition as usize] = until;
                        // A later replay of this partition (a resync) reads its own range ahead.
                        self.last_of.remove(&partition);
                    }
                    telemetry::replayed("log", batch.len());
                    self.replayed += batch.len();
                    batch
                }
            };
            if !batch.is_empty() {
                return Ok(Some(Step::Records(batch)));
            }
            // Reads answered from memory do not wait: a resume of a few keys
            // can pass many of them in a row without a record to send.
            tokio::task::coop::consume_budget().await;
        }
    }

    /// The stored entries of a snapshot page, read from the pinned stored
    /// view on a blocking thread, in page order.
    async fn read_stored(&self, page: &[Snap]) -> Result<Vec<Arc<Record>>, CatchUpError> {
        let keys: Vec<(u32, Arc<str>)> = page
            .iter()
            .filter_map(|s| match s {
                Snap::Stored { partition, key } => Some((*partition, Arc::clone(key))),
                Snap::Held(_) => None,
            })
            .collect();
        let (Some(view), false) = (self.stored.clone(), keys.is_empty()) else {
            return Ok(Vec::new());
        };
        let topic = Arc::clone(&self.topic.name);
        let lost = |e: String| CatchUpError::Lost(Arc::new(SourceError::Storage(e.into())));
        tokio::task::spawn_blocking(move || crate::hub::read_stored(&topic, &*view, &keys))
            .await
            .map_err(|e| lost(e.to_string()))?
            .map_err(|e| lost(e.to_string()))
    }

    /// The snapshot moved on to the views as they are now ([`Topic::rebase`]):
    /// the keys through `after` are brought there by `replay`, then `rest` follows.
    fn moved(&mut self, high: Vec<u64>, replay: Vec<Replay>, rest: Snapshot, after: &str) {
        telemetry::snapshot_moved();
        self.high_cursor = self.topic.encode_cursor(&high);
        self.raw_high = crate::cursor::raw(&self.high_cursor);
        self.high = high;
        self.upto = Some(after.into());
        if !rest.is_empty() {
            self.segments.push_front(Segment::Snapshot(rest));
        }
        for r in replay.into_iter().rev() {
            self.segments.push_front(Segment::Replay(r));
        }
    }

    /// The backlog overflowed while catching up: read what it dropped again
    /// from the ring or the log (see [`Topic::resync`]), up to the frontier.
    fn resync(&mut self) -> Result<(), CatchUpError> {
        telemetry::catch_up_resync();
        let (high, replay) = self.topic.resync(&self.sub, &self.position);
        let gap = high
            .iter()
            .enumerate()
            .map(|(p, h)| h.saturating_sub(self.position.get(p).copied().unwrap_or(0)))
            .sum();
        if !self.resyncs.note(gap) {
            telemetry::slow_disconnect();
            return Err(CatchUpError::Closed(CloseReason::Slow));
        }
        self.position.resize(high.len(), 0);
        self.high_cursor = self.topic.encode_cursor(&high);
        self.high = high;
        // The snapshot is done: from here the client holds every key.
        self.upto = None;
        self.segments
            .extend(replay.into_iter().map(Segment::Replay));
        Ok(())
    }

    /// With `resume: "latest"`, keeps only the last record of each key (records
    /// without a key all stay), in offset order.
    fn compact(&mut self, records: Vec<Arc<Record>>) -> Vec<Arc<Record>> {
        if !self.latest {
            return records;
        }
        let mut last: HashMap<&str, u64> = HashMap::new();
        for r in &records {
            if let Some(key) = &r.key {
                last.insert(key, r.offset);
            }
        }
        let keep: Vec<bool> = records
            .iter()
            .map(|r| r.key.as_deref().is_none_or(|k| last[k] == r.offset))
            .collect();
        let before = records.len();
        let kept: Vec<Arc<Record>> = records
            .into_iter()
            .zip(keep)
            .filter_map(|(r, keep)| keep.then_some(r))
            .collect();
        self.compacted += before - kept.len();
        kept
    }

    /// Reads `[from, until)` of `partition` once ahead of a compacted log
    /// replay: the last offset of each key the subscription takes.
    async fn last_offsets(
        &self,
        partition: u32,
        mut from: u64,
        until: u64,
    ) -> Result<HashMap<Arc<str>, u64>, CatchUpError> {
        let mut last = HashMap::new();
        while from < until {
            let part = self.read(partition, from, until).await?;
            let Some(end) = part.records().last().map(|r| r.offset + 1) else {
                break;
            };
            for r in of_filter(&part, &self.sub.filter) {
                if let Some(key) = &r.key {
                    last.insert(Arc::clone(key), r.offset);
                }
            }
            from = end;
        }
        Ok(last)
    }

    /// With `delta`, a replayed record as a patch from the previous value of
    /// its key in this replay; the first of each key (and any after a
    /// `leave`, a delete or an `enter`) carries whole data.
    fn delta(&mut self, record: Arc<Record>) -> Arc<Record> {
        if !self.sub.spec().is_some_and(|s| s.delta) {
            return record;
        }
        let Some(key) = record.key.clone() else {
            return record;
        };
        if record.body() != Body::Data || record.delete {
            self.delta_base.remove(&key);
            return record;
        }
        let Some(value) = crate::shaping::parse(record.data()) else {
            self.delta_base.remove(&key);
            return record;
        };
        let enter = record.ws.as_str().contains(",\"op\":\"enter\",");
        let patch = match self.delta_base.insert(key, value.clone()) {
            Some(before) if !enter => {
                crate::shaping::delta::bounded(&before, &value, record.data())
            }
            _ => return record,
        };
        Arc::new(record.with_body(&self.topic.name, (Body::Patch, &patch)))
    }

    /// `record` projected onto the subscription's `fields`, if it has any.
    fn shaped(&self, record: &Arc<Record>) -> Arc<Record> {
        match self
            .sub
            .spec()
            .and_then(|s| s.shape(&self.topic.name, record))
        {
            Some(shaped) => Arc::new(shaped),
            None => Arc::clone(record),
        }
    }

    /// Ring records as this subscription's value filter lets them through:
    /// dropped, as they are, or as `enter`/`leave` variants.
    fn through_filter_ring(
        &mut self,
        lookback: &[Arc<Record>],
        records: Vec<Arc<Record>>,
    ) -> Vec<Arc<Record>> {
        let Some(filter) = self.sub.spec().and_then(|s| s.filter.clone()) else {
            return records;
        };
        for r in lookback {
            if let Some(key) = &r.key {
                self.replayer.seed(&filter, key, r.data(), r.delete);
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let verdict = self
                .replayer
                .step(&filter, r.key.as_ref(), r.data(), r.delete);
            match verdict {
                Verdict::Drop => {}
                Verdict::Same => out.push(r),
                other => out.push(Arc::new(variant(&self.topic.name, &r, other))),
            }
        }
        out
    }

    /// A record read back from the log, encoded with `cursor`, as the value
    /// filter lets it through (`None`: left out).
    fn through_filter_log(&mut self, r: &LogRecord, cursor: &str) -> Option<Arc<Record>> {
        let record = Record::encode(&self.topic.name, r, cursor, Framing::Normal);
        let Some(filter) = self.sub.spec().and_then(|s| s.filter.clone()) else {
            return Some(Arc::new(record));
        };
        match self
            .replayer
            .step(&filter, r.key.as_ref(), &r.data, r.delete)
        {
            Verdict::Drop => None,
            Verdict::Same => Some(Arc::new(record)),
            other => Some(Arc::new(variant(&self.topic.name, &record, other))),
        }
    }

    /// Moves the running position past (`partition`, `offset`) and returns its cursor.
    fn advance(&mut self, partition: u32, offset: u64) -> String {
        if let Some(slot) = self.position.get_mut(partition as usize) {
            *slot = offset + 1;
        }
        let cursor = self.topic.encode_cursor(&self.position);
        match &self.upto {
            // Mid-snapshot the client holds only the keys through `upto`: a
            // resume from here must send it the rest of the snapshot too.
            Some(upto) => crate::cursor::snapshot_cursor(&crate::cursor::raw(&cursor), upto),
            None => cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_end_a_catch_up_only_when_it_stops_gaining() {
        let mut r = Resyncs::default();
        // The first round (the snapshot's minutes of writes) is never held against it.
        assert!(r.note(10_000_000));
        // A reader faster than the writes: each round shorter, as many as it takes.
        for gap in (1..10_000u64).rev() {
            assert!(r.note(gap), "shrinking gap {gap}");
        }
        // A reader slower than the writes: the gap stops shrinking.
        for _ in 0..MAX_RESYNCS {
            assert!(r.note(5000));
        }
        assert!(
            !r.note(5000),
            "{MAX_RESYNCS} rounds in a row without progress"
        );
        // One round of progress starts the count over.
        let mut r = Resyncs::default();
        for round in 0..100u64 {
            let gap = if round % 2 == 0 { 100 } else { 99 };
            assert!(r.note(gap), "alternating gains keep it going");
        }
    }
}
