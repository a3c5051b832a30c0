//! `view-bench` (issue 30 item 5): a large view streamed to WebSocket, SSE and gRPC subscribers while records are written, checked key by key.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Clone)]
pub struct ViewBenchArgs {
    /// The pushgate under test (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value = "view")]
    topic: String,
    /// The server's PID, for VmRSS.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Bytes of padding in each value (the JSON value is about 20 bytes more).
    #[arg(long, default_value_t = 180)]
    pad: usize,
    /// Records per second written during the snapshots.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 1)]
    ws: usize,
    #[arg(long, default_value_t = 1)]
    sse: usize,
    /// gRPC subscribers (`pushgate.v1.Gateway/Subscribe` over h2c).
    #[arg(long, default_value_t = 0)]
    grpc: usize,
    /// Skip writing the initial keys: the topic already holds them at version 0,
    /// with no writes since (a run's own writes make the next run's check wrong).
    #[arg(long)]
    no_seed: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    max_secs: u64,
}

const NONE: u32 = u32::MAX;

/// What one subscriber received.
struct Sub {
    name: String,
    state: Vec<u32>,
    snap_seen: Vec<bool>,
    snapshot: u64,
    dup_snapshot: u64,
    seam_errors: u64,
    changes: u64,
    to_live: Option<Duration>,
    snap_secs: f64,
    lives: Arc<AtomicUsize>,
    since_yield: u32,
}

/// The fields of a server message the check reads; the rest (the value's
/// padding among them) is skipped, not built into a tree: one client then
/// keeps up with more than the server sends it.
#[derive(serde::Deserialize)]
struct Rec<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    /// `true` on snapshot records; a count on `subscribed`.
    #[serde(default)]
    snapshot: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<RecData>,
}

#[derive(serde::Deserialize)]
struct RecData {
    #[serde(default)]
    v: Option<u64>,
}

impl Sub {
    fn new(name: String, keys: usize, lives: Arc<AtomicUsize>) -> Self {
        Self {
            name,
            state: vec![NONE; keys],
            snap_seen: vec![false; keys],
            snapshot: 0,
            dup_snapshot: 0,
            seam_errors: 0,
            changes: 0,
            to_live: None,
            snap_secs: 0.0,
            lives,
            since_yield: 0,
        }
    }
    fn apply(&mut self, r: &Rec<'_>) {
        let v = r.data.as_ref().and_then(|d| d.v).unwrap_or(0);
        let snapshot = r.snapshot == Some(serde_json::Value::Bool(true));
        self.apply_one(r.key.as_deref(), v, snapshot);
    }

    fn apply_one(&mut self, key: Option<&str>, v: u64, snapshot: bool) {
        let Some(i) = key.and_then(|k| k.get(1..)?.parse::<usize>().ok()) else {
            return;
        };
        let v = v as u32;
        if i >= self.state.len() {
            return;
        }
        if snapshot {
            self.snapshot += 1;
            if self.snap_seen[i] || self.state[i] != NONE {
                self.dup_snapshot += 1;
            }
            self.snap_seen[i] = true;
        } else {
            self.changes += 1;
            // Exact seam: each key's changes follow its snapshot value one by one.
            if self.state[i] != NONE && v != self.state[i] + 1 {
                self.seam_errors += 1;
            }
        }
        self.state[i] = v;
    }
}

