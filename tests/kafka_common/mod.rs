//! Kafka test harness: a real tansu broker, the independent kafka-python client, HAProxy.
//!
//! Everything is started on free 127.0.0.1 ports and stopped on drop
//! (`kill_on_drop`), so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The tansu binary: `$TANSU`, then PATH, then ~/.cargo/bin (scripts/kafka-setup installs it).
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("tansu"))
        .chain(std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu")))
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("tansu not found: run scripts/kafka-setup")
}

pub fn tool_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_common/kafka_tool.py")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tansu broker on its own port; `sqlite` storage survives a restart.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub async fn memory() -> Self {
        Self::start("memory://tansu/".into(), tempfile::tempdir().unwrap()).await
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // tansu reads the sqlite URL's path relative to its working directory.
        Self::start("sqlite://tansu.db".into(), dir).await
    }

    async fn start(storage: String, dir: tempfile::TempDir) -> Self {
        let mut broker = Self {
            child: None,
            port: free_port(),
            storage,
            dir,
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("broker.log")).unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.port).await;
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, config: &[&str]) {
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://{}", self.addr())]);
        for c in config {
            cmd.args(["--config", c]);
        }
        let out = cmd.output().await.unwrap();
        assert!(out.status.success(), "topic create: {out:?}");
    }

    pub async fn delete_topic(&self, name: &str) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "delete",
                name,
                "--broker",
                &format!("tcp://{}", self.addr()),
            ])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "topic delete: {out:?}");
    }

    /// SIGKILL: the broker vanishes mid-request.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// Runs the kafka-python tool and returns its stdout.
pub async fn tool(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(tool_path())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "kafka_tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts the tool in the background (a load generator).
pub fn spawn_tool(args: &[&str]) -> Child {
    Command::new("python3")
        .arg(tool_path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3")
}

/// Produces `count` records (seq `start..`) with kafka-python, waiting for each ack.
pub async fn produce(broker: &Broker, topic: &str, start: u64, count: u64) {
    let out = tool(&[
        "produce",
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--start",
        &start.to_string(),
        "--count",
        &count.to_string(),
        "--wait",
    ])
    .await;
    assert!(out.contains(&format!("acked {count}")), "{out}");
}

/// One record as the independent client sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Logged {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<String>,
    pub seq: Option<u64>,
}

/// Every record of `topic`, read back by kafka-python.
pub async fn dump(broker: &Broker, topic: &str) -> Vec<Logged> {
    let out = tool(&["dump", "--brokers", &broker.addr(), "--topic", topic]).await;
    assert!(out.trim_end().ends_with("end"), "{out}");
    let mut all: Vec<Logged> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Logged {
                partition: v["p"].as_u64().unwrap() as u32,
                offset: v["o"].as_u64().unwrap(),
                key: v["key"].as_str().map(str::to_owned),
                seq: v["seq"].as_u64(),
            }
        })
        .collect();
    all.sort();
    all
}

/// Produces `records` with kafka-python's `raw` subcommand (one JSON object per
/// record: `key`/`value` sent as JSON text, `key_raw`/`value_raw` as exact
/// bytes, a null value as a tombstone, `headers`), waiting for each ack.
/// Returns where each record landed, in order.
pub async fn produce_raw(
    broker: &Broker,
    topic: &str,
    records: &[serde_json::Value],
) -> Vec<(u32, u64)> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("python3")
        .arg(tool_path())
        .args(["raw", "--brokers", &broker.addr(), "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = String::new();
    for r in records {
        lines.push_str(&r.to_string());
        lines.push('\n');
    }
    stdin.write_all(lines.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kafka_tool raw did not finish in time")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && stdout.contains(&format!("acked {}", records.len())),
        "kafka_tool raw failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["p"].as_u64().unwrap() as u32, v["o"].as_u64().unwrap())
        })
        .collect()
}

