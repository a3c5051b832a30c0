//! The fleet harness's producer (`fleet-produce`), node sampler (`fleet-sample`)
//! and report (`fleet-report`): per scenario, clients affected, time to 50/99/100%
//! resumed, lost/duplicated/reordered, steady clients' p99 against the
//! baseline, handshakes admitted and refused per node and second, CPU, RSS,
//! Kafka bytes fetched and where resumes were served from, per node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use rdkafka::config::ClientConfig as KafkaClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};

use crate::fleet::{bucket_floor_ms, key_name, ClientReport, Counts, Outage};
use crate::stats::now_us;

#[derive(clap::Parser)]
pub struct ProduceArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "fleet")]
    topic: String,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Records per second over all keys (uniform).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Produce until this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Where the per-key counts go when it stops.
    #[arg(long)]
    counts: PathBuf,
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let producer: FutureProducer = KafkaClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // A broker restart must not fail records: they wait for it.
        .set("message.timeout.ms", "600000")
        .create()
        .context("Kafka producer")?;
    let mut counts = vec![0u64; args.keys];
    let failed = Arc::new(AtomicU64::new(0));
    let pending = Arc::new(tokio::sync::Semaphore::new(100_000));
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_log = Instant::now();
    while !args.stop_file.exists() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * args.rate) as u64;
        while sent < due {
            let k = rand::rng().random_range(0..args.keys);
            let seq = counts[k];
            let payload = format!(
                r#"{{"ts":{},"seq":{seq},"even":{},"pad":"fleet-harness-record"}}"#,
                now_us(),
                seq.is_multiple_of(2)
            );
            let key = key_name(k);
            let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                break;
            };
            match producer.send_result(FutureRecord::to(&args.topic).key(&key).payload(&payload)) {
                Ok(delivery) => {
                    counts[k] += 1;
                    let failed = Arc::clone(&failed);
                    tokio::spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(permit);
                    });
                }
                // Queue full: try again at the next tick (the seq is not used).
                Err(_) => break,
            }
            sent += 1;
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = Instant::now();
            eprintln!(
                "fleet-produce: {sent} records, {} failed",
                failed.load(Ordering::Relaxed)
            );
        }
    }
    let _ = producer.flush(Duration::from_secs(60));
    let _ = pending.acquire_many(100_000).await;
    let out = Counts {
        counts,
        failed: failed.load(Ordering::Relaxed),
    };
    std::fs::write(&args.counts, serde_json::to_vec(&out)?)?;
    eprintln!(
        "fleet-produce: stopped after {sent} records, {} failed",
        out.failed
    );
    Ok(())
}

#[derive(clap::Parser)]
pub struct SampleArgs {
    /// name=pidfile=http://addr, one per node.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Sample until this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// JSON lines, one per node and second.
    #[arg(long)]
    out: PathBuf,
}

/// One node at one moment.
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct NodeSample {
    pub t: u64,
    pub node: String,
    pub up: bool,
    pub cpu_s: f64,
    pub rss_kb: u64,
    /// Selected metrics (summed over labels but `tier`/`reason`, kept in the name).
    pub m: BTreeMap<String, f64>,
}

fn proc_cpu_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    Some((cpu, rss))
}

const METRICS: &[&str] = &[
    "pushgate_connections ",
    "pushgate_connections_total",
    "pushgate_connections_refused_total",
    "pushgate_replayed_records_total",
    "pushgate_resume_gaps_total",
    "pushgate_catchup_reads_total",
    "pushgate_catchup_reads_coalesced_total",
    "pushgate_kafka_fetch_bytes_total",
    // Summed over transports, one key per bucket (`le`).
    "pushgate_record_age_seconds_bucket",
];