impl Sub {
    /// Lets the other subscribers of this process run every 256 records.
    /// tokio's cooperative budget counts socket reads, and one read of the SSE
    /// reader's 1 MiB buffer holds thousands of records: without this, a few
    /// subscribers kept both workers for seconds while the others' sockets
    /// filled, and the server closed those for their write timeout.
    async fn fair_turn(&mut self) {
        self.since_yield += 1;
        if self.since_yield >= 256 {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn value(v: u32, pad: usize) -> serde_json::Value {
    serde_json::json!({"v": v, "p": "x".repeat(pad)})
}

async fn post(http: &reqwest::Client, args: &ViewBenchArgs, batch: &[(usize, u32)]) -> Result<()> {
    let body = serde_json::json!({"records": batch.iter().map(|(i, v)| serde_json::json!({"key": format!("k{i:07}"), "data": value(*v, args.pad)})).collect::<Vec<_>>()});
    let r = http
        .post(format!("http://{}/topics/{}", args.addr, args.topic))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("publish: {}", r.status());
    }
    Ok(())
}

async fn ws_sub(
    args: ViewBenchArgs,
    mut sub: Sub,
    done: Arc<AtomicBool>,
    latest: Arc<Vec<AtomicU32>>,
) -> Result<Sub> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", args.addr)).await?;
    let started = Instant::now();
    let mut subscribed_at = started;
    ws.send(Message::Text(
        serde_json::json!({"type": "subscribe", "topic": args.topic})
            .to_string()
            .into(),
    ))
    .await?;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(m)) => m?,
            Ok(None) => bail!("{}: the server closed the connection", sub.name),
            Err(_) => {
                if done.load(Ordering::Relaxed) && caught_up(&sub, &latest) {
                    return Ok(sub);
                }
                continue;
            }
        };
        let Message::Text(t) = msg else {
            if let Message::Close(c) = msg {
                bail!("{}: closed {c:?}", sub.name);
            }
            continue;
        };
        let v: Rec<'_> = serde_json::from_str(&t)?;
        match v.kind.as_deref() {
            Some("record") => {
                sub.apply(&v);
                sub.fair_turn().await;
            }
            Some("subscribed") => subscribed_at = Instant::now(),
            Some("live") => {
                sub.to_live = Some(started.elapsed());
                sub.snap_secs = subscribed_at.elapsed().as_secs_f64();
                sub.lives.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

async fn sse_sub(
    args: ViewBenchArgs,
    mut sub: Sub,
    done: Arc<AtomicBool>,
    latest: Arc<Vec<AtomicU32>>,
) -> Result<Sub> {
    // HTTP/1.0: the body is delimited by the close, no chunked framing to undo.
    let mut s = tokio::net::TcpStream::connect(&args.addr).await?;
    let started = Instant::now();
    let mut subscribed_at = started;
    s.write_all(
        format!(
            "GET /sse?topic={} HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
            args.topic
        )
        .as_bytes(),
    )
    .await?;
    let mut lines = BufReader::with_capacity(1 << 20, s).lines();
    let mut event = String::new();
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await {
            Ok(l) => l?.with_context(|| format!("{}: the stream ended", sub.name))?,
            Err(_) => {
                if done.load(Ordering::Relaxed) && caught_up(&sub, &latest) {
                    return Ok(sub);
                }
                continue;
            }
        };
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            match event.as_str() {
                "subscribed" => subscribed_at = Instant::now(),
                "live" => {
                    sub.to_live = Some(started.elapsed());
                    sub.snap_secs = subscribed_at.elapsed().as_secs_f64();
                    sub.lives.fetch_add(1, Ordering::Relaxed);
                }
                "record" | "" => {
                    let v: Rec<'_> = serde_json::from_str(d.trim())?;
                    sub.apply(&v);
                    sub.fair_turn().await;
                }
                _ => {}
            }
        } else if line.is_empty() {
            event.clear();
        }
    }
}

