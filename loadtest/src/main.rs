//! pushgate-loadtest: a load generator for pushgate and its peers (Nchan, Pushpin).
//!
//! `run` opens N WebSocket or SSE subscribers (spread over several 127.0.0.x
//! source addresses), subscribes each to a key from a distribution (hot,
//! uniform, Zipf), then publishes at one or more fixed rates with a
//! microsecond timestamp in every payload, and reports connection setup
//! rate, deliveries/s, end-to-end latency percentiles (HdrHistogram),
//! errors, and the server's CPU seconds and RSS from /proc. Everything is
//! bounded in time and count. At the end it writes a JSON result and an SVG
//! chart. `report` turns a folder of results into the comparison table;
//! `grip-origin` is the tiny GRIP origin Pushpin needs.
//!
//! `kafka-latency` measures pushgate's added latency over a bare librdkafka
//! consumer reading the same broker in the same run.
//!
//! `fleet-clients`, `fleet-produce`, `fleet-sample` and `fleet-report` are
//! the parts of the fleet harness, `loadtest/fleet.sh`.
//!
//! `publish-bench` measures the server's CPU per published record and the
//! publish latency at fixed rates, one record per request.
//!
//! `delta-bytes` compares bytes on the wire with and without JSON Patch deltas.
//!
//! Modules: `client` (subscribers), `delta` (the delta-bytes run), `kafka` (the Kafka latency run), `publish` (paced publishing), `stats`
//! (histograms, counters), `procstat` (/proc sampling), `keys`
//! (distributions), `chart` (SVG), `report` (table, RESULTS.md), `origin`.

mod centrifugo;
mod chart;
mod client;
mod delta;
mod fleet;
mod fleet_report;
mod grpc;
mod kafka;
mod keys;
mod origin;
mod procstat;
mod publish;
mod publish_bench;
mod report;
mod stats;
mod versus;
mod view_bench;
mod ws_deflate;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientConfig, Shared};
use crate::keys::{key_name, Dist, Picker};
use crate::procstat::Sample;
use crate::stats::{load, new_histogram, percentiles, Counters, Percentiles, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Pushgate,
    /// loadtest/floor: pushgate's wire protocol on the same stack, with nothing but fan-out.
    Floor,
    Nchan,
    Pushpin,
    /// Centrifugo v6: unidirectional WebSocket and SSE, HTTP API (loadtest/src/centrifugo.rs).
    Centrifugo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Sse,
    /// pushgate only: `pushgate.v1.Gateway/Subscribe` over h2c (loadtest/src/grpc.rs).
    Grpc,
    /// pushgate only: WebSocket with permessage-deflate negotiated (loadtest/src/ws_deflate.rs).
    #[serde(rename = "ws-deflate")]
    WsDeflate,
}

