//! Subscribers: one task per connection, WebSocket (tokio-tungstenite) or
//! SSE (a small HTTP/1.1 reader with a chunked decoder), for pushgate, Nchan,
//! Pushpin and Centrifugo. Each counts deliveries and records latency from the
//! `"ts":` microsecond timestamp the publisher put in every payload. With
//! `resume_every`, each drops its connection now and then and comes back from
//! its position (pushgate's cursor, Centrifugo's offset and epoch).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::stats::{bump, Counters, Stats};
use crate::{System, Transport};

pub struct ClientConfig {
    pub system: System,
    pub transport: Transport,
    pub server: SocketAddr,
    pub host: String,
    pub topic: String,
    /// Number of 127.0.0.x source addresses to spread connections over.
    pub sources: u8,
    pub handshake_timeout: Duration,
    /// Distinct value filters (pushgate only): subscriber i gets filter i mod N.
    pub filters: usize,
    /// pushgate `max_rate` for every subscription.
    pub max_rate: Option<f64>,
    /// Drop the connection about this often and resume from the position reached.
    pub resume_every: Option<Duration>,
    /// Time away between the drop and the reconnect.
    pub resume_away: Duration,
}

/// Where a subscriber is in its stream, for resuming.
#[derive(Default)]
pub(crate) struct Position {
    /// pushgate: the last cursor seen.
    pub cursor: Option<String>,
    /// Centrifugo: offset and epoch of the channel's stream.
    pub stream: StreamPos,
    /// Resume runs only: every `seq` delivered, so a repeat counts as a duplicate.
    pub seen: Option<HashSet<u64>>,
}

#[derive(Default, Debug)]
pub(crate) struct StreamPos {
    pub offset: Option<u64>,
    pub epoch: Option<String>,
}

/// Records one delivery; a `seq` seen before on this subscriber is a duplicate.
pub(crate) fn deliver(
    conn: usize,
    ts: u64,
    seq: Option<u64>,
    seen: &mut Option<HashSet<u64>>,
    sh: &Shared,
) {
    if let (Some(seen), Some(seq)) = (seen.as_mut(), seq) {
        if !seen.insert(seq) {
            bump(&sh.counters.duplicates, 1);
            return;
        }
    }
    sh.stats.record(conn, ts);
}

impl ClientConfig {
    /// Subscriber `conn`'s value filter: `price >= i` (payload prices are 100..199, so it
    /// always matches) and a sector list, distinct per i so every group evaluates its own.
    fn filter(&self, conn: usize) -> Option<serde_json::Value> {
        (self.filters > 0).then(|| {
            let i = conn % self.filters;
            serde_json::json!({"price": {"gte": i}, "sector": {"in": ["tech", "energy", "retail"]}})
        })
    }
}

pub struct Shared {
    pub stats: Stats,
    pub counters: Counters,
    pub stop: CancellationToken,
    /// Per subscriber: its subscription is confirmed.
    pub ready: Vec<AtomicBool>,
}

fn source_addr(cfg: &ClientConfig, conn: usize) -> IpAddr {
    let n = cfg.sources.max(1) as usize;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + (conn % n) as u8))
}

