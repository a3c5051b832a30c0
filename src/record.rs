//! Records: what a source hands the hub, and the encoded form every subscriber shares.
//!
//! A [`Record`] is encoded once, at ingest, into a single buffer holding its SSE
//! event (`id: <cursor>\ndata: <json>\n\n`); the WebSocket frame is a slice of
//! the same buffer. Fan-out clones two reference counts, never the bytes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::traces::{RecordTrace, TraceParent};

/// A record as stored in the log, before it is encoded for clients.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Arc<str>>,
    /// Compact JSON text (no raw newlines, so it fits one SSE `data:` line).
    pub data: Box<str>,
    /// Extra JSON members (`"name":value` pairs, comma separated) placed before
    /// `data`, for source-specific fields such as Kafka headers.
    pub extra: Option<Box<str>>,
    /// The record deletes its key (a tombstone, or a change event with `op`
    /// delete): the view forgets the key, while the record itself is still
    /// delivered and replayed like any other.
    pub delete: bool,
    /// The source's own position when it is not a number (a Kinesis sequence
    /// number, decimal): clients see it as `offset`, a string; `offset` is then
    /// this node's ordinal of the record in its partition.
    pub position: Option<Arc<str>>,
    /// The producer's span (a W3C `traceparent` the record carried), read
    /// only while traces are on: the parent of the record's ingest span.
    pub trace: Option<TraceParent>,
}

/// The extra members of a tombstone (a record without a value), on every source.
pub const TOMBSTONE_EXTRA: &str = "\"op\":\"delete\",\"tombstone\":true";

/// A record to append, as the publish API receives it.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub key: Option<Arc<str>>,
    /// Compact JSON text.
    pub data: Box<str>,
    /// The publisher's span (the request's `traceparent`), passed on to the
    /// record's ingest span; not stored in the log.
    pub trace: Option<TraceParent>,
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
    /// The source's own position when it is not a number (Kinesis: the sequence number).
    pub position: Option<Arc<str>>,
}

/// A record encoded for clients; shared by every subscriber that receives it.
#[derive(Debug)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    /// The source's own position when it is not a number (see [`LogRecord::position`]).
    pub position: Option<Arc<str>>,
    pub key: Option<Arc<str>>,
    /// The record deletes its key (a tombstone or a change event's delete).
    pub delete: bool,
    /// What the body member holds: `data`, a `patch`, or nothing (`leave`).
    body: Body,
    /// The whole SSE event, `id:` line included.
    pub sse: Bytes,
    /// The WebSocket message text: a slice of `sse`.
    pub ws: Utf8Bytes,
    /// The WebSocket frame header for `ws` (FIN, text, unmasked length):
    /// the frame on the wire is this followed by `ws`, with no copy.
    ws_head: [u8; 10],
    ws_head_len: u8,
    data_start: u32,
    data_end: u32,
    extra_start: u32,
    extra_end: u32,
    timestamp: i64,
    /// A snapshot record (the latest value of its key), not a change.
    snapshot: bool,
    /// The gRPC `Event` envelope, built by the first gRPC subscriber that
    /// receives this record and shared by every other one; let go when the
    /// record leaves the ring ([`Record::let_go_of_envelope`]), as the view
    /// may keep the record long after its delivery.
    grpc: Mutex<Option<Bytes>>,
    /// The permessage-deflate frame for `ws`, compressed by the first
    /// compressing WebSocket connection that sends this record and shared by
    /// every other one; `None` inside when compression would not shrink it.
    ws_deflated: OnceLock<Option<Bytes>>,
    /// Which transports have written this record (one bit each), and whether
    /// it is a live encoding whose first write per transport is measured
    /// ([`Record::first_write`]); replayed and snapshot copies never are.
    written: AtomicU8,
    /// A sampled live record's fan-out span, the parent of its first
    /// delivery per transport (traces on only; `None` otherwise).
    trace: Option<Arc<RecordTrace>>,
    /// [`key_hash`] of `key` (0 without one): a resume matches thousands of
    /// ring records against its keys under the partition locks, and this
    /// spares reading each record's key. 32 bits fit in the struct's padding.
    key_hash: u32,
}