#[derive(Parser)]
#[command(version, about = "Load generator for pushgate, Nchan and Pushpin")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open subscribers, publish at fixed rates, measure.
    Run(Box<RunArgs>),
    /// Print the comparison table from a folder of JSON results; optionally write RESULTS.md.
    Report(report::ReportArgs),
    /// pushgate's added latency over a bare librdkafka consumer, side by side (needs a broker and a pushgate on it).
    KafkaLatency(Box<kafka::KafkaLatencyArgs>),
    /// Bytes on the wire with and without JSON Patch deltas (CDC rows, the demo ticker).
    DeltaBytes(Box<delta::DeltaArgs>),
    /// Fleet harness (loadtest/fleet.sh): checking, resuming WS/SSE/gRPC clients.
    FleetClients(Box<fleet::ClientArgs>),
    /// Fleet harness: records to Kafka with a sequence number per key.
    FleetProduce(Box<fleet_report::ProduceArgs>),
    /// Fleet harness: CPU, RSS and metrics of every node, each second.
    FleetSample(Box<fleet_report::SampleArgs>),
    /// Fleet harness: the per-scenario report (and --check for CI).
    FleetReport(Box<fleet_report::ReportArgs>),
    /// Issue 29 item 5: one record per request at fixed rates; server CPU per record and publish latency.
    PublishBench(Box<publish_bench::PublishBenchArgs>),
    /// Issue 30: a large view streamed to WebSocket, SSE and gRPC subscribers under writes, checked key by key.
    ViewBench(Box<view_bench::ViewBenchArgs>),
    /// A minimal GRIP origin for Pushpin: answers GET /stream/KEY with Grip-Hold: stream.
    GripOrigin {
        #[arg(long, default_value = "127.0.0.1:7998")]
        listen: SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Which server is under test (selects subscribe paths and publish API).
    #[arg(long, value_enum, default_value = "pushgate")]
    system: System,
    /// Base URL subscribers connect to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Base URL of the publish API (Pushpin: its push_in_http_port). Default: --url.
    #[arg(long)]
    publish_url: Option<String>,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// pushgate topic (ignored by the peers, which use one channel per key).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// How subscribers pick their key.
    #[arg(long, value_enum, default_value = "hot")]
    dist: Dist,
    /// How publishes pick their key (default: uniform, or hot when --dist hot).
    #[arg(long, value_enum)]
    publish_dist: Option<Dist>,
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// Publish rates in messages/s, one step each (comma-separated). Empty: idle run.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Stop stepping once a step's p99 exceeds this many milliseconds.
    #[arg(long)]
    stop_p99_ms: Option<f64>,
    /// Runs of each rate: a rate is sustained only when every run of it holds
    /// the p99 bound (one noisy run neither makes nor breaks it).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Rates still tried after the first one that is not sustained (a noisy
    /// step must not hide the higher rates).
    #[arg(long, default_value_t = 0)]
    steps_past_failure: usize,
    /// Seconds to wait after all connections are up before measuring idle memory.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Give up waiting for connections after this many seconds.
    #[arg(long, default_value_t = 120)]
    connect_timeout_secs: u64,
    /// Stop waiting for connections after this many seconds without progress.
    #[arg(long, default_value_t = 15)]
    connect_stall_secs: u64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Source addresses 127.0.0.10 .. 127.0.0.(10+N-1).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Server process ids (their descendants are included) for CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Padding bytes in each payload.
    #[arg(long, default_value_t = 64)]
    pad_bytes: usize,
    /// Distinct value filters among the pushgate subscribers (subscriber i gets
    /// filter i mod N; every filter matches every payload, so deliveries are
    /// those of the key-only run and only the evaluation cost differs). Implies
    /// --value-payload.
    #[arg(long, default_value_t = 0)]
    filters: usize,
    /// Payloads carry `price` (100..199) and `sector` for filters to look at.
    #[arg(long)]
    value_payload: bool,
    /// Subscribe with `max_rate` (records per second per key: conflation). Expected
    /// deliveries are capped at subscribers x this x the step length.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Most messages per publish request (pushgate, Pushpin).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent publish connections.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Seconds to keep counting after the last step's publishing stops.
    #[arg(long, default_value_t = 2)]
    drain_secs: u64,
    /// Hard bound on the whole run.
    #[arg(long, default_value_t = 900)]
    max_secs: u64,
    /// Scenario name written into the result.
    #[arg(long, default_value = "run")]
    scenario: String,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Exit 1 unless at least this fraction of expected deliveries arrived (CI smoke).
    #[arg(long)]
    min_delivery_ratio: Option<f64>,
    /// Print no progress lines.
    #[arg(long)]
    quiet: bool,
    /// Resume scenario (pushgate, Centrifugo): each subscriber drops its connection
    /// this often (the first drop spread over one period) and resumes from its position.
    #[arg(long)]
    resume_every_ms: Option<u64>,
    /// Resume scenario: time away between a drop and the reconnect.
    #[arg(long, default_value_t = 500)]
    resume_away_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub rate: f64,
    pub secs: f64,
    pub generated: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub delivery_ratio: f64,
    pub latency: Percentiles,
    pub server_cpu_secs: f64,
    pub server_cpu_util: f64,
    pub deliveries_per_cpu_sec: f64,
    /// Server user-space CPU per delivery, microseconds.
    #[serde(default)]
    pub user_us_per_delivery: f64,
    /// Server kernel CPU per delivery, microseconds.
    #[serde(default)]
    pub sys_us_per_delivery: f64,
    pub loadgen_cpu_secs: f64,
    pub server_rss_kib: u64,
    pub open: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimePoint {
    pub t: f64,
    pub rate: f64,
    pub open: usize,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub server_cpu_util: f64,
    pub server_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub status: u64,
    pub disconnects: u64,
    pub publish: u64,
    pub publish_dropped: u64,
    /// Resume runs: reconnects, resumes not honoured, duplicate deliveries.
    #[serde(default)]
    pub resumes: u64,
    #[serde(default)]
    pub not_recovered: u64,
    #[serde(default)]
    pub duplicates: u64,
    /// `ws-deflate` runs: deliveries that arrived compressed.
    #[serde(default)]
    pub compressed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub system: System,
    pub transport: Transport,
    pub scenario: String,
    pub connections: usize,
    pub keys: usize,
    pub dist: String,
    pub ready: usize,
    pub connect_secs: f64,
    pub connect_rate: f64,
    pub server_before: Sample,
    pub server_idle: Sample,
    /// (idle RSS - RSS before connecting) / ready connections, bytes.
    pub rss_per_conn_bytes: f64,
    pub steps: Vec<StepResult>,
    /// Index of the highest-throughput step whose p99 stayed within --stop-p99-ms.
    pub best_step: Option<usize>,
    pub all_latency: Percentiles,
    pub errors: Errors,
    pub timeline: Vec<TimePoint>,
    pub elapsed_secs: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Run(args) => {
            let bound = Duration::from_secs(args.max_secs);
            let result = rt.block_on(async {
                match tokio::time::timeout(bound, run(*args.clone())).await {
                    Ok(r) => r,
                    Err(_) => bail!("run exceeded --max-secs {}", args.max_secs),
                }
            });
            // Do not wait for thousands of subscriber tasks to wind down.
            rt.shutdown_timeout(Duration::from_millis(200));
            let code = match result {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            };
            std::process::exit(code);
        }
        Cmd::KafkaLatency(args) => {
            // Bounded: connections (60 s), warm-up and measurement, plus a margin.
            let result = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(600), kafka::main(*args))
                    .await
                    .unwrap_or_else(|_| bail!("kafka-latency exceeded 600 s"))
            });
            rt.shutdown_timeout(Duration::from_millis(200));
            result
        }
        Cmd::DeltaBytes(args) => {
            let result = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(600), delta::main(*args))
                    .await
                    .unwrap_or_else(|_| bail!("delta-bytes exceeded 600 s"))
            });
            rt.shutdown_timeout(Duration::from_millis(200));
            result
        }
        Cmd::FleetClients(args) => {
            let r = rt.block_on(fleet::clients(*args));
            rt.shutdown_timeout(Duration::from_millis(200));
            r
        }
        Cmd::FleetProduce(args) => rt.block_on(fleet_report::produce(*args)),
        Cmd::FleetSample(args) => rt.block_on(fleet_report::sample(*args)),
        Cmd::FleetReport(args) => fleet_report::report(*args),
        Cmd::Report(args) => report::main(args),
        Cmd::ViewBench(args) => match rt.block_on(view_bench::main(*args)) {
            Ok(true) => std::process::exit(0),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("view-bench: {e:#}");
                std::process::exit(2)
            }
        },
        Cmd::PublishBench(args) => {
            let result = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(900), publish_bench::main(*args))
                    .await
                    .unwrap_or_else(|_| bail!("publish-bench exceeded 900 s"))
            });
            rt.shutdown_timeout(Duration::from_millis(200));
            result
        }
        Cmd::GripOrigin { listen, max_secs } => rt.block_on(origin::serve(listen, max_secs)),
    }
}