/// Every record of `topic` as kafka-python reads it, in (partition, offset)
/// order: `{"p","o","key","value","headers"}` (value as text, null for a tombstone).
/// With `expect`, reads until that many records arrived (at most 30 s) rather
/// than up to the end offsets: tansu reports the end of a batch of several
/// records (librdkafka's) as its first offset + 1.
pub async fn dump_raw(
    broker: &Broker,
    topic: &str,
    expect: Option<usize>,
) -> Vec<serde_json::Value> {
    let expect = expect.unwrap_or(0).to_string();
    let out = tool(&[
        "dump",
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--expect",
        &expect,
    ])
    .await;
    assert!(out.trim_end().ends_with("end"), "{out}");
    let mut all: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    all.sort_by_key(|v| (v["p"].as_u64(), v["o"].as_u64()));
    all
}

pub async fn low_watermarks(broker: &Broker, topic: &str) -> Vec<u64> {
    let out = tool(&["low", "--brokers", &broker.addr(), "--topic", topic]).await;
    serde_json::from_str(out.trim()).unwrap()
}

/// A pushgate config for the Kafka source. `topics`: (name, ring_records).
pub fn kafka_config(brokers: &str, topics: &[(&str, usize)], extra: &str) -> String {
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"
static_dir = ""
shutdown_grace = "3s"
[source]
kind = "kafka"
warm_start_records = 1000
[auth]
anonymous_subscribe = true
anonymous_publish = true
{extra}
[kafka]
brokers = "{brokers}"
metadata_refresh_interval = "500ms"
catchup_timeout = "5s"
startup_timeout = "10s"
"#
    );
    for (name, ring) in topics {
        out.push_str(&format!(
            "[[topics]]\nname = \"{name}\"\nring_records = {ring}\n"
        ));
    }
    out
}

/// HAProxy in front of `backends`, long idle timeouts, health checks on /readyz.
pub struct HaProxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    pub async fn start(backends: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = haproxy_config(port, backends);
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy not found: run scripts/kafka-setup");
        wait_port(port).await;
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

/// The shipped deploy/haproxy.cfg itself, on test ports: its frontend bound to
/// 127.0.0.1:`port`, its servers replaced by `backends`, health checks every 200 ms.
pub fn haproxy_config(port: u16, backends: &[SocketAddr]) -> String {
    let shipped = include_str!("../../deploy/haproxy.cfg");
    let mut cfg = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("bind ") {
            cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if trimmed.starts_with("server ") {
            continue;
        } else if trimmed.starts_with("default-server ") {
            cfg.push_str("    default-server inter 200ms fall 2 rise 2\n");
        } else if trimmed.starts_with("maxconn ") {
            cfg.push_str("    maxconn 4096\n");
        } else {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    assert!(
        cfg.contains("backend nodes\n"),
        "deploy/haproxy.cfg has a `nodes` backend"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server n{i} {b} check\n"));
    }
    cfg
}

/// (partition, offset) -> count: what a client received, for 0-lost/0-dup checks.
pub fn tally(positions: &[(u32, u64)]) -> BTreeMap<(u32, u64), usize> {
    let mut out = BTreeMap::new();
    for p in positions {
        *out.entry(*p).or_insert(0) += 1;
    }
    out
}

/// Reads one metric's value (sum over its label sets) from a node's /metrics.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Produces `count` records (seq `start..`) over keys k0..k{keys-1}, waiting for each ack.
pub async fn produce_keys(broker: &Broker, topic: &str, start: u64, count: u64, keys: u32) {
    let out = tool(&[
        "produce",
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--start",
        &start.to_string(),
        "--count",
        &count.to_string(),
        "--keys",
        &keys.to_string(),
        "--wait",
    ])
    .await;
    assert!(out.contains(&format!("acked {count}")), "{out}");
}

/// Grows `topic` to `partitions` while the broker runs; returns how (tansu 0.6
/// lacks CreatePartitions: its sqlite storage is written instead, so the
/// broker must be `Broker::sqlite`).
pub async fn add_partitions(broker: &Broker, topic: &str, partitions: u32) -> String {
    let db = broker.dir.path().join("tansu.db");
    let out = tool(&[
        "add-partitions",
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--count",
        &partitions.to_string(),
        "--sqlite",
        &db.display().to_string(),
    ])
    .await;
    assert!(out.contains("added via"), "{out}");
    out.trim().to_owned()
}