/// The process's hash of a record key, as [`Record::key_hash`] keeps it
/// (foldhash with a seed chosen once per process).
pub fn key_hash(key: &str) -> u32 {
    use std::hash::BuildHasher;
    static STATE: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(key) as u32
}

/// A transport that writes records to clients (see [`Record::first_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws = 1,
    Sse = 2,
    Grpc = 4,
}

impl Transport {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Grpc => "grpc",
        }
    }
}

/// Every transport's bit: nothing left to measure.
const WRITTEN_ALL: u8 = 0b111;
/// A live encoding (from ingest, or a group's variant of one).
const LIVE: u8 = 0x80;

/// The member that carries a record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `"data": <the value>`.
    Data,
    /// `"patch": <RFC 6902 operations>` (delta subscriptions).
    Patch,
    /// No value at all (`op: "leave"`, or a delete the subscriber may not see).
    None,
}

/// How a record is framed for one particular delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Live and replayed records: the SSE event carries the cursor as its id.
    Normal,
    /// Snapshot records: flagged; each carries an SSE id (its cursor holds the
    /// snapshot position, so an `EventSource` that drops mid-snapshot resumes it).
    Snapshot { with_id: bool },
}

impl Record {
    /// Encodes `log` for `topic`, with `cursor` as the position right after it.
    pub fn encode(topic: &str, log: &LogRecord, cursor: &str, framing: Framing) -> Record {
        let extra = log.extra.as_deref().unwrap_or("");
        let mut record = Self::build(
            topic,
            log.partition,
            (log.offset, log.position.clone()),
            log.key.clone(),
            log.timestamp,
            extra,
            (Body::Data, &log.data),
            cursor,
            framing,
        );
        record.delete = log.delete;
        record
    }

    /// This record with `op` set (replacing any `op` it had, e.g. a change
    /// event's) and `body` as its value member: `enter`, `leave`, or a delete
    /// without its data. Built once per record and group, never per subscriber.
    pub fn variant(&self, topic: &str, op: &str, body: (Body, &str)) -> Record {
        let extra = with_op(self.extra(), op);
        let mut record = Self::build(
            topic,
            self.partition,
            (self.offset, self.position.clone()),
            self.key.clone(),
            self.timestamp,
            &extra,
            body,
            self.cursor(),
            Framing::Normal,
        );
        record.delete = self.delete;
        record.inherit_liveness(self);
        record
    }

    /// This record with another value member, everything else kept (a
    /// projection of `data`, or a patch in its place).
    pub fn with_body(&self, topic: &str, body: (Body, &str)) -> Record {
        let mut record = Self::build(
            topic,
            self.partition,
            (self.offset, self.position.clone()),
            self.key.clone(),
            self.timestamp,
            self.extra(),
            body,
            self.cursor(),
            Framing::Normal,
        );
        record.delete = self.delete;
        record.inherit_liveness(self);
        record
    }

    fn extra(&self) -> &str {
        &self.ws.as_str()[self.extra_start as usize..self.extra_end as usize]
    }

    /// The source-specific members (`"name":value` pairs, comma separated; empty if none).
    pub fn extra_members(&self) -> &str {
        self.extra()
    }

    /// A snapshot record (the latest value of its key), not a change.
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// Whether this delivery carries a resumable cursor: every record but the
    /// snapshot records before the last one (the SSE event has an `id:` line).
    pub fn resumable(&self) -> bool {
        self.sse.starts_with(b"id: ")
    }

