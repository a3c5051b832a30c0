//! `delta-bytes`: bytes on the wire with and without `delta: "json-patch"`, side by side.
//!
//! Four subscribers watch the same records at the same time: WebSocket and SSE,
//! each once with whole values and once with deltas. Two workloads: a realistic
//! CDC row (20 fields, 1-2 changing per update) published here, and optionally
//! the demo ticker (a gateway started with `[demo] enabled = true`). Every
//! subscriber rebuilds each key's value (the delta ones by applying the patches
//! with the `json-patch` crate, which shares no code with the gateway) and the
//! run fails unless the rebuilt values equal the whole ones. WebSocket bytes are
//! frame payloads plus their headers (server frames are unmasked: 2 bytes under
//! 126, 4 under 65,536); SSE bytes are everything read from the socket after the
//! response head (chunked framing included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::Chunked;

#[derive(clap::Parser, Clone)]
pub struct DeltaArgs {
    /// The gateway (its topic must exist and accept anonymous publish and subscribe).
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// Topic for the CDC rows.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// CDC updates to publish (after one insert per key).
    #[arg(long, default_value_t = 5000)]
    updates: usize,
    /// Distinct rows (keys).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Updates per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Also measure the demo ticker on this topic (the gateway's demo must be on).
    #[arg(long)]
    demo_topic: Option<String>,
    /// Seconds to watch the demo ticker.
    #[arg(long, default_value_t = 20)]
    demo_secs: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    records: AtomicU64,
    patches: AtomicU64,
    /// JSON text of the records' `data` or `patch` members alone.
    value_bytes: AtomicU64,
    /// Each key's value, rebuilt from whole data and patches.
    values: Mutex<HashMap<String, Value>>,
    errors: Mutex<Vec<String>>,
    subscribed: AtomicU64,
}

impl Seen {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().expect("errors");
        if errors.len() < 5 {
            errors.push(e);
        }
    }

    /// Applies one record message; bytes are counted by the caller.
    fn record(&self, msg: &Value) {
        let Some(key) = msg.get("key").and_then(Value::as_str) else {
            return;
        };
        self.records.fetch_add(1, Ordering::Relaxed);
        let mut values = self.values.lock().expect("values");
        if let Some(v) = msg.get("patch").or_else(|| msg.get("data")) {
            self.value_bytes
                .fetch_add(v.to_string().len() as u64, Ordering::Relaxed);
        }
        if let Some(patch) = msg.get("patch") {
            self.patches.fetch_add(1, Ordering::Relaxed);
            let Some(base) = values.get_mut(key) else {
                drop(values);
                self.error(format!("patch for {key} without a base value"));
                return;
            };
            match serde_json::from_value::<json_patch::Patch>(patch.clone()) {
                Ok(p) => {
                    if let Err(e) = json_patch::patch(base, &p) {
                        drop(values);
                        self.error(format!("patch for {key} does not apply: {e}"));
                    }
                }
                Err(e) => {
                    drop(values);
                    self.error(format!("patch for {key} is not RFC 6902: {e}"));
                }
            }
        } else if let Some(data) = msg.get("data") {
            values.insert(key.to_owned(), data.clone());
        }
    }
}