/// One gRPC subscriber: `Subscribe { topic }` (the snapshot is on by
/// default), its `Event`s decoded here with no code shared with the server.
async fn grpc_sub(
    args: ViewBenchArgs,
    mut sub: Sub,
    done: Arc<AtomicBool>,
    latest: Arc<Vec<AtomicU32>>,
) -> Result<Sub> {
    use bytes::{Bytes, BytesMut};
    let stream = tokio::net::TcpStream::connect(&args.addr).await?;
    let started = Instant::now();
    let mut subscribed_at = started;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(stream)
        .await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let req = crate::grpc::subscribe_call(&args.addr)?;
    let (response, mut send) = client.send_request(req, false)?;
    let mut msg = Vec::new();
    crate::fleet::field(&mut msg, 0x0a, args.topic.as_bytes());
    send.send_data(crate::grpc::framed(&msg), true)?;
    let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
    if response.status() != 200 {
        bail!("{}: HTTP {}", sub.name, response.status());
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let result = loop {
        let data = match tokio::time::timeout(Duration::from_secs(2), body.data()).await {
            Ok(Some(d)) => d?,
            Ok(None) => break Err(anyhow::anyhow!("{}: the stream ended", sub.name)),
            Err(_) => {
                if done.load(Ordering::Relaxed) && caught_up(&sub, &latest) {
                    break Ok(());
                }
                continue;
            }
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
        while let Some(event) = crate::grpc::next_message(&mut buf) {
            for (field, _, inner) in crate::fleet::pb_fields(&event) {
                match field {
                    1 => subscribed_at = Instant::now(),
                    2 => {
                        let (mut key, mut v, mut snapshot) = (None, 0, false);
                        for (f, n, b) in crate::fleet::pb_fields(inner) {
                            match f {
                                2 => key = std::str::from_utf8(b).ok(),
                                7 => v = serde_json::from_slice::<RecData>(b)?.v.unwrap_or(0),
                                8 => snapshot = n != 0,
                                _ => {}
                            }
                        }
                        sub.apply_one(key, v, snapshot);
                        sub.fair_turn().await;
                    }
                    3 => {
                        sub.to_live = Some(started.elapsed());
                        sub.snap_secs = subscribed_at.elapsed().as_secs_f64();
                        sub.lives.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    };
    driver.abort();
    result.map(|()| sub)
}

fn caught_up(sub: &Sub, latest: &[AtomicU32]) -> bool {
    sub.to_live.is_some()
        && latest
            .iter()
            .zip(&sub.state)
            .all(|(l, s)| l.load(Ordering::Relaxed) == *s)
}

pub async fn main(args: ViewBenchArgs) -> Result<bool> {
    let http = reqwest::Client::new();
    let latest: Arc<Vec<AtomicU32>> = Arc::new((0..args.keys).map(|_| AtomicU32::new(0)).collect());
    let rss_before_seed = rss_kib(args.pid);
    if !args.no_seed {
        let t = Instant::now();
        let all: Vec<(usize, u32)> = (0..args.keys).map(|i| (i, 0)).collect();
        for chunk in all.chunks(2000) {
            post(&http, &args, chunk).await?;
        }
        eprintln!(
            "seeded {} keys in {:.1} s",
            args.keys,
            t.elapsed().as_secs_f64()
        );
    }
    let rss_base = rss_kib(args.pid);
    eprintln!(
        "RSS: {} MiB before seeding, {} MiB with the view",
        rss_before_seed / 1024,
        rss_base / 1024
    );
    let done = Arc::new(AtomicBool::new(false));
    let lives = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..args.ws {
        tasks.push(tokio::spawn(ws_sub(
            args.clone(),
            Sub::new(format!("ws{n}"), args.keys, lives.clone()),
            done.clone(),
            latest.clone(),
        )));
    }
    for n in 0..args.sse {
        tasks.push(tokio::spawn(sse_sub(
            args.clone(),
            Sub::new(format!("sse{n}"), args.keys, lives.clone()),
            done.clone(),
            latest.clone(),
        )));
    }
    for n in 0..args.grpc {
        tasks.push(tokio::spawn(grpc_sub(
            args.clone(),
            Sub::new(format!("grpc{n}"), args.keys, lives.clone()),
            done.clone(),
            latest.clone(),
        )));
    }
    // The writer: `rate` records a second, 10 batches a second, each key's version one more.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (args, http, latest, done) = (args.clone(), http.clone(), latest.clone(), stop.clone());
        tokio::spawn(async move {
            let mut x: u64 = 88172645463325252;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut written = 0u64;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut batch = Vec::new();
                for _ in 0..args.rate / 10 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % args.keys as u64) as usize;
                    if batch.iter().any(|(j, _)| *j == i) {
                        continue;
                    }
                    let v = latest[i].load(Ordering::Relaxed) + 1;
                    batch.push((i, v));
                }
                post(&http, &args, &batch).await?;
                for (i, v) in &batch {
                    latest[*i].store(*v, Ordering::Relaxed);
                }
                written += batch.len() as u64;
            }
            anyhow::Ok(written)
        })
    };
    let t = Instant::now();
    let mut rss_max = rss_base;
    let mut live_at = None;
    while live_at.is_none() || t.elapsed() < live_at.unwrap() + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_max = rss_max.max(rss_kib(args.pid));
        // A subscriber ended (they end only when told, or on an error), or
        // the writer failed: report why now, not after --max-secs.
        if tasks.iter().any(|t| t.is_finished()) || writer.is_finished() {
            break;
        }
        if t.elapsed() > Duration::from_secs(args.max_secs) {
            bail!("no live within --max-secs");
        }
        if live_at.is_none() && lives.load(Ordering::Relaxed) == args.ws + args.sse + args.grpc {
            live_at = Some(t.elapsed());
        }
    }
    // Subscribers check against `latest` only once the last write is in it.
    stop.store(true, Ordering::Relaxed);
    let written = writer.await??;
    done.store(true, Ordering::Relaxed);
    let mut ok = true;
    println!("| subscriber | snapshot records | time to live (s) | snapshot records/s | changes | missing | duplicated | seam errors | final = latest |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for task in tasks {
        let sub = tokio::time::timeout(Duration::from_secs(args.max_secs), task).await??;
        let sub = sub?;
        let missing = sub.state.iter().filter(|s| **s == NONE).count();
        let stale = latest
            .iter()
            .zip(&sub.state)
            .filter(|(l, s)| l.load(Ordering::Relaxed) != **s)
            .count();
        let rate = sub.snapshot as f64 / sub.snap_secs.max(1e-9);
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} |",
            sub.name,
            sub.snapshot,
            sub.to_live.unwrap_or_default().as_secs_f64(),
            rate,
            sub.changes,
            missing,
            sub.dup_snapshot,
            sub.seam_errors,
            stale == 0
        );
        ok &= missing == 0 && sub.dup_snapshot == 0 && sub.seam_errors == 0 && stale == 0;
    }
    println!(
        "\nwritten during the run: {written} records; server RSS: {} MiB with the view, peak {} MiB, growth {} MiB",
        rss_base / 1024,
        rss_max / 1024,
        (rss_max.saturating_sub(rss_base)) / 1024
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn protobuf_fields_of_a_record_are_walked_with_varints_and_lengths() {
        use crate::fleet::pb_fields;
        // What grpc_sub reads of a Record { key: "k1" (2), data_json: {"v":7} (7), snapshot: true (8), offset: 300 (4) }
        let mut record = vec![0x12, 2, b'k', b'1', 0x3a, 7];
        record.extend_from_slice(br#"{"v":7}"#);
        record.extend_from_slice(&[0x40, 1, 0x20, 0xac, 0x02]);
        let fields = pb_fields(&record);
        assert_eq!(fields.len(), 4);
        assert_eq!((fields[0].0, fields[0].2), (2, &b"k1"[..]));
        assert_eq!((fields[1].0, fields[1].2), (7, &br#"{"v":7}"#[..]));
        assert_eq!((fields[2].0, fields[2].1), (8, 1));
        assert_eq!((fields[3].0, fields[3].1), (4, 300));
        // Cut inside the second field's length: only the whole first one is read.
        assert_eq!(pb_fields(&record[..5]).len(), 1);
        assert_eq!(pb_fields(&record[..8]).len(), 1);
    }
}
