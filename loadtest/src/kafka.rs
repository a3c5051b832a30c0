//! `kafka-latency`: pushgate's added latency over a bare librdkafka consumer, measured side by side.
//!
//! One librdkafka producer writes `{"ts":<µs>,"seq":n}` records at a fixed
//! rate over many keys. In the same run and from the same broker, a bare
//! librdkafka consumer (assigned every partition, pushgate's own fetch
//! settings) and N WebSocket plus N SSE clients of pushgate (each subscribed
//! to one key) record receive time minus `ts`. The bare consumer is the floor
//! this broker allows; pushgate's figure minus the floor is what it adds.
//!
//! `--system centrifugo` measures Centrifugo v6's own Kafka consumer the same
//! way: every record carries pushgate's key as its Kafka key and the header
//! `centrifugo-channels: <key>`, which Centrifugo's `publication_data_mode`
//! reads to publish the value into channel `<key>` (internal/consuming/kafka.go),
//! so one topic serves both. `--server-pid` adds the server's CPU per delivery;
//! the bare consumer's own thread CPU per record is reported beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig as KafkaClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientConfig, Shared};
use crate::keys::key_name;
use crate::stats::{new_histogram, now_us, percentiles, Counters, Percentiles, Stats};
use crate::{System, Transport};

#[derive(Parser, Clone)]
pub struct KafkaLatencyArgs {
    /// Bootstrap servers of the broker pushgate reads.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic (it must exist, and pushgate must serve it).
    #[arg(long, default_value = "lat")]
    topic: String,
    /// pushgate's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Records per second produced.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Keys the producer spreads records over; client i subscribes to key i % keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    #[arg(long, default_value_t = 1000)]
    ws_clients: usize,
    #[arg(long, default_value_t = 1000)]
    sse_clients: usize,
    /// Seconds produced before measuring (connections settle, caches warm).
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// The bare consumer's fetch.wait.max.ms (pushgate's kafka.fetch_wait_max_ms).
    #[arg(long, default_value_t = 10)]
    fetch_wait_max_ms: u32,
    /// 127.0.0.x source addresses to spread client connections over.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Whose clients subscribe: pushgate (`/ws`, `/sse`) or Centrifugo (unidirectional WS and SSE).
    #[arg(long, value_enum, default_value = "pushgate")]
    system: System,
    /// Server process ids (descendants included) for CPU per delivery.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct KafkaLatencyResult {
    /// Whose clients the `pushgate_*` fields measured (the names stay for old results).
    pub system: System,
    /// Server CPU over the measured window per delivery (WS + SSE), microseconds.
    pub server_user_us_per_delivery: f64,
    pub server_sys_us_per_delivery: f64,
    /// The bare consumer's thread CPU per record, microseconds.
    pub bare_consumer_us_per_record: f64,
    pub deliveries: u64,
    pub rate: u64,
    pub secs: u64,
    pub produced: u64,
    pub bare_consumer: Percentiles,
    pub pushgate_ws: Percentiles,
    pub pushgate_sse: Percentiles,
    pub ws_clients_ready: usize,
    pub sse_clients_ready: usize,
    /// pushgate minus the bare consumer, per percentile (ms).
    pub added_ws_ms: Added,
    pub added_sse_ms: Added,
}