    /// The record's gRPC envelope: `build` runs once per record, the first
    /// time a gRPC subscriber receives it; later calls share its bytes.
    pub fn grpc_envelope(&self, build: impl FnOnce(&Self) -> Bytes) -> Bytes {
        let mut slot = self.grpc.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| build(self)).clone()
    }

    /// Frees the gRPC envelope, if one was built: the record's deliveries are
    /// over (it left the ring), and a view that keeps it as its key's latest
    /// value would otherwise hold both encodings for as long (about 280 bytes
    /// per key for a 200-byte value). A late subscriber builds it again.
    pub fn let_go_of_envelope(&self) {
        self.grpc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// What the value member holds.
    pub fn body(&self) -> Body {
        self.body
    }

    /// Re-encodes this record with another cursor (replay and snapshot paths only).
    pub fn reframe(&self, topic: &str, cursor: &str, framing: Framing) -> Record {
        let ws = self.ws.as_str();
        let data = &ws[self.data_start as usize..self.data_end as usize];
        let extra = &ws[self.extra_start as usize..self.extra_end as usize];
        let mut record = Self::build(
            topic,
            self.partition,
            (self.offset, self.position.clone()),
            self.key.clone(),
            self.timestamp,
            extra,
            (self.body, data),
            cursor,
            framing,
        );
        record.delete = self.delete;
        record
    }

    /// The record's value member text (`data`, or the `patch`; empty for `Body::None`).
    pub fn data(&self) -> &str {
        &self.ws.as_str()[self.data_start as usize..self.data_end as usize]
    }

    /// The cursor this record carries (from its SSE id line, or its JSON for snapshot records).
    pub fn cursor(&self) -> &str {
        let ws = self.ws.as_str();
        let start = ws.find(",\"cursor\":\"").map(|i| i + 11).unwrap_or(0);
        let end = ws[start..].find('"').map(|i| start + i).unwrap_or(start);
        &ws[start..end]
    }

    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The whole WebSocket text frame, header then payload, as two slices to write in one go.
    pub fn ws_frame(&self) -> [&[u8]; 2] {
        [
            &self.ws_head[..self.ws_head_len as usize],
            self.ws.as_str().as_bytes(),
        ]
    }

    /// The compressed WebSocket frame (RSV1 set) for connections that
    /// negotiated permessage-deflate, compressed once per record; `None` when
    /// compression does not make it smaller (the plain frame is sent then).
    /// `compress` (the transport's) runs at most once per record.
    pub fn ws_deflated(&self, compress: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<&Bytes> {
        self.ws_deflated
            .get_or_init(|| compress(self.ws.as_str().as_bytes()))
            .as_ref()
    }

    /// See [`key_hash`]; 0 without a key.
    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// Bytes this record counts for in a connection's queue.
    pub fn cost(&self) -> usize {
        self.sse.len()
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        topic: &str,
        partition: u32,
        (offset, position): (u64, Option<Arc<str>>),
        key: Option<Arc<str>>,
        timestamp: i64,
        extra: &str,
        (body, data): (Body, &str),
        cursor: &str,
        framing: Framing,
    ) -> Record {
        let mut buf = String::with_capacity(96 + topic.len() + cursor.len() * 2 + data.len());
        let with_id = match framing {
            Framing::Normal => true,
            Framing::Snapshot { with_id } => with_id,
        };
        if with_id {
            buf.push_str("id: ");
            buf.push_str(cursor);
            buf.push('\n');
        }
        buf.push_str("data: ");
        let ws_start = buf.len();
        buf.push_str("{\"type\":\"record\",\"topic\":");
        push_json_str(&mut buf, topic);
        buf.push_str(",\"key\":");
        match &key {
            Some(k) => push_json_str(&mut buf, k),
            None => buf.push_str("null"),
        }
        buf.push_str(",\"partition\":");
        buf.push_str(itoa(partition as u64).as_str());
        buf.push_str(",\"offset\":");
        match &position {
            // A decimal string: safe to write without escaping.
            Some(p) => {
                buf.push('"');
                buf.push_str(p);
                buf.push('"');
            }
            None => buf.push_str(itoa(offset).as_str()),
        }
        buf.push_str(",\"cursor\":\"");
        buf.push_str(cursor);
        buf.push_str("\",\"timestamp\":");
        buf.push_str(&timestamp.to_string());
        if matches!(framing, Framing::Snapshot { .. }) {
            buf.push_str(",\"snapshot\":true");
        }
        buf.push(',');
        let extra_start = buf.len() - ws_start;
        if !extra.is_empty() {
            buf.push_str(extra);
            buf.push(',');
        }
        let extra_end = if extra.is_empty() {
            extra_start
        } else {
            buf.len() - ws_start - 1
        };
        match body {
            Body::Data => buf.push_str("\"data\":"),
            Body::Patch => buf.push_str("\"patch\":"),
            Body::None => {
                // No value member: drop the comma that would have preceded it.
                buf.pop();
            }
        }
        let data_start = buf.len() - ws_start;
        if body != Body::None {
            buf.push_str(data);
        }
        let data_end = buf.len() - ws_start;
        buf.push('}');
        let ws_end = buf.len();
        buf.push_str("\n\n");
        let sse = Bytes::from(buf);
        let ws = Utf8Bytes::try_from(sse.slice(ws_start..ws_end)).expect("built from a String");
        let (ws_head, ws_head_len) = ws_text_head(ws.len());
        Record {
            key_hash: key.as_deref().map_or(0, key_hash),
            partition,
            offset,
            position,
            key,
            delete: false,
            body,
            sse,
            ws,
            ws_head,
            ws_head_len,
            data_start: data_start as u32,
            data_end: data_end as u32,
            extra_start: extra_start as u32,
            extra_end: extra_end as u32,
            timestamp,
            snapshot: matches!(framing, Framing::Snapshot { .. }),
            grpc: Mutex::new(None),
            ws_deflated: OnceLock::new(),
            written: AtomicU8::new(WRITTEN_ALL),
            trace: None,
        }
    }

    /// Marks this encoding live (made at ingest): its first write on each
    /// transport is measured.
    pub fn live(self) -> Self {
        self.written.store(LIVE, Ordering::Relaxed);
        self
    }

    /// Attaches a sampled record's trace (see [`RecordTrace`]).
    pub fn traced(mut self, trace: Option<Arc<RecordTrace>>) -> Self {
        self.trace = trace;
        self
    }

    /// The record's trace, when it is a sampled live record.
    pub fn trace(&self) -> Option<&RecordTrace> {
        self.trace.as_deref()
    }

    fn inherit_liveness(&mut self, from: &Record) {
        if from.written.load(Ordering::Relaxed) & LIVE != 0 {
            *self.written.get_mut() = LIVE;
            self.trace.clone_from(&from.trace);
        }
    }

    /// The record's age (now minus its timestamp) the first time `transport`
    /// writes this live encoding to a client; `None` every other time, and
    /// for replayed and snapshot copies. Once per record and transport, not
    /// per subscriber: after the first, a shared load and no write.
    pub fn first_write(&self, transport: Transport) -> Option<Duration> {
        let bit = transport as u8;
        if self.written.load(Ordering::Relaxed) & bit != 0
            || self.written.fetch_or(bit, Ordering::Relaxed) & bit != 0
        {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Some(Duration::from_millis(
            now.saturating_sub(self.timestamp).max(0) as u64,
        ))
    }
}

/// `extra` (`"name":value` members) with `op` set to `op`: a change event's
/// own `op` is replaced, so the member appears once.
fn with_op(extra: &str, op: &str) -> String {
    let mut out = String::with_capacity(extra.len() + 16);
    out.push_str("\"op\":");
    push_json_str(&mut out, op);
    if extra.is_empty() {
        return out;
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&format!(
        "{{{extra}}}"
    )) {
        Ok(mut members) => {
            members.remove("op");
            for (name, value) in members {
                out.push(',');
                push_json_str(&mut out, &name);
                out.push(':');
                out.push_str(&value.to_string());
            }
        }
        Err(_) => {
            // Never expected (sources write valid members); keep them as they are.
            out.push(',');
            out.push_str(extra);
        }
    }
    out
}

/// A value as it goes to clients: its compact JSON when it is JSON text, else
/// a base64 string, with `"encoding":"base64"` appended to `extra`.
pub fn json_or_base64(bytes: &[u8], extra: &mut String) -> Box<str> {
    match std::str::from_utf8(bytes).ok().map(compact_json) {
        Some(Ok(json)) => json,
        _ => {
            use base64::Engine;
            if !extra.is_empty() {
                extra.push(',');
            }
            extra.push_str("\"encoding\":\"base64\"");
            let mut s = String::with_capacity(bytes.len() * 4 / 3 + 4);
            push_json_str(
                &mut s,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            );
            s.into_boxed_str()
        }
    }
}

fn itoa(v: u64) -> String {
    v.to_string()
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(buf: &mut String, s: &str) {
    // serde_json's escaping, without a Value in between.
    buf.push_str(&serde_json::to_string(s).expect("strings always serialize"));
}

/// Kafka's default partitioner (murmur2 of the key bytes, made positive, modulo
/// the partition count), so the embedded log and a Kafka producer place a key
/// in the same partition.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Re-serializes any JSON text compactly (no raw newlines), or says why it is not JSON.
pub fn compact_json(text: &str) -> Result<Box<str>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    Ok(value.to_string().into_boxed_str())
}

/// The header of a final, unmasked text frame (RFC 6455 5.2) carrying `len` bytes.
pub(crate) fn ws_text_head(len: usize) -> ([u8; 10], u8) {
    let mut head = [0u8; 10];
    head[0] = 0x81;
    let used = if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn encodes_once_for_both_transports() {
        let log = LogRecord {
            trace: None,
            partition: 2,
            offset: 7,
            timestamp: 1000,
            key: Some("A\"B".into()),
            data: "{\"p\":1}".into(),
            extra: None,
            delete: false,
            position: None,
        };
        let rec = Record::encode("prices", &log, "CUR", Framing::Normal);
        let json: serde_json::Value = serde_json::from_str(rec.ws.as_str()).unwrap();
        assert_eq!(json["key"], "A\"B");
        assert_eq!(json["offset"], 7);
        assert_eq!(json["cursor"], "CUR");
        assert_eq!(json["data"]["p"], 1);
        assert_eq!(rec.data(), "{\"p\":1}");
        assert_eq!(rec.cursor(), "CUR");
        let sse = std::str::from_utf8(&rec.sse).unwrap();
        assert_eq!(sse, format!("id: CUR\ndata: {}\n\n", rec.ws.as_str()));
        let again = rec.reframe("prices", "NEW", Framing::Snapshot { with_id: false });
        assert!(!std::str::from_utf8(&again.sse).unwrap().contains("id:"));
        let json: serde_json::Value = serde_json::from_str(again.ws.as_str()).unwrap();
        assert_eq!(json["snapshot"], true);
        assert_eq!(json["cursor"], "NEW");
        assert_eq!(again.data(), "{\"p\":1}");
    }

    /// Age is measured at a live encoding's first write per transport, and
    /// never for replayed or snapshot copies.
    #[test]
    fn first_write_is_measured_once_per_transport_and_live_encoding() {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset: 1,
            timestamp: 1000,
            key: None,
            data: "1".into(),
            extra: None,
            delete: false,
            position: None,
        };
        let live = Record::encode("t", &log, "C", Framing::Normal).live();
        assert!(live.first_write(Transport::Ws).unwrap() > Duration::from_secs(1));
        assert_eq!(live.first_write(Transport::Ws), None);
        assert!(live.first_write(Transport::Sse).is_some());
        assert!(live.first_write(Transport::Grpc).is_some());
        assert_eq!(live.first_write(Transport::Sse), None);
        let projected = live.with_body("t", (Body::Data, "2"));
        assert!(projected.first_write(Transport::Ws).is_some());
        let replayed = live.reframe("t", "D", Framing::Normal);
        assert_eq!(replayed.first_write(Transport::Ws), None);
        let not_live = Record::encode("t", &log, "C", Framing::Normal);
        assert_eq!(not_live.first_write(Transport::Sse), None);
    }

    /// A sampled record's trace goes with its group variants (their first
    /// writes are deliveries of the same record), never with replayed copies.
    #[test]
    fn the_trace_follows_live_variants_only() {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset: 1,
            timestamp: 1000,
            key: Some("k".into()),
            data: "1".into(),
            extra: None,
            delete: false,
            position: None,
        };
        let trace = Arc::new(RecordTrace::sampled_for_tests());
        let live = Record::encode("t", &log, "C", Framing::Normal)
            .live()
            .traced(Some(trace));
        assert!(live.trace().is_some());
        assert!(live.with_body("t", (Body::Data, "2")).trace().is_some());
        assert!(live
            .variant("t", "leave", (Body::None, ""))
            .trace()
            .is_some());
        assert!(live.reframe("t", "D", Framing::Normal).trace().is_none());
        let untraced = Record::encode("t", &log, "C", Framing::Normal).live();
        assert!(untraced.with_body("t", (Body::Data, "2")).trace().is_none());
    }

    #[test]
    fn extra_members_survive_reframing() {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset: 1,
            timestamp: 5,
            key: None,
            data: "\"aGk=\"".into(),
            extra: Some("\"encoding\":\"base64\"".into()),
            delete: false,
            position: None,
        };
        let rec = Record::encode("t", &log, "C", Framing::Normal);
        let again = rec.reframe("t", "D", Framing::Normal);
        let json: serde_json::Value = serde_json::from_str(again.ws.as_str()).unwrap();
        assert_eq!(json["encoding"], "base64");
        assert_eq!(json["key"], serde_json::Value::Null);
        assert_eq!(json["data"], "aGk=");
    }

    #[test]
    fn variants_replace_op_and_value_members() {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset: 1,
            timestamp: 5,
            key: Some("k".into()),
            data: "{\"a\":1}".into(),
            extra: Some("\"op\":\"update\",\"source\":{\"op\":\"x\"}".into()),
            delete: false,
            position: None,
        };
        let rec = Record::encode("t", &log, "C", Framing::Normal);
        let enter = rec.variant("t", "enter", (Body::Data, rec.data()));
        let json: serde_json::Value = serde_json::from_str(enter.ws.as_str()).unwrap();
        assert_eq!(json["op"], "enter");
        assert_eq!(json["source"]["op"], "x");
        assert_eq!(json["data"]["a"], 1);
        assert_eq!(
            enter.ws.as_str().matches("\"op\":\"").count(),
            2,
            "one op member, one in source"
        );
        let leave = rec.variant("t", "leave", (Body::None, ""));
        let json: serde_json::Value = serde_json::from_str(leave.ws.as_str()).unwrap();
        assert_eq!(json["op"], "leave");
        assert!(json.get("data").is_none() && json.get("patch").is_none());
        assert_eq!(json["cursor"], "C");
        let again = leave.reframe("t", "D", Framing::Normal);
        let json: serde_json::Value = serde_json::from_str(again.ws.as_str()).unwrap();
        assert!(json.get("data").is_none(), "reframing keeps the body kind");
        assert_eq!(json["cursor"], "D");
        let patch = rec.with_body("t", (Body::Patch, "[]"));
        let json: serde_json::Value = serde_json::from_str(patch.ws.as_str()).unwrap();
        assert_eq!(json["patch"], serde_json::json!([]));
        assert_eq!(json["op"], "update");
        let plain = Record::encode("t", &LogRecord { extra: None, ..log }, "C", Framing::Normal);
        let json: serde_json::Value =
            serde_json::from_str(plain.variant("t", "enter", (Body::Data, "2")).ws.as_str())
                .unwrap();
        assert_eq!(json["op"], "enter");
        assert_eq!(json["data"], 2);
    }

    #[test]
    fn ws_frame_is_tungstenites_text_frame() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        // Each length class of the header: 7-bit, 16-bit and 64-bit.
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 70_000] {
            let (head, used) = ws_text_head(len);
            let payload = vec![b'x'; len];
            let mut expected = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut expected)
                .unwrap();
            let mut ours = head[..used as usize].to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(ours, expected, "length {len}");
        }
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset: 1,
            timestamp: 0,
            key: None,
            data: "[1]".into(),
            extra: None,
            delete: false,
            position: None,
        };
        let rec = Record::encode("t", &log, "CUR", Framing::Normal);
        let [head, body] = rec.ws_frame();
        assert_eq!(body, rec.ws.as_str().as_bytes());
        assert_eq!(head, &ws_text_head(body.len()).0[..head.len()]);
    }
}