#[derive(Debug, Serialize)]
struct Side {
    transport: &'static str,
    records_full: u64,
    records_delta: u64,
    patches: u64,
    bytes_full: u64,
    bytes_delta: u64,
    bytes_per_record_full: f64,
    bytes_per_record_delta: f64,
    /// Bytes per record, whole over delta.
    ratio: f64,
    /// The `data` (whole) or `patch` (delta) members alone, whole over delta.
    value_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Workload {
    name: String,
    sides: Vec<Side>,
}

pub async fn main(args: DeltaArgs) -> Result<()> {
    let host = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&host)?
        .next()
        .context("resolve --url")?;
    let mut out = Vec::new();
    out.push(cdc(&args, &host, addr).await?);
    if let Some(topic) = &args.demo_topic {
        out.push(demo(&args, topic, &host, addr).await?);
    }
    for w in &out {
        println!("{}", w.name);
        for s in &w.sides {
            println!(
                "  {:<3} whole {:>10} B / {:>6} records = {:>6.1} B   delta {:>10} B / {:>6} records ({} patches) = {:>6.1} B   ratio {:.2}x (data vs patch members alone {:.2}x)",
                s.transport,
                s.bytes_full,
                s.records_full,
                s.bytes_per_record_full,
                s.bytes_delta,
                s.records_delta,
                s.patches,
                s.bytes_per_record_delta,
                s.ratio,
                s.value_ratio
            );
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// The four subscribers: (transport, delta?) -> what it saw.
struct Watchers {
    stop: CancellationToken,
    seen: Vec<(&'static str, bool, Arc<Seen>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn watch(
    host: &str,
    addr: SocketAddr,
    topic: &str,
    prefix: Option<&str>,
) -> Result<Watchers> {
    let stop = CancellationToken::new();
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for transport in ["ws", "sse"] {
        for delta in [false, true] {
            let s = Arc::new(Seen::default());
            seen.push((transport, delta, Arc::clone(&s)));
            let (host, topic, prefix, stop) = (
                host.to_owned(),
                topic.to_owned(),
                prefix.map(str::to_owned),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let r = if transport == "ws" {
                    ws(&host, &topic, prefix.as_deref(), delta, &s, &stop).await
                } else {
                    sse(&host, addr, &topic, prefix.as_deref(), delta, &s, &stop).await
                };
                if let Err(e) = r {
                    s.error(format!("{transport}: {e:#}"));
                }
            }));
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    while seen
        .iter()
        .any(|(_, _, s)| s.subscribed.load(Ordering::Relaxed) == 0)
    {
        if Instant::now() > end {
            bail!("subscribers not confirmed within 10 s: {:?}", errors(&seen));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Watchers { stop, seen, tasks })
}

fn errors(seen: &[(&'static str, bool, Arc<Seen>)]) -> Vec<String> {
    seen.iter()
        .flat_map(|(_, _, s)| s.errors.lock().expect("errors").clone())
        .collect()
}

impl Watchers {
    async fn finish(self, name: String) -> Result<Workload> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let errs = errors(&self.seen);
        if !errs.is_empty() {
            bail!("{name}: {errs:?}");
        }
        let mut sides = Vec::new();
        for transport in ["ws", "sse"] {
            let get = |delta: bool| {
                self.seen
                    .iter()
                    .find(|(t, d, _)| *t == transport && *d == delta)
                    .map(|(_, _, s)| Arc::clone(s))
                    .expect("all four watch")
            };
            let (full, delta) = (get(false), get(true));
            // The rebuilt values must be the whole ones, key for key.
            let a = full.values.lock().expect("values").clone();
            let b = delta.values.lock().expect("values").clone();
            let mut mismatched = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
            mismatched += b.keys().filter(|k| !a.contains_key(*k)).count();
            if mismatched > 0 {
                bail!("{name} over {transport}: {mismatched} keys differ between the whole and the patched values");
            }
            let rf = full.records.load(Ordering::Relaxed);
            let rd = delta.records.load(Ordering::Relaxed);
            let bf = full.bytes.load(Ordering::Relaxed);
            let bd = delta.bytes.load(Ordering::Relaxed);
            let per = |b: u64, r: u64| if r == 0 { 0.0 } else { b as f64 / r as f64 };
            sides.push(Side {
                transport,
                records_full: rf,
                records_delta: rd,
                patches: delta.patches.load(Ordering::Relaxed),
                bytes_full: bf,
                bytes_delta: bd,
                bytes_per_record_full: per(bf, rf),
                bytes_per_record_delta: per(bd, rd),
                ratio: per(bf, rf) / per(bd, rd).max(1e-9),
                value_ratio: per(full.value_bytes.load(Ordering::Relaxed), rf)
                    / per(delta.value_bytes.load(Ordering::Relaxed), rd).max(1e-9),
            });
        }
        Ok(Workload { name, sides })
    }

    /// Waits until every subscriber has at least `n` records (or `limit` passes).
    async fn wait_records(&self, n: u64, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            let least = self
                .seen
                .iter()
                .map(|(_, _, s)| s.records.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0);
            if least >= n {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("only {least} of {n} records arrived in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A realistic CDC row: an order with 20 columns.
fn row(id: usize, rng: &mut StdRng) -> Value {
    json!({
        "id": id,
        "customer_id": 10_000 + id * 7,
        "status": "open",
        "currency": "EUR",
        "amount_cents": rng.random_range(1_000..500_000),
        "tax_cents": rng.random_range(100..50_000),
        "discount_cents": 0,
        "items": rng.random_range(1..20),
        "warehouse": "FRA-2",
        "carrier": "DHL",
        "tracking_number": format!("JD{:016}", id * 7919),
        "shipping_name": "Ada Lovelace",
        "shipping_street": "12 Analytical Engine Way",
        "shipping_city": "London",
        "shipping_postcode": "NW1 2DB",
        "shipping_country": "GB",
        "payment_method": "card",
        "created_at": "2026-11-27T10:00:00.000Z",
        "updated_at": "2026-11-27T10:00:00.000Z",
        "version": 1,
    })
}

/// One update: 1 or 2 of the row's columns change (the shape: 20 fields,
/// 1-2 changing per update).
fn update(row: &mut Value, rng: &mut StdRng, seq: usize) {
    const FIELDS: [&str; 7] = [
        "status",
        "amount_cents",
        "tax_cents",
        "discount_cents",
        "items",
        "carrier",
        "updated_at",
    ];
    let first = rng.random_range(0..FIELDS.len());
    let second = (first + rng.random_range(1..FIELDS.len())) % FIELDS.len();
    let changed = if rng.random_bool(0.5) {
        &[first][..]
    } else {
        &[first, second][..]
    };
    for &i in changed {
        let field = FIELDS[i];
        row[field] = match field {
            "status" => json!(["open", "paid", "packed", "shipped"][seq % 4]),
            "carrier" => json!(["DHL", "UPS", "GLS"][seq % 3]),
            "updated_at" => json!(format!(
                "2026-11-27T10:{:02}:{:02}.{:03}Z",
                (seq / 60_000) % 60,
                (seq / 1000) % 60,
                seq % 1000
            )),
            _ => json!(seq * 7 % 500_000),
        };
    }
}

async fn cdc(args: &DeltaArgs, host: &str, addr: SocketAddr) -> Result<Workload> {
    let prefix = format!("order-{}-", std::process::id());
    let w = watch(host, addr, &args.topic, Some(&prefix)).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/topics/{}", args.url.trim_end_matches('/'), args.topic);
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows: Vec<Value> = (0..args.keys).map(|i| row(i, &mut rng)).collect();
    let total = args.keys + args.updates;
    let batch = 50usize;
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < total {
        let mut records = Vec::with_capacity(batch);
        for _ in 0..batch.min(total - sent) {
            let (k, value) = if sent < args.keys {
                (sent, rows[sent].clone())
            } else {
                let k = rng.random_range(0..args.keys);
                update(&mut rows[k], &mut rng, sent);
                (k, rows[k].clone())
            };
            records.push(json!({"key": format!("{prefix}{k}"), "data": value}));
            sent += 1;
        }
        let body = json!({ "records": records }).to_string();
        let res = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("publish")?;
        if !res.status().is_success() {
            bail!("publish: {}", res.status());
        }
        // Pace to --rate.
        let due = start + Duration::from_secs_f64(sent as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
    }
    w.wait_records(total as u64, Duration::from_secs(30))
        .await?;
    // The last published row of each key must be what every subscriber holds.
    for (transport, delta, s) in &w.seen {
        let values = s.values.lock().expect("values");
        for (k, want) in rows.iter().enumerate() {
            if values.get(&format!("{prefix}{k}")) != Some(want) {
                bail!("{transport} (delta {delta}): key {k} does not hold its last row");
            }
        }
    }
    w.finish(format!(
        "CDC row (20 fields, 1-2 changing per update): {} keys, {} updates",
        args.keys, args.updates
    ))
    .await
}

async fn demo(args: &DeltaArgs, topic: &str, host: &str, addr: SocketAddr) -> Result<Workload> {
    let w = watch(host, addr, topic, None).await?;
    tokio::time::sleep(Duration::from_secs(args.demo_secs)).await;
    // The four started together; give the slowest a moment to take the last records.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.finish(format!("demo ticker on `{topic}` for {} s", args.demo_secs))
        .await
}

fn subscribe_json(topic: &str, prefix: Option<&str>, delta: bool) -> Value {
    let mut sub = json!({"type": "subscribe", "id": 1, "topic": topic, "snapshot": false});
    if let Some(p) = prefix {
        sub["prefix"] = json!(p);
    }
    if delta {
        sub["delta"] = json!("json-patch");
    }
    sub
}

fn on_message(text: &str, seen: &Seen) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        seen.error(format!("not JSON: {text:.80}"));
        return;
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("record") => seen.record(&msg),
        Some("subscribed") => {
            seen.subscribed.store(1, Ordering::Relaxed);
        }
        Some("error") => seen.error(format!("error message: {text:.200}")),
        _ => {}
    }
}

async fn ws(
    host: &str,
    topic: &str,
    prefix: Option<&str>,
    delta: bool,
    seen: &Seen,
    stop: &CancellationToken,
) -> Result<()> {
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{host}/ws")),
    )
    .await
    .context("connect timed out")??;
    socket
        .send(Message::text(
            subscribe_json(topic, prefix, delta).to_string(),
        ))
        .await?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = socket.next() => m,
        };
        let Some(msg) = msg else { return Ok(()) };
        if let Message::Text(text) = msg? {
            let len = text.len() as u64;
            let header = if len < 126 {
                2
            } else if len < 65_536 {
                4
            } else {
                10
            };
            seen.bytes.fetch_add(len + header, Ordering::Relaxed);
            on_message(text.as_str(), seen);
        }
    }
}

async fn sse(
    host: &str,
    addr: SocketAddr,
    topic: &str,
    prefix: Option<&str>,
    delta: bool,
    seen: &Seen,
    stop: &CancellationToken,
) -> Result<()> {
    let mut path = format!("/sse?topic={topic}&snapshot=false");
    if let Some(p) = prefix {
        path.push_str(&format!("&prefix={p}"));
    }
    if delta {
        path.push_str("&delta=json-patch");
    }
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut body = Vec::new();
    let mut chunked = Chunked::default();
    let mut in_body = false;
    let mut events = Vec::new();
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = stream.read(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        let mut input = &buf[..n];
        if !in_body {
            head.extend_from_slice(input);
            let Some(at) = memmem::find(&head, b"\r\n\r\n") else {
                continue;
            };
            if !head.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "SSE answered {}",
                    String::from_utf8_lossy(&head[..head.len().min(200)])
                );
            }
            in_body = true;
            let rest = head.split_off(at + 4);
            seen.bytes.fetch_add(rest.len() as u64, Ordering::Relaxed);
            chunked.feed(&rest, &mut body);
            input = &[];
        }
        seen.bytes.fetch_add(input.len() as u64, Ordering::Relaxed);
        chunked.feed(input, &mut body);
        // Whole events end with a blank line.
        let mut start = 0;
        while let Some(end) = memmem::find(&body[start..], b"\n\n") {
            events.push(body[start..start + end].to_vec());
            start += end + 2;
        }
        body.drain(..start);
        for event in events.drain(..) {
            for line in event.split(|b| *b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data: ") {
                    on_message(&String::from_utf8_lossy(data), seen);
                }
            }
        }
    }
}