#[derive(Debug, Serialize)]
pub struct Added {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

fn added(pushgate: &Percentiles, floor: &Percentiles) -> Added {
    Added {
        p50: pushgate.p50_ms - floor.p50_ms,
        p99: pushgate.p99_ms - floor.p99_ms,
        p999: pushgate.p999_ms - floor.p999_ms,
    }
}

/// Finds `"ts":<digits>` in a Kafka value.
fn ts_of(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let at = text.find("\"ts\":")? + 5;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The bare consumer: pushgate's consumer settings, every partition from the end.
/// CPU time of the calling thread, microseconds.
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Returns the consumer thread; it yields (thread CPU µs, records) over the measured window.
fn bare_consumer(
    args: &KafkaLatencyArgs,
    measuring: Arc<AtomicBool>,
    hist: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<(u64, u64)>> {
    let consumer: BaseConsumer = KafkaClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("latency-floor-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", args.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        .set("fetch.queue.backoff.ms", "5")
        .set("socket.nagle.disable", "true")
        .set("enable.partition.eof", "false")
        .create()
        .context("create the bare consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(5))
        .context("topic metadata")?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic {} has no partitions (create it first)", args.topic);
    }
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&args.topic, p as i32, Offset::End)?;
    }
    consumer.assign(&list)?;
    Ok(std::thread::spawn(move || {
        let (mut cpu_from, mut cpu_us, mut records, mut was) = (0, 0, 0u64, false);
        while !stop.load(Ordering::Relaxed) {
            let now = measuring.load(Ordering::Relaxed);
            if now != was {
                if now {
                    cpu_from = thread_cpu_us();
                } else {
                    cpu_us = thread_cpu_us().saturating_sub(cpu_from);
                }
                was = now;
            }
            if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                let received = now_us();
                if let Some(ts) = msg.payload().and_then(ts_of) {
                    if now {
                        records += 1;
                        let mut h = hist.lock().expect("histogram");
                        h.saturating_record(received.saturating_sub(ts).max(1));
                    }
                }
            }
        }
        (cpu_us, records)
    }))
}

/// The paced producer: one record every 1/rate s, keys round robin, `ts` stamped at send.
fn producer(
    args: &KafkaLatencyArgs,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<u64>> {
    let producer: BaseProducer = KafkaClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "0")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("socket.nagle.disable", "true")
        .create()
        .context("create the producer")?;
    let (topic, rate, keys) = (args.topic.clone(), args.rate.max(1), args.keys.max(1));
    Ok(std::thread::spawn(move || {
        let every = Duration::from_nanos(1_000_000_000 / rate);
        let start = Instant::now();
        let mut seq: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let due = start + every * seq as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let key = key_name(seq as usize % keys);
            let value = format!("{{\"ts\":{},\"seq\":{seq}}}", now_us());
            // Centrifugo's publication_data_mode takes its channels from this header.
            let headers = OwnedHeaders::new().insert(Header {
                key: "centrifugo-channels",
                value: Some(key.as_str()),
            });
            let _ = producer.send(
                BaseRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
            );
            producer.poll(Duration::ZERO);
            seq += 1;
        }
        let _ = producer.flush(Duration::from_secs(5));
        seq
    }))
}

fn clients(
    args: &KafkaLatencyArgs,
    transport: Transport,
    count: usize,
) -> Result<(Arc<ClientConfig>, Arc<Shared>)> {
    let host = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let server = std::net::ToSocketAddrs::to_socket_addrs(&host)?
        .next()
        .context("resolve --url")?;
    let cfg = Arc::new(ClientConfig {
        system: args.system,
        transport,
        server,
        host,
        topic: args.topic.clone(),
        sources: args.sources,
        handshake_timeout: Duration::from_secs(30),
        filters: 0,
        max_rate: None,
        resume_every: None,
        resume_away: Duration::ZERO,
    });
    let shared = Arc::new(Shared {
        stats: Stats::new(),
        counters: Counters::default(),
        stop: CancellationToken::new(),
        ready: (0..count).map(|_| AtomicBool::new(false)).collect(),
    });
    Ok((cfg, shared))
}

