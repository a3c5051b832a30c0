//! The fleet harness's clients (`fleet-clients`) and producer (`fleet-produce`).
//!
//! Each client is a WebSocket, SSE or gRPC subscriber to a few keys of one
//! topic (some with a value filter), that checks every record against what
//! the producer wrote (per key a sequence number: none lost, duplicated or out
//! of order; per partition offsets only grow), measures live latency from the
//! record's `ts`, and on any disconnect or refusal reconnects with full-jitter
//! backoff (or the server's `Retry-After`) and resumes from its cursor. Every
//! outage is logged (down, up, refusals in a row) for `fleet-report`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::now_us;

#[derive(clap::Parser, Clone)]
pub struct ClientArgs {
    /// Load-balancer addresses; client i uses frontend i mod n.
    #[arg(long, value_delimiter = ',', required = true)]
    frontends: Vec<SocketAddr>,
    #[arg(long, default_value = "fleet")]
    topic: String,
    /// Clients in this process.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Global id of this process's first client (ids pick keys and transports).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Source addresses 127.S.x.y: one per client, S this process's own.
    #[arg(long, default_value_t = 20)]
    source_octet: u8,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value_t = 3)]
    keys_per_client: usize,
    /// Transport mix, weights ws,sse,grpc.
    #[arg(long, value_delimiter = ',', default_value = "2,1,1")]
    mix: Vec<usize>,
    /// Every Nth client subscribes with the filter `{"even":true}` (0: none).
    #[arg(long, default_value_t = 4)]
    filter_every: usize,
    /// Seconds over which the first connections are spread.
    #[arg(long, default_value_t = 10.0)]
    ramp_secs: f64,
    /// Backoff: full jitter in [0, min(cap, base * 2^attempt)).
    #[arg(long, default_value_t = 250)]
    backoff_base_ms: u64,
    #[arg(long, default_value_t = 5000)]
    backoff_cap_ms: u64,
    /// Created by the harness when the producer has stopped; holds the path of
    /// its counts file. The clients then drain a few seconds, check the tail
    /// against the counts, write `--out` and exit.
    #[arg(long)]
    stop_file: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Give up after this long in any case.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Ws,
    Sse,
    Grpc,
}

/// How one connection ended.
enum End {
    /// Refused (503, `unavailable`, gRPC UNAVAILABLE), with the server's hint.
    Refused(Option<Duration>),
    /// Closed or failed after (or before) subscribing.
    Dropped,
    Stop,
}

/// One outage: wall-clock ms down and up (0: never resumed), when the resume
/// was caught up (the server's `live`; 0: not seen), and refusals in it.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct Outage {
    pub client: u32,
    pub kind: u8,
    pub down: u64,
    pub up: u64,
    /// Wall-clock ms of the `live` message that ended the resume's replay.
    #[serde(default)]
    pub live: u64,
    pub refusals: u32,
    /// Connection attempts in the outage, the one that resumed included.
    #[serde(default)]
    pub attempts: u32,
    /// Wall-clock ms the attempt that resumed began (its connect), so the
    /// report can tell time spent backing off from time spent being served.
    #[serde(default)]
    pub tried: u64,
}

impl Outage {
    /// An outage of `c` that begins now.
    fn began(c: &Client) -> Self {
        Outage {
            client: c.id as u32,
            kind: c.kind as u8,
            down: now_us() / 1000,
            up: 0,
            live: 0,
            refusals: 0,
            attempts: 0,
            tried: 0,
        }
    }
}

/// What a process reports.
#[derive(Serialize, Deserialize, Default)]
pub struct ClientReport {
    pub clients: usize,
    pub subscribed: usize,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub gaps: u64,
    pub tail_lost: u64,
    pub refusals: u64,
    pub max_refusals_in_a_row: u32,
    pub outages: Vec<Outage>,
    /// Wall-clock second -> latency bucket -> count, for records received by
    /// clients connected for at least 10 s (steady, not catching up).
    pub latency: BTreeMap<u64, BTreeMap<u16, u32>>,
}

/// Latency bucket: 5% wide steps from 100 µs.
pub fn bucket(us: u64) -> u16 {
    ((us.max(100) as f64 / 100.0).ln() / 1.05f64.ln()) as u16
}

pub fn bucket_floor_ms(b: u16) -> f64 {
    0.1 * 1.05f64.powi(b as i32)
}