fn pick(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // The name must end where the line's name ends: `pushgate_connections` is a
        // prefix of `pushgate_connections_total`.
        let Some(name) = METRICS.iter().find(|n| {
            let n = n.trim_end();
            line.starts_with(n) && matches!(line.as_bytes().get(n.len()), Some(b' ' | b'{'))
        }) else {
            continue;
        };
        let rest = &line[name.trim_end().len()..];
        let mut key = name.trim_end().to_owned();
        for label in ["tier=\"", "reason=\"", "le=\""] {
            if let Some(i) = rest.find(label) {
                let v = &rest[i + label.len()..];
                key.push(':');
                key.push_str(&v[..v.find('"').unwrap_or(0)]);
            }
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *m.entry(key).or_default() += v;
        }
    }
    m
}

pub async fn sample(args: SampleArgs) -> Result<()> {
    use std::io::Write;
    // A node in a reconnect storm answers /metrics late: the nodes are asked
    // side by side, each with most of a second's tick, so one slow node
    // neither loses the others' samples nor its own.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(2500))
        .build()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !args.stop_file.exists() {
        tick.tick().await;
        let asks = args.nodes.iter().filter_map(|spec| {
            let mut parts = spec.splitn(3, '=');
            let (name, pidfile, url) = (parts.next()?, parts.next()?, parts.next()?);
            let http = http.clone();
            Some(async move {
                let mut s = NodeSample {
                    t: now_us() / 1000,
                    node: name.to_owned(),
                    ..Default::default()
                };
                let pid = std::fs::read_to_string(pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
                if let Some((cpu, rss)) = pid.and_then(proc_cpu_rss) {
                    s.cpu_s = cpu;
                    s.rss_kb = rss;
                    s.up = true;
                }
                if let Ok(r) = http.get(format!("{url}/metrics")).send().await {
                    if let Ok(text) = r.text().await {
                        s.m = pick(&text);
                    }
                }
                s
            })
        });
        for s in futures_util::future::join_all(asks).await {
            writeln!(out, "{}", serde_json::to_string(&s)?)?;
        }
        out.flush()?;
    }
    Ok(())
}

#[derive(clap::Parser)]
pub struct ReportArgs {
    /// The run's folder: events.tsv (name, kind, start ms, end ms, description),
    /// clients-*.json, samples.jsonl, counts.json.
    #[arg(long)]
    dir: PathBuf,
    /// Append the Markdown section here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Exit 1 unless 0 lost, 0 duplicated, 0 reordered and every outage resumed.
    #[arg(long)]
    check: bool,
    /// With --check: every client of a scenario resumed within this many
    /// seconds of its own outage (or of the restart, for a cold restart), and
    /// the last within this many seconds of the scenario's end. Not counted
    /// from the scenario's start: a rolling deploy lasts as long as its nodes
    /// take to restart, which is the machine's, not the resumes'.
    #[arg(long, default_value_t = 60.0)]
    within_secs: f64,
}

struct Event {
    name: String,
    start: u64,
    end: u64,
    what: String,
    /// Resume times are counted from here (the start, or for a cold restart the restart).
    reference: u64,
}

fn p99_ms(hist: &BTreeMap<u16, u64>, q: f64) -> Option<f64> {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (b, n) in hist {
        seen += n;
        if seen >= want {
            return Some(bucket_floor_ms(*b + 1));
        }
    }
    None
}

fn pct(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

pub fn report(args: ReportArgs) -> Result<()> {
    let events: Vec<Event> = std::fs::read_to_string(args.dir.join("events.tsv"))
        .context("events.tsv")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some(Event {
                name: f.first()?.to_string(),
                start: f.get(1)?.parse().ok()?,
                end: f.get(2)?.parse().ok()?,
                what: f.get(3).unwrap_or(&"").to_string(),
                reference: f.get(4).and_then(|v| v.parse().ok()).unwrap_or(0),
            })
        })
        .collect();
    let mut clients = ClientReport::default();
    let mut latency: BTreeMap<u64, BTreeMap<u16, u64>> = BTreeMap::new();
    for entry in std::fs::read_dir(&args.dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !(name.starts_with("clients-") && name.ends_with(".json")) {
            continue;
        }
        let r: ClientReport =
            serde_json::from_slice(&std::fs::read(&path)?).with_context(|| name.clone())?;
        clients.clients += r.clients;
        clients.subscribed += r.subscribed;
        clients.received += r.received;
        clients.lost += r.lost;
        clients.duplicated += r.duplicated;
        clients.reordered += r.reordered;
        clients.gaps += r.gaps;
        clients.tail_lost += r.tail_lost;
        clients.refusals += r.refusals;
        clients.max_refusals_in_a_row = clients.max_refusals_in_a_row.max(r.max_refusals_in_a_row);
        clients.outages.extend(r.outages);
        for (s, h) in r.latency {
            let e = latency.entry(s).or_default();
            for (b, n) in h {
                *e.entry(b).or_default() += n as u64;
            }
        }
    }
    let samples: Vec<NodeSample> = std::fs::read_to_string(args.dir.join("samples.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let counts: Option<Counts> = std::fs::read(args.dir.join("counts.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let produced: u64 = counts.as_ref().map_or(0, |c| c.counts.iter().sum());

    let hist_between = |from: u64, to: u64| {
        let mut h: BTreeMap<u16, u64> = BTreeMap::new();
        for (_, hs) in latency.range(from / 1000..=to / 1000) {
            for (b, n) in hs {
                *h.entry(*b).or_default() += n;
            }
        }
        h
    };
    let baseline = events.iter().find(|e| e.name == "a");
    let base_p99 = baseline.and_then(|e| p99_ms(&hist_between(e.start, e.end), 0.99));

    let mut md = String::new();
    let mut failures = Vec::new();
    writeln!(
        md,
        "Clients: {} in {} processes' reports; {} subscribed at least once. Produced {} records ({} failed to produce); clients received {}. **Lost {}, duplicated {}, reordered {}**; explicit gaps {}. Refusals {} (longest run in a row for one client: {}).\n",
        clients.clients,
        std::fs::read_dir(&args.dir)?.filter(|e| e.as_ref().is_ok_and(|e| { let n = e.file_name().to_string_lossy().into_owned(); n.starts_with("clients-") && n.ends_with(".json") })).count(),
        clients.subscribed,
        produced,
        counts.as_ref().map_or(0, |c| c.failed),
        clients.received,
        clients.lost,
        clients.duplicated,
        clients.reordered,
        clients.gaps,
        clients.refusals,
        clients.max_refusals_in_a_row,
    )?;
    writeln!(md, "| scenario | clients affected | resumed 50% | 99% | 100% | one client's wait p99 / max | attempts p99 | never resumed | steady clients' p99 (baseline {}) | refusals | max in a row |", base_p99.map_or("-".into(), |v| format!("{v:.0} ms")))?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let mut charts = String::new();
    let mut per_node = String::new();
    for e in &events {
        // Outages that began in the event's window (from its start to its end + 2 s).
        let mine: Vec<&Outage> = clients
            .outages
            .iter()
            .filter(|o| o.down >= e.start && o.down <= e.end + 2000)
            .collect();
        // One figure per resumed outage, sorted (for percentiles).
        let of_resumed = |f: &dyn Fn(&Outage) -> u64| {
            let mut v: Vec<u64> = mine.iter().filter(|o| o.up > 0).map(|o| f(o)).collect();
            v.sort_unstable();
            v
        };
        let resumed = of_resumed(&|o| o.up.saturating_sub(e.reference.max(e.start)));
        // Each client's own wait: from its outage (or the restart) to its resume.
        let waits = of_resumed(&|o| o.up.saturating_sub(o.down.max(e.reference)));
        let attempts = of_resumed(&|o| o.attempts as u64);
        let after_end = mine
            .iter()
            .map(|o| o.up.saturating_sub(e.end.max(e.reference)))
            .max()
            .unwrap_or(0);
        let never = mine.iter().filter(|o| o.up == 0).count();
        let mut affected: Vec<u32> = mine.iter().map(|o| o.client).collect();
        affected.sort_unstable();
        affected.dedup();
        let refusals: u32 = mine.iter().map(|o| o.refusals).sum();
        let max_row = mine.iter().map(|o| o.refusals).max().unwrap_or(0);
        let p99 = p99_ms(&hist_between(e.start, e.end.max(e.start + 1000)), 0.99);
        let secs = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} s", v as f64 / 1000.0));
        let n = resumed.len();
        writeln!(
            md,
            "| ({}) {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            e.name,
            e.what,
            affected.len(),
            secs(pct(&resumed, 0.5)),
            secs(pct(&resumed, 0.99)),
            secs(resumed.last().copied()),
            secs(pct(&waits, 0.99)),
            secs(waits.last().copied()),
            pct(&attempts, 0.99).unwrap_or(0),
            never,
            p99.map_or("-".into(), |v| format!("{v:.0} ms")),
            refusals,
            max_row
        )?;
        if e.name != "a" && n > 0 {
            let last = *resumed.last().unwrap_or(&0) as f64 / 1000.0;
            let longest = *waits.last().unwrap_or(&0) as f64 / 1000.0;
            if longest > args.within_secs {
                failures.push(format!(
                    "({}) a client waited {longest:.1} s from its outage to its resume",
                    e.name
                ));
            }
            let after_end = after_end as f64 / 1000.0;
            if after_end > args.within_secs {
                failures.push(format!(
                    "({}) last resume {after_end:.1} s after the event ended",
                    e.name
                ));
            }
            // ASCII chart: resumed fraction per second since the event.
            writeln!(
                charts,
                "({}) {}: clients resumed, seconds after the event",
                e.name, e.what
            )?;
            let end = (last.ceil() as u64).max(1);
            let step = (end / 30).max(1);
            let mut s = 0;
            while s <= end {
                let done = resumed.partition_point(|&v| v <= s * 1000);
                let bar = "#".repeat(done * 50 / n.max(1));
                writeln!(charts, "  {s:>4} s |{bar:<50}| {done}")?;
                s += step;
            }
            writeln!(charts)?;
        }
        if never > 0 {
            failures.push(format!("({}) {never} clients never resumed", e.name));
        }
        // Per node: CPU seconds and peak RSS over the window, Kafka bytes,
        // handshakes admitted and refused per second at the peak, resume tiers.
        let mut nodes: BTreeMap<&str, Vec<&NodeSample>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.t >= e.start && s.t <= e.end + 5000)
        {
            nodes.entry(&s.node).or_default().push(s);
        }
        for (node, ss) in nodes {
            let first = ss.first().copied();
            let last = ss.last().copied();
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            // Summed over consecutive samples: a restarted node's counters start again
            // from 0 (a drop is counted as a restart, its new value as the increase).
            let d = |k: &str| {
                ss.windows(2)
                    .filter(|w| w[0].up && w[1].up)
                    .map(|w| {
                        let a = w[0].m.get(k).copied().unwrap_or(0.0);
                        let b = w[1].m.get(k).copied().unwrap_or(0.0);
                        if b >= a {
                            b - a
                        } else {
                            b
                        }
                    })
                    .sum::<f64>()
                    + 0.0 // no "-0" for a node that was down
            };
            let peak = |k: &str| {
                ss.windows(2)
                    .map(|w| {
                        let a = w[0].m.get(k).copied().unwrap_or(0.0);
                        let b = w[1].m.get(k).copied().unwrap_or(0.0);
                        let dt = (w[1].t - w[0].t).max(1) as f64 / 1000.0;
                        if b >= a {
                            (b - a) / dt
                        } else {
                            0.0
                        }
                    })
                    .fold(0.0, f64::max)
            };
            // The node's own view of live latency: from a record's timestamp to
            // its first write to a client, the p99 bucket's bound over the window.
            let age_p99 = {
                let mut bounds: Vec<(f64, &str)> = ss
                    .iter()
                    .flat_map(|s| s.m.keys())
                    .filter_map(|k| {
                        let le = k.strip_prefix("pushgate_record_age_seconds_bucket:")?;
                        let bound = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().ok()?
                        };
                        Some((bound, k.as_str()))
                    })
                    .collect();
                bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                bounds.dedup_by(|a, b| a.1 == b.1);
                let total = bounds.last().map_or(0.0, |(_, k)| d(k));
                bounds
                    .iter()
                    .find(|(_, k)| total > 0.0 && d(k) >= 0.99 * total)
                    .map_or("-".to_owned(), |(b, _)| {
                        if b.is_finite() {
                            format!("≤ {:.0} ms", b * 1000.0)
                        } else {
                            "over the last bound".to_owned()
                        }
                    })
            };
            let up: Vec<&&NodeSample> = ss.iter().filter(|s| s.up).collect();
            let secs = (last.t - first.t).max(1) as f64 / 1000.0;
            // CPU seconds over consecutive samples of a running process (a restart
            // starts its CPU time again from 0).
            let cpu = up
                .windows(2)
                .map(|w| {
                    if w[1].cpu_s >= w[0].cpu_s {
                        w[1].cpu_s - w[0].cpu_s
                    } else {
                        w[1].cpu_s
                    }
                })
                .sum::<f64>()
                / secs
                * 100.0
                + 0.0;
            writeln!(
                per_node,
                "| ({}) | {node} | {:.0}% | {:.0} / {:.0} MiB | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {age_p99} |",
                e.name,
                cpu,
                up.first().map_or(0.0, |s| s.rss_kb as f64 / 1024.0),
                up.iter().map(|s| s.rss_kb).max().unwrap_or(0) as f64 / 1024.0,
                last.m.get("pushgate_connections").copied().unwrap_or(0.0),
                peak("pushgate_connections_total"),
                peak("pushgate_connections_refused_total:rate"),
                d("pushgate_replayed_records_total:ring"),
                d("pushgate_replayed_records_total:log"),
                d("pushgate_resume_gaps_total"),
                d("pushgate_catchup_reads_total"),
                d("pushgate_catchup_reads_coalesced_total"),
                d("pushgate_kafka_fetch_bytes_total") / 1e6,
            )?;
        }
    }
    writeln!(md, "\nPer node and scenario (window: the event until 5 s after it ends; CPU of one core; RSS at the window's start / peak; connections at its end; handshakes per second admitted / refused (`connect_rate`) at the busiest second; records replayed from the ring / from the log / resumes given a gap; catch-up reads sent / joined one in flight; MB fetched from Kafka; the node's p99 of `pushgate_record_age_seconds`, a record's timestamp to its first write to a client, as the bound of its bucket):\n")?;
    writeln!(md, "| scenario | node | CPU | RSS | conns | handshakes/s ok / refused | replayed ring / log / gaps | log reads / coalesced | Kafka MB | record age p99 |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    md.push_str(&per_node);
    writeln!(md, "\nResumed clients over time:\n\n```\n{charts}```")?;
    print!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md)?;
    }
    if clients.lost + clients.duplicated + clients.reordered > 0 {
        failures.push(format!(
            "lost {}, duplicated {}, reordered {}",
            clients.lost, clients.duplicated, clients.reordered
        ));
    }
    if clients.subscribed < clients.clients {
        failures.push(format!(
            "{} of {} clients never subscribed",
            clients.clients - clients.subscribed,
            clients.clients
        ));
    }
    if counts.is_none() {
        failures.push("no producer counts".into());
    }
    if args.check && !failures.is_empty() {
        anyhow::bail!("fleet check failed: {}", failures.join("; "));
    }
    Ok(())
}