pub async fn run(args: KafkaLatencyArgs) -> Result<KafkaLatencyResult> {
    crate::procstat::raise_nofile();
    let (ws_cfg, ws) = clients(&args, Transport::Ws, args.ws_clients)?;
    let (sse_cfg, sse) = clients(&args, Transport::Sse, args.sse_clients)?;
    for (cfg, shared, count) in [
        (&ws_cfg, &ws, args.ws_clients),
        (&sse_cfg, &sse, args.sse_clients),
    ] {
        for conn in 0..count {
            let key = key_name(conn % args.keys.max(1));
            tokio::spawn(client::subscriber(
                conn,
                key,
                Arc::clone(cfg),
                Arc::clone(shared),
            ));
            if conn % 100 == 99 {
                // Pace the connection burst so the accept queue never overflows.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (w, s) = (
            ws.counters.ready.load(Ordering::Relaxed),
            sse.counters.ready.load(Ordering::Relaxed),
        );
        if w >= args.ws_clients && s >= args.sse_clients {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("only {w} WS and {s} SSE clients subscribed after 60 s; measuring those");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let floor = Arc::new(Mutex::new(new_histogram()));
    let consumer = bare_consumer(&args, measuring.clone(), floor.clone(), stop.clone())?;
    let producing = producer(&args, stop.clone())?;
    eprintln!("warming up {} s", args.warmup_secs);
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    let _ = ws.stats.take();
    let _ = sse.stats.take();
    let cpu_before = crate::procstat::sample(&args.server_pid);
    measuring.store(true, Ordering::Relaxed);
    eprintln!("measuring {} s", args.secs);
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let (ws_hist, ws_n) = ws.stats.take();
    let (sse_hist, sse_n) = sse.stats.take();
    let cpu_after = crate::procstat::sample(&args.server_pid);
    // Let the consumer thread see the end of the window before it stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ws_ready = ws.counters.ready.load(Ordering::Relaxed);
    let sse_ready = sse.counters.ready.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    ws.stop.cancel();
    sse.stop.cancel();
    let produced = tokio::task::spawn_blocking(move || producing.join())
        .await?
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))?;
    let (bare_cpu_us, bare_records) = tokio::task::spawn_blocking(move || consumer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
    let floor = percentiles(&floor.lock().expect("histogram"));
    let (ws_p, sse_p) = (percentiles(&ws_hist), percentiles(&sse_hist));
    let deliveries = ws_n + sse_n;
    let per = |secs: f64| secs * 1e6 / deliveries.max(1) as f64;
    Ok(KafkaLatencyResult {
        system: args.system,
        server_user_us_per_delivery: per(cpu_after.user_secs - cpu_before.user_secs),
        server_sys_us_per_delivery: per(cpu_after.sys_secs - cpu_before.sys_secs),
        bare_consumer_us_per_record: bare_cpu_us as f64 / bare_records.max(1) as f64,
        deliveries,
        rate: args.rate,
        secs: args.secs,
        produced,
        added_ws_ms: added(&ws_p, &floor),
        added_sse_ms: added(&sse_p, &floor),
        bare_consumer: floor,
        pushgate_ws: ws_p,
        pushgate_sse: sse_p,
        ws_clients_ready: ws_ready,
        sse_clients_ready: sse_ready,
    })
}

/// Runs, prints the table, writes the JSON.
pub async fn main(args: KafkaLatencyArgs) -> Result<()> {
    let json = args.json.clone();
    let name = match args.system {
        System::Centrifugo => "Centrifugo",
        _ => "pushgate",
    };
    let r = run(args).await?;
    let row = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.count, p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms
        )
    };
    println!("| path | records | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "{}",
        row("bare librdkafka consumer (floor)", &r.bare_consumer)
    );
    println!(
        "{}",
        row(
            &format!("{name} WebSocket ({} clients)", r.ws_clients_ready),
            &r.pushgate_ws
        )
    );
    println!(
        "{}",
        row(
            &format!("{name} SSE ({} clients)", r.sse_clients_ready),
            &r.pushgate_sse
        )
    );
    println!(
        "added by {name} (WS): p50 {:+.2} ms, p99 {:+.2} ms, p99.9 {:+.2} ms",
        r.added_ws_ms.p50, r.added_ws_ms.p99, r.added_ws_ms.p999
    );
    println!(
        "added by {name} (SSE): p50 {:+.2} ms, p99 {:+.2} ms, p99.9 {:+.2} ms",
        r.added_sse_ms.p50, r.added_sse_ms.p99, r.added_sse_ms.p999
    );
    println!(
        "{name} CPU per delivery: user {:.2} µs + system {:.2} µs ({} deliveries); bare consumer thread: {:.2} µs per record",
        r.server_user_us_per_delivery, r.server_sys_us_per_delivery, r.deliveries, r.bare_consumer_us_per_record
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timestamp() {
        assert_eq!(
            ts_of(br#"{"ts":1700000000123456,"seq":4}"#),
            Some(1700000000123456)
        );
        assert_eq!(ts_of(b"no"), None);
        assert_eq!(ts_of(&[0xff, 0xfe]), None);
    }
}