pub(crate) async fn connect(cfg: &ClientConfig, conn: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if cfg.server.ip().is_loopback() {
        socket.bind(SocketAddr::new(source_addr(cfg, conn), 0))?;
    }
    let stream = socket.connect(cfg.server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Percent-encodes everything but unreserved characters (for a query value).
pub(crate) fn form_urlencoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Finds `"ts":<digits>` in `bytes`.
pub(crate) fn find_ts(bytes: &[u8]) -> Option<u64> {
    let at = memmem::find(bytes, b"\"ts\":")? + 5;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &bytes[at..] {
        if b.is_ascii_digit() {
            v = v * 10 + (b - b'0') as u64;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Finds `"seq":<digits>` in `bytes`.
pub(crate) fn find_seq(bytes: &[u8]) -> Option<u64> {
    let at = memmem::find(bytes, b"\"seq\":")? + 6;
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The string after the first `"cursor":"` in `bytes` (a pushgate record, `subscribed` or `live`).
fn find_cursor(bytes: &[u8]) -> Option<String> {
    let at = memmem::find(bytes, b"\"cursor\":\"")? + 10;
    let end = memchr::memchr(b'"', &bytes[at..])?;
    Some(String::from_utf8_lossy(&bytes[at..at + end]).into_owned())
}

/// When this connection drops on purpose next (resume runs): spread over the
/// first period so the drops do not come in waves.
fn next_drop(cfg: &ClientConfig, conn: usize, first: bool) -> Option<tokio::time::Instant> {
    let every = cfg.resume_every?;
    let spread = if first {
        (conn % 997) as f64 / 997.0
    } else {
        0.0
    };
    Some(tokio::time::Instant::now() + every.mul_f64(1.0 + spread))
}

/// Sleeps until `at`, forever when there is none.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one subscriber until the run stops. Never panics on network errors.
pub async fn subscriber(conn: usize, key: String, cfg: Arc<ClientConfig>, sh: Arc<Shared>) {
    let mut pos = Position {
        seen: cfg.resume_every.map(|_| HashSet::new()),
        ..Position::default()
    };
    let mut first = true;
    let result = loop {
        let drop_at = next_drop(&cfg, conn, first);
        first = false;
        let result = match cfg.transport {
            Transport::Ws => ws(conn, &key, &cfg, &sh, &mut pos, drop_at).await,
            Transport::Sse => sse(conn, &key, &cfg, &sh, &mut pos, drop_at).await,
            Transport::Grpc => crate::grpc::subscribe(conn, &key, &cfg, &sh)
                .await
                .map(|()| false),
            Transport::WsDeflate => crate::ws_deflate::subscribe(conn, &key, &cfg, &sh)
                .await
                .map(|()| false),
        };
        match result {
            Ok(true) => {
                bump(&sh.counters.resumes, 1);
                tokio::select! {
                    _ = sh.stop.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(cfg.resume_away) => {}
                }
            }
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let was_ready = sh.ready[conn].swap(false, Ordering::Relaxed);
    if was_ready {
        sh.counters.ready.fetch_sub(1, Ordering::Relaxed);
    }
    if !sh.stop.is_cancelled() {
        match result {
            Err(Failure::Connect) => bump(&sh.counters.connect_errors, 1),
            Err(Failure::Status) => bump(&sh.counters.status_errors, 1),
            _ => bump(&sh.counters.disconnects, 1),
        }
    }
}

pub(crate) enum Failure {
    Connect,
    Status,
    Stream,
}

pub(crate) fn mark_ready(conn: usize, sh: &Shared) {
    if !sh.ready[conn].swap(true, Ordering::Relaxed) {
        sh.counters.ready.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct OpenGuard<'a>(&'a Shared);
impl<'a> OpenGuard<'a> {
    pub(crate) fn new(sh: &'a Shared) -> Self {
        sh.counters.open.fetch_add(1, Ordering::Relaxed);
        Self(sh)
    }
}
impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One WebSocket connection; Ok(true): dropped on purpose at `drop_at`, resume.
async fn ws(
    conn: usize,
    key: &str,
    cfg: &ClientConfig,
    sh: &Shared,
    pos: &mut Position,
    drop_at: Option<tokio::time::Instant>,
) -> Result<bool, Failure> {
    let path = match cfg.system {
        System::Pushgate | System::Floor => "/ws".to_owned(),
        System::Nchan => format!("/sub/{key}"),
        System::Pushpin => format!("/ws/{key}"),
        System::Centrifugo => crate::centrifugo::path("uni_websocket", key, &pos.stream),
    };
    let url = format!("ws://{}{}", cfg.host, path);
    let stream = connect(cfg, conn).await.map_err(|_| Failure::Connect)?;
    let _open = OpenGuard::new(sh);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let (mut socket, _resp) = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(_))) => return Err(Failure::Status),
        _ => return Err(Failure::Connect),
    };
    if matches!(cfg.system, System::Pushgate | System::Floor) {
        let mut sub = serde_json::json!({
            "type": "subscribe", "id": 1, "topic": cfg.topic, "keys": [key], "snapshot": false
        });
        if let Some(filter) = cfg.filter(conn) {
            sub["filter"] = filter;
        }
        if let Some(rate) = cfg.max_rate {
            sub["max_rate"] = rate.into();
        }
        if let Some(cursor) = &pos.cursor {
            sub["cursor"] = cursor.as_str().into();
        }
        socket
            .send(Message::text(sub.to_string()))
            .await
            .map_err(|_| Failure::Stream)?;
    } else if cfg.system != System::Centrifugo {
        mark_ready(conn, sh);
    }
    let pushgate = matches!(cfg.system, System::Pushgate | System::Floor);
    loop {
        let msg = tokio::select! {
            _ = sh.stop.cancelled() => return Ok(false),
            _ = until(drop_at) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                return Ok(true);
            }
            msg = socket.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) if cfg.system == System::Centrifugo => {
                // Pushes may be joined by newlines in one frame.
                for push in text.as_bytes().split(|b| *b == b'\n') {
                    if !push.is_empty() && !crate::centrifugo::handle(push, conn, key, pos, sh) {
                        return Err(Failure::Status);
                    }
                }
            }
            Some(Ok(Message::Text(text))) => {
                let bytes = text.as_bytes();
                if pushgate && pos.seen.is_some() {
                    if let Some(cursor) = find_cursor(bytes) {
                        pos.cursor = Some(cursor);
                    }
                }
                if let Some(ts) = find_ts(bytes) {
                    deliver(conn, ts, find_seq(bytes), &mut pos.seen, sh);
                } else if memmem::find(bytes, b"\"subscribed\"").is_some() {
                    if memmem::find(bytes, b"\"recovered\":false").is_some() {
                        bump(&sh.counters.not_recovered, 1);
                    }
                    mark_ready(conn, sh);
                } else if memmem::find(bytes, b"\"error\"").is_some() {
                    return Err(Failure::Status);
                }
            }
            Some(Ok(Message::Binary(bytes))) => {
                if let Some(ts) = find_ts(&bytes) {
                    sh.stats.record(conn, ts);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(Failure::Stream),
        }
    }
}

/// A decoder for `Transfer-Encoding: chunked`, fed arbitrary slices.
#[derive(Default)]
pub(crate) struct Chunked {
    state: u8,
    size: usize,
}

const SIZE: u8 = 0;
const EXT: u8 = 1;
const SIZE_LF: u8 = 2;
const DATA: u8 = 3;
const DATA_CR: u8 = 4;
const DATA_LF: u8 = 5;
const DONE: u8 = 6;

impl Chunked {
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.state == DATA {
                let n = self.size.min(input.len());
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                self.size -= n;
                if self.size == 0 {
                    self.state = DATA_CR;
                }
                continue;
            }
            let b = input[0];
            input = &input[1..];
            match self.state {
                SIZE => match b {
                    b'0'..=b'9' => self.size = self.size * 16 + (b - b'0') as usize,
                    b'a'..=b'f' => self.size = self.size * 16 + (b - b'a' + 10) as usize,
                    b'A'..=b'F' => self.size = self.size * 16 + (b - b'A' + 10) as usize,
                    b'\r' => self.state = SIZE_LF,
                    b'\n' => self.after_size(),
                    _ => self.state = EXT,
                },
                EXT => {
                    if b == b'\n' {
                        self.after_size();
                    }
                }
                SIZE_LF => self.after_size(),
                DATA_CR => self.state = if b == b'\r' { DATA_LF } else { SIZE },
                DATA_LF => self.state = SIZE,
                _ => return,
            }
        }
    }

    fn after_size(&mut self) {
        self.state = if self.size == 0 { DONE } else { DATA };
    }

    fn done(&self) -> bool {
        self.state == DONE
    }
}

/// One SSE stream; Ok(true): dropped on purpose at `drop_at`, resume.
async fn sse(
    conn: usize,
    key: &str,
    cfg: &ClientConfig,
    sh: &Shared,
    pos: &mut Position,
    drop_at: Option<tokio::time::Instant>,
) -> Result<bool, Failure> {
    let path = match cfg.system {
        System::Pushgate | System::Floor => {
            let mut path = format!("/sse?topic={}&key={}&snapshot=false", cfg.topic, key);
            if let Some(filter) = cfg.filter(conn) {
                let text = filter.to_string();
                let encoded: String = form_urlencoded(&text);
                path.push_str(&format!("&filter={encoded}"));
            }
            if let Some(rate) = cfg.max_rate {
                path.push_str(&format!("&max_rate={rate}"));
            }
            if let Some(cursor) = &pos.cursor {
                path.push_str(&format!("&cursor={}", form_urlencoded(cursor)));
            }
            path
        }
        System::Nchan => format!("/sub/{key}"),
        System::Pushpin => format!("/stream/{key}"),
        System::Centrifugo => crate::centrifugo::path("uni_sse", key, &pos.stream),
    };
    let mut stream = connect(cfg, conn).await.map_err(|_| Failure::Connect)?;
    let _open = OpenGuard::new(sh);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        cfg.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| Failure::Connect)?;
    let mut read = [0u8; 4096];
    // Response head.
    let mut head: Vec<u8> = Vec::new();
    let header_end = loop {
        let n = tokio::select! {
            _ = sh.stop.cancelled() => return Ok(false),
            r = tokio::time::timeout(cfg.handshake_timeout, stream.read(&mut read)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Failure::Connect),
                Ok(Ok(n)) => n,
            },
        };
        head.extend_from_slice(&read[..n]);
        if let Some(at) = memmem::find(&head, b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(Failure::Status);
        }
    };
    let status_ok = head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200");
    if !status_ok {
        if crate::publish::first_few() {
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            eprintln!("subscribe {path}: {}", String::from_utf8_lossy(line).trim());
        }
        return Err(Failure::Status);
    }
    let head_lower = head[..header_end].to_ascii_lowercase();
    let mut chunked = memmem::find(&head_lower, b"transfer-encoding: chunked")
        .is_some()
        .then(Chunked::default);
    if cfg.system == System::Nchan {
        mark_ready(conn, sh);
    }
    let mut body: Vec<u8> = Vec::new();
    let mut first = head[header_end..].to_vec();
    drop(head);
    loop {
        let input: &[u8] = if !first.is_empty() {
            &first
        } else {
            let n = tokio::select! {
                _ = sh.stop.cancelled() => return Ok(false),
                _ = until(drop_at) => return Ok(true),
                r = stream.read(&mut read) => match r {
                    Ok(0) | Err(_) => return Err(Failure::Stream),
                    Ok(n) => n,
                },
            };
            &read[..n]
        };
        match &mut chunked {
            Some(dec) => {
                dec.feed(input, &mut body);
                if dec.done() {
                    return Err(Failure::Stream);
                }
            }
            None => body.extend_from_slice(input),
        }
        first.clear();
        first.shrink_to_fit();
        // Complete lines only.
        let mut consumed = 0;
        while let Some(nl) = memchr::memchr(b'\n', &body[consumed..]) {
            let line = &body[consumed..consumed + nl];
            if cfg.system == System::Centrifugo {
                if let Some(push) = line.strip_prefix(b"data:") {
                    let push = push.strip_prefix(b" ").unwrap_or(push);
                    if !crate::centrifugo::handle(push, conn, key, pos, sh) {
                        return Err(Failure::Status);
                    }
                }
            } else if line.starts_with(b"data:") {
                if let Some(ts) = find_ts(line) {
                    deliver(conn, ts, find_seq(line), &mut pos.seen, sh);
                } else if !sh.ready[conn].load(Ordering::Relaxed)
                    && memmem::find(line, b"subscribed").is_some()
                {
                    if memmem::find(line, b"\"recovered\":false").is_some() {
                        bump(&sh.counters.not_recovered, 1);
                    }
                    mark_ready(conn, sh);
                } else if pos.seen.is_some()
                    && memmem::find(line, b"\"subscribed\"").is_some()
                    && memmem::find(line, b"\"recovered\":false").is_some()
                {
                    bump(&sh.counters.not_recovered, 1);
                }
                if pos.seen.is_some() && pos.cursor.is_none() {
                    pos.cursor = find_cursor(line);
                }
            } else if let Some(id) = line.strip_prefix(b"id:") {
                if pos.seen.is_some() {
                    let id = String::from_utf8_lossy(id).trim().to_owned();
                    if !id.is_empty() {
                        pos.cursor = Some(id);
                    }
                }
            } else if line.starts_with(b"event: subscribed") {
                mark_ready(conn, sh);
            }
            consumed += nl + 1;
        }
        body.drain(..consumed);
        if body.capacity() > 64 * 1024 && body.len() < 1024 {
            body.shrink_to(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decodes_split_input() {
        let wire = b"5\r\nhello\r\n7;x=y\r\n world!\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            d.feed(&wire[..split], &mut out);
            d.feed(&wire[split..], &mut out);
            assert_eq!(out, b"hello world!", "split at {split}");
            assert!(d.done());
        }
    }

    #[test]
    fn finds_timestamp() {
        assert_eq!(
            find_ts(br#"data: {"timestamp":5,"data":{"ts":1234,"seq":1}}"#),
            Some(1234)
        );
        assert_eq!(find_ts(br#"{"timestamp":5}"#), None);
    }
}