struct Progress {
    start: Instant,
    quiet: bool,
    label: String,
}

impl Progress {
    fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!(
                "[{} {:>6.1}s] {}",
                self.label,
                self.start.elapsed().as_secs_f64(),
                text
            );
        }
    }
}

/// Returns Ok(true) when the run met --min-delivery-ratio (or none was asked).
async fn run(args: RunArgs) -> Result<bool> {
    let nofile = procstat::raise_nofile();
    if (nofile as usize) < args.connections + 256 {
        eprintln!(
            "warning: open-file limit {nofile} is below {} connections; raise `ulimit -n`",
            args.connections
        );
    }
    let started = Instant::now();
    let progress = Progress {
        start: started,
        quiet: args.quiet,
        label: format!(
            "{} {} {}",
            format!("{:?}", args.system).to_lowercase(),
            format!("{:?}", args.transport).to_lowercase(),
            args.scenario
        ),
    };
    if args.transport == Transport::Grpc && args.system != System::Pushgate {
        bail!("--transport grpc is pushgate's own protocol");
    }
    if args.transport == Transport::WsDeflate
        && (args.system != System::Pushgate || args.resume_every_ms.is_some() || args.filters > 0)
    {
        bail!("--transport ws-deflate: pushgate only, without resume runs or filters");
    }
    if args.resume_every_ms.is_some()
        && !matches!(args.system, System::Pushgate | System::Centrifugo)
    {
        bail!("--resume-every-ms: only pushgate and Centrifugo resume from a position");
    }
    if args.system == System::Pushpin && args.transport == Transport::Ws {
        bail!("Pushpin WebSocket needs a WebSocket-over-HTTP origin; use --transport sse");
    }
    let host = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let server: SocketAddr = host
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .next()
        .context("no address")?;
    let keys = if args.dist == Dist::Hot {
        1
    } else {
        args.keys.max(1)
    };

    // Assign keys.
    let sub_picker = Picker::new(args.dist, keys, args.zipf_exponent);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let assigned: Vec<usize> = (0..args.connections)
        .map(|_| sub_picker.pick(&mut rng))
        .collect();

    let cfg = Arc::new(ClientConfig {
        system: args.system,
        transport: args.transport,
        server,
        host: host.clone(),
        topic: args.topic.clone(),
        sources: args.sources,
        handshake_timeout: Duration::from_secs(30),
        filters: args.filters,
        max_rate: args.max_rate,
        resume_every: args.resume_every_ms.map(Duration::from_millis),
        resume_away: Duration::from_millis(args.resume_away_ms),
    });
    let shared = Arc::new(Shared {
        stats: Stats::new(),
        counters: Counters::default(),
        stop: CancellationToken::new(),
        ready: (0..args.connections)
            .map(|_| AtomicBool::new(false))
            .collect(),
    });
    let _stop_on_exit = shared.stop.clone().drop_guard();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::sample(&args.server_pid);
    progress.line(&format!(
        "server before: {} KiB RSS, {:.2} CPU s, {} processes",
        before.rss_kib, before.cpu_secs, before.processes
    ));

    // Connect.
    let connect_start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    {
        let shared = Arc::clone(&shared);
        let cfg = Arc::clone(&cfg);
        let assigned = assigned.clone();
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            for (conn, key) in assigned.into_iter().enumerate() {
                if shared.stop.is_cancelled() {
                    break;
                }
                let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
                    break;
                };
                let shared = Arc::clone(&shared);
                let cfg = Arc::clone(&cfg);
                tokio::spawn(async move {
                    // The permit is held until the subscription is confirmed or fails.
                    let watch = {
                        let shared = Arc::clone(&shared);
                        async move {
                            while !shared.ready[conn].load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    };
                    let sub = client::subscriber(conn, key_name(key), cfg, Arc::clone(&shared));
                    tokio::pin!(sub);
                    tokio::select! {
                        _ = &mut sub => { drop(permit); return; }
                        _ = tokio::time::timeout(Duration::from_secs(30), watch) => {}
                    }
                    drop(permit);
                    sub.await;
                });
            }
        });
    }
    let connect_deadline = connect_start + Duration::from_secs(args.connect_timeout_secs);
    let mut last_line = Instant::now();
    // When the last subscriber was confirmed (or failed): the setup rate is
    // measured up to there, not up to a timeout spent waiting for stragglers.
    let mut last_change = Instant::now();
    let mut seen = 0usize;
    loop {
        let ready = shared.counters.ready.load(Ordering::Relaxed);
        let failed = load(&shared.counters.connect_errors) + load(&shared.counters.status_errors);
        let done = ready + failed as usize;
        if done != seen {
            seen = done;
            last_change = Instant::now();
        }
        if done >= args.connections || Instant::now() >= connect_deadline {
            break;
        }
        if last_change.elapsed() >= Duration::from_secs(args.connect_stall_secs) {
            progress.line(&format!(
                "no progress for {}s: {} subscribers never confirmed; going on",
                args.connect_stall_secs,
                args.connections - done
            ));
            break;
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            progress.line(&format!(
                "connecting: {ready}/{} ready, {} failed, {:.0} conn/s",
                args.connections,
                failed,
                ready as f64 / connect_start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = (last_change - connect_start).as_secs_f64();
    let ready = shared.counters.ready.load(Ordering::Relaxed);
    let connect_rate = ready as f64 / connect_secs.max(1e-9);
    progress.line(&format!(
        "connected {ready}/{} in {connect_secs:.2}s ({connect_rate:.0} conn/s); settling {}s",
        args.connections, args.settle_secs
    ));
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle = procstat::sample(&args.server_pid);
    let ready_now = shared.counters.ready.load(Ordering::Relaxed);
    let rss_per_conn_bytes = if ready_now > 0 {
        (idle.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / ready_now as f64
    } else {
        0.0
    };
    progress.line(&format!(
        "idle: {ready_now} subscribers, server RSS {} KiB (+{} KiB), {:.0} B/conn",
        idle.rss_kib,
        idle.rss_kib as i64 - before.rss_kib as i64,
        rss_per_conn_bytes
    ));

    // Subscribers per key, counting only confirmed subscriptions.
    let mut subs_per_key = vec![0u64; keys];
    for (conn, key) in assigned.iter().enumerate() {
        if shared.ready[conn].load(Ordering::Relaxed) {
            subs_per_key[*key] += 1;
        }
    }

    let counters_arc = Arc::new(Counters::default());
    let mut steps = Vec::new();
    let mut timeline = Vec::new();
    let mut all = new_histogram();
    let publish_dist = args.publish_dist.unwrap_or(if args.dist == Dist::Hot {
        Dist::Hot
    } else {
        Dist::Uniform
    });
    let pub_picker = Picker::new(publish_dist, keys, args.zipf_exponent);
    if !args.rates.is_empty() {
        let pool = publish::Pool::start(
            publish::PublishConfig {
                system: args.system,
                base: args
                    .publish_url
                    .clone()
                    .unwrap_or_else(|| args.url.clone())
                    .trim_end_matches('/')
                    .to_owned(),
                topic: args.topic.clone(),
                batch: args.batch,
                publishers: args.publishers,
                pad: "x".repeat(args.pad_bytes),
                value_payload: args.value_payload || args.filters > 0,
            },
            Arc::clone(&counters_arc),
        );
        let pool = Arc::new(pool);
        let picker = Arc::new(pub_picker);
        let subs_per_key = Arc::new(subs_per_key);
        let _ = shared.stats.take();
        let repeat = args.repeat.max(1);
        let schedule: Vec<f64> = args
            .rates
            .iter()
            .flat_map(|r| std::iter::repeat_n(*r, repeat))
            .collect();
        let mut failed_rates: Vec<f64> = Vec::new();
        for (i, &rate) in schedule.iter().enumerate() {
            if failed_rates.contains(&rate) {
                // One run of this rate already failed: it cannot be sustained.
                continue;
            }
            let last = i + 1 == schedule.len();
            let step_start = Instant::now();
            let until = step_start + Duration::from_secs(args.step_secs);
            let cpu0 = procstat::sample(&args.server_pid);
            let self0 = procstat::self_cpu_secs();
            let publisher = {
                let pool = Arc::clone(&pool);
                let picker = Arc::clone(&picker);
                let subs = Arc::clone(&subs_per_key);
                let counters = Arc::clone(&counters_arc);
                tokio::spawn(
                    async move { pool.run_rate(rate, until, &picker, &subs, &counters).await },
                )
            };
            let mut step_hist = new_histogram();
            let mut step_deliveries = 0u64;
            let end = until
                + if last {
                    Duration::from_secs(args.drain_secs)
                } else {
                    Duration::ZERO
                };
            let mut prev = cpu0;
            let mut prev_t = Instant::now();
            while Instant::now() < end {
                let wake = (prev_t + Duration::from_secs(1)).min(end);
                tokio::time::sleep_until(wake.into()).await;
                let (h, d) = shared.stats.take();
                let now = procstat::sample(&args.server_pid);
                let dt = prev_t.elapsed().as_secs_f64().max(1e-6);
                prev_t = Instant::now();
                let p = percentiles(&h);
                let util = (now.cpu_secs - prev.cpu_secs) / dt;
                prev = now;
                let open = shared.counters.open.load(Ordering::Relaxed);
                timeline.push(TimePoint {
                    t: started.elapsed().as_secs_f64(),
                    rate,
                    open,
                    deliveries_per_sec: d as f64 / dt,
                    p50_ms: p.p50_ms,
                    p99_ms: p.p99_ms,
                    server_cpu_util: util,
                    server_rss_kib: now.rss_kib,
                });
                progress.line(&format!(
                    "rate {rate:>7.0}/s open {open} deliveries {:>9.0}/s p50 {:>7.2}ms p99 {:>8.2}ms server cpu {:>4.0}% rss {} MiB errors {}",
                    d as f64 / dt,
                    p.p50_ms,
                    p.p99_ms,
                    util * 100.0,
                    now.rss_kib / 1024,
                    load(&shared.counters.disconnects) + load(&counters_arc.publish_errors) + load(&counters_arc.publish_dropped)
                ));
                step_hist.add(&h).expect("same bounds");
                step_deliveries += d;
            }
            let (generated, mut expected) = publisher.await.unwrap_or((0, 0));
            if let Some(max_rate) = args.max_rate {
                // Conflation: at most max_rate per second per key reach each subscriber
                // (an upper bound: keys published more slowly deliver less).
                let subscribed: u64 = subs_per_key.iter().sum();
                let cap = (subscribed as f64 * max_rate * args.step_secs as f64) as u64;
                expected = expected.min(cap);
            }
            let secs = step_start.elapsed().as_secs_f64();
            let window = args.step_secs as f64;
            let cpu1 = procstat::sample(&args.server_pid);
            let cpu = cpu1.cpu_secs - cpu0.cpu_secs;
            let lat = percentiles(&step_hist);
            all.add(&step_hist).expect("same bounds");
            let step = StepResult {
                rate,
                secs,
                generated,
                expected_deliveries: expected,
                deliveries: step_deliveries,
                deliveries_per_sec: step_deliveries as f64 / window,
                delivery_ratio: if expected > 0 {
                    step_deliveries as f64 / expected as f64
                } else {
                    0.0
                },
                latency: lat,
                server_cpu_secs: cpu,
                server_cpu_util: cpu / secs,
                deliveries_per_cpu_sec: if cpu > 0.0 {
                    step_deliveries as f64 / cpu
                } else {
                    0.0
                },
                user_us_per_delivery: per_delivery_us(
                    cpu1.user_secs - cpu0.user_secs,
                    step_deliveries,
                ),
                sys_us_per_delivery: per_delivery_us(
                    cpu1.sys_secs - cpu0.sys_secs,
                    step_deliveries,
                ),
                loadgen_cpu_secs: procstat::self_cpu_secs() - self0,
                server_rss_kib: cpu1.rss_kib,
                open: shared.counters.open.load(Ordering::Relaxed),
            };
            progress.line(&format!(
                "step {rate}/s: {:.0} deliveries/s ({:.1}% of expected), p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} ms, server {:.2} CPU s -> {:.0} deliveries/CPU s",
                step.deliveries_per_sec,
                step.delivery_ratio * 100.0,
                lat.p50_ms,
                lat.p90_ms,
                lat.p99_ms,
                lat.p999_ms,
                cpu,
                step.deliveries_per_cpu_sec
            ));
            let over = args.stop_p99_ms.is_some_and(|max| lat.p99_ms > max);
            let lossy = expected > 0 && step.delivery_ratio < 0.5;
            steps.push(step);
            if over || lossy {
                failed_rates.push(rate);
                if failed_rates.len() > args.steps_past_failure {
                    progress.line(if over {
                        "p99 above the limit: stopping"
                    } else {
                        "fewer than half the deliveries arrived: stopping"
                    });
                    break;
                }
            }
        }
    }
    // Sustained: every run of the rate held the bound and delivered 95%.
    let holds = |s: &StepResult| {
        args.stop_p99_ms.is_none_or(|max| s.latency.p99_ms <= max) && s.delivery_ratio >= 0.95
    };
    let best_step = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| steps.iter().filter(|o| o.rate == s.rate).all(holds))
        .filter(|(_, s)| steps.iter().filter(|o| o.rate == s.rate).count() >= args.repeat.max(1))
        .max_by(|a, b| a.1.deliveries_per_sec.total_cmp(&b.1.deliveries_per_sec))
        .map(|(i, _)| i);
    let c = &shared.counters;
    let result = RunResult {
        system: args.system,
        transport: args.transport,
        scenario: args.scenario.clone(),
        connections: args.connections,
        keys,
        dist: format!("{:?}", args.dist).to_lowercase(),
        ready,
        connect_secs,
        connect_rate,
        server_before: before,
        server_idle: idle,
        rss_per_conn_bytes,
        steps,
        best_step,
        all_latency: percentiles(&all),
        errors: Errors {
            connect: load(&c.connect_errors),
            status: load(&c.status_errors),
            disconnects: load(&c.disconnects),
            publish: load(&counters_arc.publish_errors),
            publish_dropped: load(&counters_arc.publish_dropped),
            resumes: load(&c.resumes),
            not_recovered: load(&c.not_recovered),
            duplicates: load(&c.duplicates),
            compressed: load(&c.compressed),
        },
        timeline,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    shared.stop.cancel();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        if let Err(e) = chart::draw(&result, path) {
            eprintln!("chart: {e:#}");
        }
    }
    println!("{}", summary(&result));
    if let Some(min) = args.min_delivery_ratio {
        let expected: u64 = result.steps.iter().map(|s| s.expected_deliveries).sum();
        let got: u64 = result.steps.iter().map(|s| s.deliveries).sum();
        let ratio = if expected > 0 {
            got as f64 / expected as f64
        } else {
            0.0
        };
        let ok = ready == args.connections && expected > 0 && ratio >= min;
        println!(
            "delivery check: {ready}/{} subscribed, {got}/{expected} deliveries = {:.3} (need all subscribed and >= {min}) {}",
            args.connections,
            ratio,
            if ok { "ok" } else { "FAILED" }
        );
        return Ok(ok);
    }
    Ok(true)
}

/// CPU seconds per delivery, in microseconds (0 when nothing was delivered).
fn per_delivery_us(cpu_secs: f64, deliveries: u64) -> f64 {
    if deliveries == 0 {
        0.0
    } else {
        cpu_secs * 1e6 / deliveries as f64
    }
}

fn summary(r: &RunResult) -> String {
    let mut s = format!(
        "{:?}/{:?} {}: {}/{} subscribers in {:.2}s ({:.0}/s), idle {:.0} B/conn; errors connect {} status {} disconnect {} publish {} dropped {}",
        r.system, r.transport, r.scenario, r.ready, r.connections, r.connect_secs, r.connect_rate,
        r.rss_per_conn_bytes, r.errors.connect, r.errors.status, r.errors.disconnects, r.errors.publish, r.errors.publish_dropped
    );
    if r.errors.resumes > 0 {
        s.push_str(&format!(
            "
resumes {}: not recovered {}, duplicate deliveries {}",
            r.errors.resumes, r.errors.not_recovered, r.errors.duplicates
        ));
    }
    if let Some(b) = r.best_step.map(|i| &r.steps[i]) {
        s.push_str(&format!(
            "\nbest step: {} msg/s -> {:.0} deliveries/s, {:.0} per server CPU s (user {:.2} µs + system {:.2} µs per delivery), p99 {:.2} ms",
            b.rate, b.deliveries_per_sec, b.deliveries_per_cpu_sec, b.user_us_per_delivery, b.sys_us_per_delivery, b.latency.p99_ms
        ));
    }
    if r.all_latency.count > 0 {
        let l = r.all_latency;
        s.push_str(&format!(
            "\nlatency over all steps: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms ({} samples)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        ));
    }
    s
}
