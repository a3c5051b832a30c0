//! `publish-bench`: the cost of publishing itself (issue 29 item 5, group commit).
//!
//! One record per HTTP request, sent on an even schedule at each rate, with up
//! to `--publishers` requests in flight at once (so publishes can overlap and
//! the log can group them). Latency is measured from each request's scheduled
//! send time to its answer, so a request that waited for a free publisher
//! counts that wait. Around each step it reads the server's CPU from /proc
//! (the whole process, and the log writer thread alone) and its `/metrics`
//! (`pushgate_log_append_seconds`: one sample per written batch, so its count
//! is the number of commits; `pushgate_log_commits_total` where the server has it).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::stats::{new_histogram, percentiles, Percentiles};

#[derive(Parser, Clone)]
pub struct PublishBenchArgs {
    /// Base URL of the pushgate under test.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Publishes per second, one step each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    rates: Vec<f64>,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Unmeasured seconds of publishing at the step's rate before it.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Requests in flight at most (each on its own keep-alive connection).
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Distinct keys the records cycle through.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Padding bytes in each payload.
    #[arg(long, default_value_t = 64)]
    pad_bytes: usize,
    /// The server's process id (CPU from /proc/PID/stat and its threads).
    #[arg(long)]
    server_pid: u32,
    /// Label written into the result.
    #[arg(long, default_value = "run")]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct BenchStep {
    pub rate: f64,
    pub secs: f64,
    pub published: u64,
    pub errors: u64,
    /// Scheduled send to answer, as the publisher saw it.
    pub latency: Percentiles,
    pub server_cpu_secs: f64,
    pub server_user_secs: f64,
    pub server_sys_secs: f64,
    /// (user + system) / published, microseconds.
    pub cpu_us_per_record: f64,
    pub user_us_per_record: f64,
    pub sys_us_per_record: f64,
    /// The `pushgate-log-writer` thread alone.
    pub writer_cpu_us_per_record: f64,
    /// Batches written in the step (count of `pushgate_log_append_seconds`).
    pub batches: f64,
    /// `pushgate_log_commits_total` over the step (absent on older servers).
    pub commits: Option<f64>,
    /// The server's quantiles at the step's end (its own rolling window).
    pub append_p50_ms: Option<f64>,
    pub append_p99_ms: Option<f64>,
    pub server_publish_p50_ms: Option<f64>,
    pub server_publish_p99_ms: Option<f64>,
    /// 1-minute load average at the step's end.
    pub loadavg: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub label: String,
    pub publishers: usize,
    pub steps: Vec<BenchStep>,
}

/// (user, system) seconds of one thread (or the process, with `tid` None).
fn cpu_of(pid: u32, tid: Option<u32>) -> Option<(f64, f64)> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    Some((
        f.get(11)?.parse::<f64>().ok()? / ticks,
        f.get(12)?.parse::<f64>().ok()? / ticks,
    ))
}