#[derive(Default)]
struct Totals {
    received: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    gaps: AtomicU64,
    refusals: AtomicU64,
    /// Clients whose current connection has had its `live` (caught up).
    live: AtomicU64,
}

struct Shared {
    args: ClientArgs,
    totals: Totals,
    stop: CancellationToken,
    outages: Mutex<Vec<Outage>>,
    latency: Mutex<BTreeMap<u64, BTreeMap<u16, u32>>>,
}

/// One client's state, kept across its connections.
struct Client {
    id: usize,
    kind: Kind,
    keys: Vec<String>,
    filtered: bool,
    server: SocketAddr,
    source: IpAddr,
    cursor: Option<String>,
    /// key -> last seq seen.
    last_seq: HashMap<String, u64>,
    /// (key, seq) counted lost, not seen yet (a late arrival is a reorder).
    missing: HashSet<(String, u64)>,
    last_offset: HashMap<u32, u64>,
    connected_at: Option<Instant>,
    /// Wall-clock ms of this connection's `live` (caught up), if it came.
    live_at: Option<u64>,
    max_in_a_row: u32,
}

#[derive(Deserialize)]
struct Msg {
    #[serde(rename = "type")]
    kind: Option<String>,
    key: Option<String>,
    partition: Option<u32>,
    offset: Option<u64>,
    cursor: Option<String>,
    data: Option<Payload>,
    code: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    ts: u64,
    seq: u64,
}