fn writer_tid(pid: u32) -> Option<u32> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        // The kernel keeps 15 bytes of a thread's name.
        if comm.trim().starts_with("pushgate-log-wr") {
            return Some(tid);
        }
    }
    None
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A metric's value from the Prometheus text (`name` with its labels, exactly).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    match client.get(format!("{url}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub async fn main(args: PublishBenchArgs) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.publishers)
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()?;
    let url = Arc::new(format!("{}/topics/{}", args.url, args.topic));
    let pad = "x".repeat(args.pad_bytes);
    let mut steps = Vec::new();
    let tid = writer_tid(args.server_pid).context("no pushgate-log-writer thread")?;
    for &rate in &args.rates {
        if rate <= 0.0 {
            bail!("rates must be positive");
        }
        let hist = Arc::new(Mutex::new(new_histogram()));
        let published = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(Semaphore::new(args.publishers));
        let total = args.warmup_secs + args.secs;
        let start = tokio::time::Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup_secs);
        let mut before = None;
        let mut tasks = tokio::task::JoinSet::new();
        let mut i: u64 = 0;
        loop {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due >= start + Duration::from_secs(total) {
                break;
            }
            tokio::time::sleep_until(due).await;
            if before.is_none() && due >= measure_from {
                // Wait for the warm-up's requests so the window holds only its own.
                while tasks.join_next().await.is_some() {}
                let text = scrape(&client, &args.url).await;
                before = Some((
                    Instant::now(),
                    cpu_of(args.server_pid, None).context("server gone")?,
                    cpu_of(args.server_pid, Some(tid)).context("writer gone")?,
                    text,
                ));
            }
            let measured = before.is_some();
            let body = format!(
                "{{\"key\":\"k{}\",\"data\":{{\"seq\":{i},\"pad\":\"{pad}\"}}}}",
                i % args.keys
            );
            let (client, url, permits) = (client.clone(), Arc::clone(&url), Arc::clone(&permits));
            let (hist, published, errors) = (
                Arc::clone(&hist),
                Arc::clone(&published),
                Arc::clone(&errors),
            );
            let scheduled = Instant::now();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore");
                let ok = match client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !measured {
                    return;
                }
                if ok {
                    published.fetch_add(1, Ordering::Relaxed);
                    let us = scheduled.elapsed().as_micros() as u64;
                    hist.lock().expect("hist").saturating_record(us.max(1));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Reap finished tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
            i += 1;
        }
        while tasks.join_next().await.is_some() {}
        let (t0, cpu0, w0, text0) = before.context("no measured window")?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = cpu_of(args.server_pid, None).context("server gone")?;
        let w1 = cpu_of(args.server_pid, Some(tid)).context("writer gone")?;
        let text1 = scrape(&client, &args.url).await;
        let n = published.load(Ordering::Relaxed);
        let per = |s: f64| if n > 0 { s * 1e6 / n as f64 } else { 0.0 };
        let diff = |name: &str| Some(metric(&text1, name)? - metric(&text0, name).unwrap_or(0.0));
        let ms = |name: &str| metric(&text1, name).map(|s| s * 1000.0);
        let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
        let step = BenchStep {
            rate,
            secs,
            published: n,
            errors: errors.load(Ordering::Relaxed),
            latency: percentiles(&hist.lock().expect("hist")),
            server_cpu_secs: user + sys,
            server_user_secs: user,
            server_sys_secs: sys,
            cpu_us_per_record: per(user + sys),
            user_us_per_record: per(user),
            sys_us_per_record: per(sys),
            writer_cpu_us_per_record: per((w1.0 + w1.1) - (w0.0 + w0.1)),
            batches: diff("pushgate_log_append_seconds_count").unwrap_or(0.0),
            commits: diff("pushgate_log_commits_total"),
            append_p50_ms: ms("pushgate_log_append_seconds{quantile=\"0.5\"}"),
            append_p99_ms: ms("pushgate_log_append_seconds{quantile=\"0.99\"}"),
            server_publish_p50_ms: ms("pushgate_publish_seconds{quantile=\"0.5\"}"),
            server_publish_p99_ms: ms("pushgate_publish_seconds{quantile=\"0.99\"}"),
            loadavg: loadavg(),
        };
        eprintln!(
            "[publish-bench {}] {rate}/s: {n} published, {} errors, p50 {:.2} p99 {:.2} ms, \
             {:.1} µs CPU/record (user {:.1}, sys {:.1}, writer {:.1}), {:.0} batches, load {:.2}",
            args.label,
            step.errors,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.cpu_us_per_record,
            step.user_us_per_record,
            step.sys_us_per_record,
            step.writer_cpu_us_per_record,
            step.batches,
            step.loadavg
        );
        steps.push(step);
    }
    let result = BenchResult {
        label: args.label,
        publishers: args.publishers,
        steps,
    };
    let text = serde_json::to_string_pretty(&result)?;
    match &args.json {
        Some(path) => std::fs::write(path, text)?,
        None => println!("{text}"),
    }
    Ok(())
}