impl Client {
    /// The server's `live`: this connection's replay is over.
    fn went_live(&mut self, sh: &Shared) {
        if self.live_at.is_none() {
            self.live_at = Some(now_us() / 1000);
            sh.totals.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record(
        &mut self,
        sh: &Shared,
        key: &str,
        partition: u32,
        offset: u64,
        cursor: &str,
        data: &Payload,
    ) {
        sh.totals.received.fetch_add(1, Ordering::Relaxed);
        let step = if self.filtered { 2 } else { 1 };
        let mut fresh = true;
        match self.last_seq.get(key).copied() {
            None => {}
            Some(last) if data.seq > last => {
                if data.seq > last + step && sh.totals.lost.load(Ordering::Relaxed) < 200 {
                    // The first few, with where they happened, to find their cause.
                    eprintln!(
                        "client {} ({:?}, filtered {}): key {key} seq {last} then {} (partition {partition} offset {offset}) at {} ms, connected {:?} ago",
                        self.id,
                        self.kind,
                        self.filtered,
                        data.seq,
                        now_us() / 1000,
                        self.connected_at.map(|t| t.elapsed()),
                    );
                }
                let mut s = last + step;
                while s < data.seq {
                    if self.missing.len() < 100_000 {
                        self.missing.insert((key.to_owned(), s));
                    }
                    sh.totals.lost.fetch_add(1, Ordering::Relaxed);
                    s += step;
                }
            }
            Some(_) => {
                fresh = false;
                if self.missing.remove(&(key.to_owned(), data.seq)) {
                    sh.totals.lost.fetch_sub(1, Ordering::Relaxed);
                    sh.totals.reordered.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.totals.duplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if fresh {
            self.last_seq.insert(key.to_owned(), data.seq);
            match self.last_offset.get(&partition) {
                Some(&o) if offset <= o => {
                    sh.totals.reordered.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.last_offset.insert(partition, offset);
                }
            }
            self.cursor = Some(cursor.to_owned());
        }
        if self
            .connected_at
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(10))
        {
            let now = now_us();
            let second = now / 1_000_000;
            let mut lat = sh.latency.lock().expect("latency lock");
            *lat.entry(second)
                .or_default()
                .entry(bucket(now.saturating_sub(data.ts)))
                .or_default() += 1;
        }
    }

    /// A message of the JSON protocol (WebSocket text, SSE data). `Some` ends the connection.
    fn json(&mut self, sh: &Shared, text: &[u8], up: &mut bool) -> Option<End> {
        let Ok(m) = serde_json::from_slice::<Msg>(text) else {
            return None;
        };
        match m.kind.as_deref() {
            Some("record") => {
                if let (Some(k), Some(p), Some(o), Some(c), Some(d)) =
                    (&m.key, m.partition, m.offset, &m.cursor, &m.data)
                {
                    self.record(sh, k, p, o, c, d);
                }
            }
            Some("subscribed") => {
                if self.cursor.is_none() {
                    self.cursor = m.cursor;
                }
                *up = true;
            }
            Some("live") => self.went_live(sh),
            Some("gap") => {
                sh.totals.gaps.fetch_add(1, Ordering::Relaxed);
                self.last_seq.clear();
                self.missing.clear();
                self.last_offset.clear();
            }
            Some("error") => {
                return Some(if m.code.as_deref() == Some("unavailable") {
                    End::Refused(None)
                } else {
                    eprintln!(
                        "client {}: error {:?}",
                        self.id,
                        String::from_utf8_lossy(text)
                    );
                    End::Dropped
                })
            }
            _ => {}
        }
        None
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source, 0))?;
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(self.server))
            .await
            .map_err(|_| std::io::Error::other("connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

const IDLE: Duration = Duration::from_secs(60);
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Runs `session` and marks the client up when it says so; returns how it ended.
async fn ws(c: &mut Client, sh: &Shared, up: &mut bool) -> End {
    let Ok(stream) = c.connect().await else {
        return End::Dropped;
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{}/ws", c.server);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let mut socket = match tokio::time::timeout(HANDSHAKE, handshake).await {
        Ok(Ok((s, _))) => s,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) if resp.status() == 503 => {
            return End::Refused(retry_after(resp.headers().get("retry-after")))
        }
        _ => return End::Dropped,
    };
    let mut sub = serde_json::json!({
        "type": "subscribe", "id": 1, "topic": sh.args.topic, "keys": c.keys, "snapshot": false,
    });
    if let Some(cur) = &c.cursor {
        sub["cursor"] = cur.clone().into();
    }
    if c.filtered {
        sub["filter"] = serde_json::json!({"even": true});
    }
    if socket.send(Message::text(sub.to_string())).await.is_err() {
        return End::Dropped;
    }
    loop {
        let msg = tokio::select! {
            _ = sh.stop.cancelled() => return End::Stop,
            m = tokio::time::timeout(IDLE, socket.next()) => m,
        };
        match msg {
            Ok(Some(Ok(Message::Text(t)))) => {
                let was = *up;
                if let Some(end) = c.json(sh, t.as_bytes(), up) {
                    return end;
                }
                if *up && !was {
                    c.connected_at = Some(Instant::now());
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                return End::Dropped
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn sse(c: &mut Client, sh: &Shared, up: &mut bool) -> End {
    let Ok(mut stream) = c.connect().await else {
        return End::Dropped;
    };
    let mut q = format!("topic={}&snapshot=false", sh.args.topic);
    for k in &c.keys {
        q.push_str(&format!("&key={k}"));
    }
    if let Some(cur) = &c.cursor {
        q.push_str(&format!("&cursor={cur}"));
    }
    if c.filtered {
        q.push_str("&filter=%7B%22even%22%3Atrue%7D");
    }
    let req = format!(
        "GET /sse?{q} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        c.server
    );
    if stream.write_all(req.as_bytes()).await.is_err() {
        return End::Dropped;
    }
    let mut raw = BytesMut::with_capacity(4096);
    // Headers.
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&raw, b"\r\n\r\n") {
            break i;
        }
        match tokio::time::timeout(HANDSHAKE, stream.read_buf(&mut raw)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return End::Dropped,
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 503 {
        let hint = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after:"))
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        return End::Refused(hint);
    }
    if status != 200 {
        eprintln!("client {}: SSE status {status}", c.id);
        return End::Dropped;
    }
    let chunked = head.contains("transfer-encoding: chunked");
    raw.advance(head_end + 4);
    let mut body = BytesMut::new();
    loop {
        // Move what has arrived from `raw` into `body` (de-chunked).
        if chunked {
            while let Some(eol) = memchr::memmem::find(&raw, b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&raw[..eol])
                        .unwrap_or("")
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                );
                let Ok(size) = size else { return End::Dropped };
                if size == 0 {
                    return End::Dropped;
                }
                if raw.len() < eol + 2 + size + 2 {
                    break;
                }
                raw.advance(eol + 2);
                body.extend_from_slice(&raw[..size]);
                raw.advance(size + 2);
            }
        } else {
            body.extend_from_slice(&raw);
            raw.clear();
        }
        while let Some(i) = memchr::memmem::find(&body, b"\n\n") {
            let event = body.split_to(i + 2);
            // The JSON's own `type` says what it is; the `event:` line is not needed.
            let mut data: Vec<u8> = Vec::new();
            for line in event[..].split(|&b| b == b'\n') {
                if let Some(v) = line.strip_prefix(b"data: ") {
                    data.extend_from_slice(v);
                }
            }
            if data.is_empty() {
                continue;
            }
            let was = *up;
            if let Some(end) = c.json(sh, &data, up) {
                return end;
            }
            if *up && !was {
                c.connected_at = Some(Instant::now());
            }
        }
        let read = tokio::select! {
            _ = sh.stop.cancelled() => return End::Stop,
            r = tokio::time::timeout(IDLE, stream.read_buf(&mut raw)) => r,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return End::Dropped,
        }
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Protobuf fields of `buf`: (number, varint value, bytes value).
pub(crate) fn pb_fields(mut buf: &[u8]) -> Vec<(u32, u64, &[u8])> {
    fn read_varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while let Some(tag) = read_varint(&mut buf) {
        let (num, wire) = ((tag >> 3) as u32, tag & 7);
        match wire {
            0 => match read_varint(&mut buf) {
                Some(v) => out.push((num, v, &[][..])),
                None => break,
            },
            2 => {
                let Some(len) = read_varint(&mut buf) else {
                    break;
                };
                if buf.len() < len as usize {
                    break;
                }
                let (v, rest) = buf.split_at(len as usize);
                out.push((num, 0, v));
                buf = rest;
            }
            1 if buf.len() >= 8 => buf = &buf[8..],
            5 if buf.len() >= 4 => buf = &buf[4..],
            _ => break,
        }
    }
    out
}

async fn grpc(c: &mut Client, sh: &Shared, up: &mut bool) -> End {
    let Ok(stream) = c.connect().await else {
        return End::Dropped;
    };
    let handshake = h2::client::Builder::new()
        .initial_window_size(256 * 1024)
        .handshake::<_, Bytes>(stream);
    let (client, connection) = match tokio::time::timeout(HANDSHAKE, handshake).await {
        Ok(Ok(pair)) => pair,
        _ => return End::Dropped,
    };
    let connection = async move {
        let _ = connection.await;
    };
    tokio::pin!(connection);
    let Ok(mut client) = client.ready().await else {
        return End::Dropped;
    };
    let mut m = Vec::new();
    field(&mut m, 0x0a, sh.args.topic.as_bytes());
    for k in &c.keys {
        field(&mut m, 0x12, k.as_bytes());
    }
    if let Some(cur) = &c.cursor {
        field(&mut m, 0x22, cur.as_bytes());
    }
    m.extend_from_slice(&[0x28, 0x00]);
    if c.filtered {
        field(&mut m, 0x32, br#"{"even":true}"#);
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
    framed.extend_from_slice(&m);
    let Ok(req) = crate::grpc::subscribe_call(&c.server.to_string()) else {
        return End::Dropped;
    };
    let Ok((response, mut send)) = client.send_request(req, false) else {
        return End::Dropped;
    };
    if send.send_data(Bytes::from(framed), true).is_err() {
        return End::Dropped;
    }
    let response = tokio::select! {
        _ = &mut connection => return End::Dropped,
        r = tokio::time::timeout(HANDSHAKE, response) => match r {
            Ok(Ok(r)) => r,
            _ => return End::Dropped,
        },
    };
    let hint = retry_after(response.headers().get("retry-after"));
    if response.status() == 503 {
        return End::Refused(hint);
    }
    // A trailers-only refusal: grpc-status in the headers.
    if let Some(status) = response.headers().get("grpc-status") {
        return if status == "14" {
            End::Refused(hint)
        } else {
            End::Dropped
        };
    }
    if response.status() != 200 {
        return End::Dropped;
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    loop {
        let data = tokio::select! {
            _ = sh.stop.cancelled() => return End::Stop,
            _ = &mut connection => return End::Dropped,
            d = tokio::time::timeout(IDLE, body.data()) => d,
        };
        let data = match data {
            Ok(Some(Ok(d))) => d,
            _ => {
                // The end of the stream: UNAVAILABLE in the trailers is a refusal (warm-up).
                if let Ok(Ok(Some(t))) =
                    tokio::time::timeout(Duration::from_secs(1), body.trailers()).await
                {
                    if t.get("grpc-status").is_some_and(|s| s == "14") && !*up {
                        return End::Refused(None);
                    }
                }
                return End::Dropped;
            }
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            buf.advance(5);
            let msg = buf.split_to(len);
            for (num, _, inner) in pb_fields(&msg) {
                match num {
                    1 => {
                        if c.cursor.is_none() {
                            let cur = pb_fields(inner).into_iter().find(|f| f.0 == 2);
                            c.cursor = cur.map(|f| String::from_utf8_lossy(f.2).into_owned());
                        }
                        if !*up {
                            *up = true;
                            c.connected_at = Some(Instant::now());
                        }
                    }
                    2 => {
                        let (mut key, mut p, mut o, mut cur, mut data) = ("", 0, 0, "", &[][..]);
                        for (n, v, b) in pb_fields(inner) {
                            match n {
                                2 => key = std::str::from_utf8(b).unwrap_or(""),
                                3 => p = v as u32,
                                4 => o = v,
                                5 => cur = std::str::from_utf8(b).unwrap_or(""),
                                7 => data = b,
                                _ => {}
                            }
                        }
                        if let Ok(d) = serde_json::from_slice::<Payload>(data) {
                            let (key, cur) = (key.to_owned(), cur.to_owned());
                            c.record(sh, &key, p, o, &cur, &d);
                        }
                    }
                    3 => c.went_live(sh),
                    4 => {
                        sh.totals.gaps.fetch_add(1, Ordering::Relaxed);
                        c.last_seq.clear();
                        c.missing.clear();
                        c.last_offset.clear();
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn run_client(mut c: Client, sh: Arc<Shared>, start_delay: Duration) -> Client {
    tokio::select! {
        _ = sh.stop.cancelled() => return c,
        _ = tokio::time::sleep(start_delay) => {}
    }
    let mut attempt = 0u32;
    let mut outage: Option<Outage> = None;
    let mut in_a_row = 0u32;
    loop {
        let mut up = false;
        if let Some(o) = outage.as_mut() {
            o.attempts += 1;
            o.tried = now_us() / 1000;
        }
        let end = match c.kind {
            Kind::Ws => ws(&mut c, &sh, &mut up).await,
            Kind::Sse => sse(&mut c, &sh, &mut up).await,
            Kind::Grpc => grpc(&mut c, &sh, &mut up).await,
        };
        if up {
            // It resumed: the outage (if any) ends when it subscribed.
            if let Some(mut o) = outage.take() {
                let at = c.connected_at.map(|t| t.elapsed()).unwrap_or_default();
                o.up = (now_us() / 1000).saturating_sub(at.as_millis() as u64);
                o.live = c.live_at.unwrap_or(0);
                sh.outages.lock().expect("outages").push(o);
            }
            attempt = 0;
            in_a_row = 0;
        }
        c.connected_at = None;
        if c.live_at.take().is_some() {
            sh.totals.live.fetch_sub(1, Ordering::Relaxed);
        }
        let delay = match end {
            End::Stop => break,
            End::Refused(hint) => {
                sh.totals.refusals.fetch_add(1, Ordering::Relaxed);
                in_a_row += 1;
                c.max_in_a_row = c.max_in_a_row.max(in_a_row);
                let o = outage.get_or_insert_with(|| Outage::began(&c));
                o.refusals += 1;
                let jitter = rand::rng().random_range(0..=sh.args.backoff_base_ms.max(1));
                match hint {
                    Some(h) => h + Duration::from_millis(jitter),
                    None => backoff(&sh.args, attempt),
                }
            }
            End::Dropped => {
                outage.get_or_insert_with(|| Outage::began(&c));
                // Dropped after being up: a fresh outage, the backoff starts over.
                backoff(&sh.args, attempt)
            }
        };
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = sh.stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    if let Some(o) = outage {
        sh.outages.lock().expect("outages").push(o);
    }
    c
}

fn backoff(args: &ClientArgs, attempt: u32) -> Duration {
    let ceiling = args
        .backoff_cap_ms
        .min(args.backoff_base_ms.saturating_mul(1u64 << attempt.min(20)));
    Duration::from_millis(rand::rng().random_range(0..=ceiling.max(1)))
}

/// Producer counts: records written per key (`seq` 0..count).
#[derive(Serialize, Deserialize)]
pub struct Counts {
    pub counts: Vec<u64>,
    pub failed: u64,
}

pub fn key_name(i: usize) -> String {
    format!("k{i:05}")
}

pub async fn clients(args: ClientArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let sh = Arc::new(Shared {
        args: args.clone(),
        totals: Totals::default(),
        stop: stop.clone(),
        outages: Mutex::new(Vec::new()),
        latency: Mutex::new(BTreeMap::new()),
    });
    let weights: usize = args.mix.iter().sum::<usize>().max(1);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let id = args.first + i;
        // A deterministic spread of keys, transports and filters over ids.
        let mut r = rand::rngs::StdRng::seed_from_u64(id as u64);
        let keys = (0..args.keys_per_client)
            .map(|_| key_name(r.random_range(0..args.keys)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let slot = id % weights;
        let kind = if slot < args.mix[0] {
            Kind::Ws
        } else if slot < args.mix[0] + args.mix.get(1).copied().unwrap_or(0) {
            Kind::Sse
        } else {
            Kind::Grpc
        };
        let c = Client {
            id,
            kind,
            keys,
            filtered: args.filter_every > 0 && id % args.filter_every == args.filter_every - 1,
            server: args.frontends[id % args.frontends.len()],
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                args.source_octet,
                (i / 250) as u8,
                (i % 250 + 1) as u8,
            )),
            cursor: None,
            last_seq: HashMap::new(),
            missing: HashSet::new(),
            last_offset: HashMap::new(),
            connected_at: None,
            live_at: None,
            max_in_a_row: 0,
        };
        let delay = Duration::from_secs_f64(args.ramp_secs * i as f64 / args.clients.max(1) as f64);
        tasks.push(tokio::spawn(run_client(c, Arc::clone(&sh), delay)));
    }
    // Progress (a line each time the number of caught-up clients changes), and the stop file.
    let started = Instant::now();
    let mut live_shown = u64::MAX;
    let counts_path = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let live = sh.totals.live.load(Ordering::Relaxed);
        if live != live_shown {
            eprintln!(
                "fleet-clients: live {live}/{} at {} ms",
                args.clients,
                now_us() / 1000
            );
            live_shown = live;
        }
        if let Ok(text) = std::fs::read_to_string(&args.stop_file) {
            if !text.trim().is_empty() {
                break Some(PathBuf::from(text.trim()));
            }
        }
        if started.elapsed() > Duration::from_secs(args.max_secs) {
            break None;
        }
    };
    // Records still in flight when the producer stopped reach the clients now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.cancel();
    let mut done = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(c) = t.await {
            done.push(c);
        }
    }
    let counts: Option<Counts> = counts_path
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut tail_lost = 0;
    let mut subscribed = 0;
    let mut max_in_a_row = 0;
    for c in &done {
        subscribed += usize::from(c.cursor.is_some());
        max_in_a_row = max_in_a_row.max(c.max_in_a_row);
        let Some(counts) = &counts else { continue };
        for k in &c.keys {
            let i: usize = k[1..].parse().unwrap_or(0);
            let produced = counts.counts.get(i).copied().unwrap_or(0);
            let step = if c.filtered { 2 } else { 1 };
            let Some(&last) = c.last_seq.get(k) else {
                continue;
            };
            // The last seq this client should have: the last one its filter passes.
            let mut want = produced.saturating_sub(1);
            if c.filtered && want % 2 == 1 {
                want -= 1;
            }
            if want > last {
                tail_lost += (want - last) / step;
            }
        }
    }
    let t = &sh.totals;
    let report = ClientReport {
        clients: args.clients,
        subscribed,
        received: t.received.load(Ordering::Relaxed),
        lost: t.lost.load(Ordering::Relaxed) + tail_lost,
        duplicated: t.duplicated.load(Ordering::Relaxed),
        reordered: t.reordered.load(Ordering::Relaxed),
        gaps: t.gaps.load(Ordering::Relaxed),
        tail_lost,
        refusals: t.refusals.load(Ordering::Relaxed),
        max_refusals_in_a_row: max_in_a_row,
        outages: std::mem::take(&mut *sh.outages.lock().expect("outages")),
        latency: std::mem::take(&mut *sh.latency.lock().expect("latency")),
    };
    std::fs::write(&args.out, serde_json::to_vec(&report)?).context("writing --out")?;
    eprintln!(
        "fleet-clients: {} clients, {} received, lost {} (tail {}), dup {}, reordered {}, gaps {}, refusals {}, counts {}",
        report.clients,
        report.received,
        report.lost,
        report.tail_lost,
        report.duplicated,
        report.reordered,
        report.gaps,
        report.refusals,
        if counts.is_some() { "read" } else { "MISSING" }
    );
    Ok(())
}

use rand::SeedableRng;
