//! The Kinesis source against kinesalite (a Kinesis API implementation, in
//! memory on 127.0.0.1) and boto3, a client that shares no code with the Rust SDK.
//!
//! Every test starts its own kinesalite on a free port (`tests/kinesis/kinesalite.js`)
//! and its own pushgate processes (the real binary); all of them are killed
//! when the test ends. Needs `scripts/kinesis-setup`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use pushgate::cursor::{Cursor, ShardPos};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kinesis")
}

/// kinesalite in memory on 127.0.0.1, on a port of its own choosing.
struct Kinesalite {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    port: u16,
}

impl Kinesalite {
    async fn start() -> Self {
        let mut child = Command::new("node")
            .arg(dir().join("kinesalite.js"))
            .arg("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (scripts/kinesis-setup installs kinesalite)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("kinesalite did not start")
            .unwrap()
            .expect("kinesalite exited");
        let port = line
            .strip_prefix("listening ")
            .expect("listening line")
            .parse()
            .unwrap();
        Self {
            child,
            stdin,
            stdout,
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Moves kinesalite's clock forward (retention and iterator expiry follow it).
    async fn advance(&mut self, by: Duration) {
        self.stdin
            .write_all(format!("advance {}\n", by.as_millis()).as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(line.starts_with("advanced "), "{line}");
    }

    async fn tool(&self, stream: &str, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(dir().join(".venv/bin/python"))
                .arg(dir().join("kinesis_tool.py"))
                .args(args)
                .args(["--endpoint", &self.endpoint(), "--stream", stream])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kinesis_tool timed out")
        .expect("python venv (scripts/kinesis-setup)");
        assert!(
            out.status.success(),
            "kinesis_tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn_tool(&self, stream: &str, args: &[&str]) -> Child {
        Command::new(dir().join(".venv/bin/python"))
            .arg(dir().join("kinesis_tool.py"))
            .args(args)
            .args(["--endpoint", &self.endpoint(), "--stream", stream])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn create(&self, stream: &str, shards: u32) {
        self.tool(stream, &["create", "--shards", &shards.to_string()])
            .await;
    }

    /// Puts `count` records (seq `start..`), keyed `k<seq % keys>`; returns what boto3 was told.
    async fn put(&self, stream: &str, start: u64, count: u64, keys: u32) -> Vec<Put> {
        let out = self
            .tool(
                stream,
                &[
                    "put",
                    "--start",
                    &start.to_string(),
                    "--count",
                    &count.to_string(),
                    "--keys",
                    &keys.to_string(),
                ],
            )
            .await;
        parse_puts(&out)
    }

    async fn shards(&self, stream: &str) -> Vec<Value> {
        self.tool(stream, &["shards"])
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[derive(Debug, Clone)]
struct Put {
    seq: u64,
    key: String,
    shard: u32,
    sn: String,
}

fn parse_puts(out: &str) -> Vec<Put> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Put {
                seq: v["seq"].as_u64().unwrap(),
                key: v["key"].as_str().unwrap().to_owned(),
                shard: shard_number(v["shard"].as_str().unwrap()),
                sn: v["sn"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

fn shard_number(id: &str) -> u32 {
    id.rsplit('-').next().unwrap().parse().unwrap()
}

fn config(endpoint: &str, streams: &[(&str, usize)]) -> String {
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"
static_dir = ""
shutdown_grace = "3s"
[source]
kind = "kinesis"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[kinesis]
region = "us-east-1"
endpoint_url = "{endpoint}"
poll_interval = "200ms"
shard_refresh_interval = "300ms"
startup_timeout = "20s"
request_timeout = "5s"
"#
    );
    for (name, ring) in streams {
        out.push_str(&format!(
            "[[topics]]\nname = \"{name}\"\nring_records = {ring}\n"
        ));
    }
    out
}

/// A pushgate node reading `streams` (name, ring_records) from kinesalite.
async fn node(k: &Kinesalite, streams: &[(&str, usize)]) -> (Process, tempfile::TempDir) {
    // The standard AWS credential chain, from the environment (kinesalite checks none).
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start(dir.path(), &config(&k.endpoint(), streams), "127.0.0.1:0").await;
    (process, dir)
}

fn seq(record: &Value) -> u64 {
    record["data"]["seq"].as_u64().unwrap()
}

/// (partition, sequence number) of a record; the offset must be a decimal string.
fn position(record: &Value) -> (u32, String) {
    let offset = record["offset"]
        .as_str()
        .unwrap_or_else(|| panic!("offset is a string: {record}"));
    assert!(offset.bytes().all(|b| b.is_ascii_digit()), "{record}");
    (
        record["partition"].as_u64().unwrap() as u32,
        offset.to_owned(),
    )
}

/// Decimal strings without leading zeros compare as numbers by (length, text).
fn seq_key(sn: &str) -> (usize, &str) {
    (sn.len(), sn)
}

/// Sequence numbers strictly increase within each shard.
fn assert_shard_order(positions: &[(u32, String)]) {
    let mut last: HashMap<u32, &str> = HashMap::new();
    for (p, sn) in positions {
        if let Some(prev) = last.insert(*p, sn) {
            assert!(
                seq_key(sn) > seq_key(prev),
                "shard {p}: {sn} came after {prev}"
            );
        }
    }
}

#[tokio::test]
async fn records_put_with_boto3_reach_ws_and_sse_subscribers_by_key_in_shard_order() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let k = Kinesalite::start().await;
    k.create("s", 2).await;
    // Some records before the node starts: its warm start reads them.
    let before = k.put("s", 0, 10, 5).await;
    let (node, _dir) = node(&k, &[("s", 64)]).await;
    let http = reqwest::Client::new();

    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "keys": ["k1", "k3"], "snapshot": false}))
        .await;
    let start = Cursor::decode(reply["cursor"].as_str().unwrap()).unwrap();
    assert!(start.shards.is_some(), "a version 2 cursor");
    let mut sse = SseClient::connect(
        &http,
        node.addr,
        "topic=s&key=k1&key=k3&snapshot=false",
        None,
    )
    .await;
    assert_eq!(sse.next().await.event, "subscribed");

    // boto3's PutRecords, then pushgate's own publish API (PutRecords through the Rust SDK).
    let mut puts = k.put("s", 10, 40, 5).await;
    for seq in 50..60u64 {
        let key = format!("k{}", seq % 5);
        let answer = publish(&http, node.addr, "s", &key, json!({"seq": seq})).await;
        let sn = answer["offset"]
            .as_str()
            .expect("offset is a string")
            .to_owned();
        let shard = answer["partition"].as_u64().unwrap() as u32;
        assert!(shard < 2, "{answer}");
        assert!(Cursor::decode(answer["cursor"].as_str().unwrap())
            .unwrap()
            .shards
            .is_some());
        puts.push(Put {
            seq,
            key,
            shard,
            sn,
        });
    }
    let shards_used: HashSet<u32> = puts.iter().map(|p| p.shard).collect();
    assert_eq!(shards_used.len(), 2, "records spread over both shards");
    let expected: BTreeMap<u64, (u32, String)> = puts
        .iter()
        .filter(|p| p.key == "k1" || p.key == "k3")
        .map(|p| (p.seq, (p.shard, p.sn.clone())))
        .collect();
    assert_eq!(expected.len(), 20);

    let got = ws.records(expected.len()).await;
    // Measured, not asserted: arrival at kinesalite (its ApproximateArrivalTimestamp)
    // to this client, with poll_interval = 200ms.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut lat: Vec<i64> = got
        .iter()
        .filter(|r| seq(r) >= 50)
        .map(|r| now_ms - r["timestamp"].as_i64().unwrap())
        .collect();
    lat.sort();
    eprintln!(
        "kinesis: publish -> WebSocket, last {} records, oldest waited {} ms (median {} ms) by the time all arrived",
        lat.len(),
        lat.last().unwrap(),
        lat[lat.len() / 2]
    );
    let positions: Vec<(u32, String)> = got.iter().map(position).collect();
    assert_shard_order(&positions);
    let seen: BTreeMap<u64, (u32, String)> = got
        .iter()
        .map(|r| {
            assert!(matches!(r["key"].as_str(), Some("k1" | "k3")), "{r}");
            assert!(r["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
            (seq(r), position(r))
        })
        .collect();
    assert_eq!(
        seen, expected,
        "WS: exactly the matching records, where boto3 was told they went"
    );
    ws.expect_silence(Duration::from_millis(500)).await;

    let events = sse.records(expected.len()).await;
    let sse_positions: Vec<(u32, String)> = events.iter().map(|e| position(&e.json())).collect();
    assert_shard_order(&sse_positions);
    let sse_seen: BTreeMap<u64, (u32, String)> = events
        .iter()
        .map(|e| (seq(&e.json()), position(&e.json())))
        .collect();
    assert_eq!(sse_seen, expected, "SSE: exactly the matching records");
    for e in &events {
        assert_eq!(
            e.id.as_deref(),
            e.json()["cursor"].as_str(),
            "SSE id is the cursor"
        );
    }
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());
    let metrics = http
        .get(format!("http://{}/metrics", node.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pushgate_kinesis_millis_behind_latest{stream=\"s\",shard=\"1\"}"),
        "{metrics}"
    );

    // The warm start: a snapshot of the keys' latest values, from before the node started.
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "s", "keys": ["k0"]})).await;
    let snap = ws.json().await;
    assert_eq!(snap["snapshot"], true, "{snap}");
    let last_k0 = puts
        .iter()
        .chain(&before)
        .filter(|p| p.key == "k0")
        .map(|p| p.seq)
        .max();
    assert_eq!(Some(seq(&snap)), last_k0);

    // Data that is not JSON arrives as base64 with the documented flag.
    k.tool("s", &["raw"]).await; // (no input: nothing put)
    let mut child = Command::new(dir().join(".venv/bin/python"))
        .arg(dir().join("kinesis_tool.py"))
        .args(["raw", "--endpoint", &k.endpoint(), "--stream", "s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "s", "keys": ["bin"], "snapshot": false}))
        .await;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"key\": \"bin\", \"data_b64\": \"/wA=\"}\n")
        .await
        .unwrap();
    drop(stdin);
    child.wait().await.unwrap();
    let bin = ws.records(1).await.remove(0);
    assert_eq!(bin["encoding"], "base64", "{bin}");
    assert_eq!(bin["data"], "/wA=");
}

/// The `cursor` of `GET /topics` for the first topic.
async fn frontier(addr: std::net::SocketAddr) -> String {
    let v: Value = reqwest::get(format!("http://{addr}/topics"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["topics"][0]["cursor"].as_str().unwrap().to_owned()
}

/// Waits until every node has read up to the last of `puts` in each shard.
async fn wait_read(nodes: &[std::net::SocketAddr], puts: &[Put]) {
    let mut last: BTreeMap<u32, &str> = BTreeMap::new();
    for p in puts {
        let slot = last.entry(p.shard).or_insert(&p.sn);
        if seq_key(&p.sn) > seq_key(slot) {
            *slot = &p.sn;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut cursors = HashSet::new();
        let mut all_read = true;
        for addr in nodes {
            let text = frontier(*addr).await;
            let shards = Cursor::decode(&text).unwrap().shards.unwrap();
            for (shard, sn) in &last {
                let want = ShardPos::After(pushgate::cursor::decimal_to_position(sn).unwrap());
                all_read &= shards.get(*shard as usize) == Some(&want);
            }
            cursors.insert(text);
        }
        if all_read {
            assert_eq!(
                cursors.len(),
                1,
                "the same positions make the same cursor on every node"
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never agreed: {cursors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads records until every seq in `want` has arrived; fails on a duplicate.
async fn collect_exactly(ws: &mut WsClient, want: &HashSet<u64>) -> Vec<Value> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    while seen.len() < want.len() {
        let r = ws.records(1).await.remove(0);
        let s = seq(&r);
        assert!(seen.insert(s), "seq {s} delivered twice");
        assert!(want.contains(&s), "seq {s} was not expected");
        got.push(r);
    }
    got
}

#[tokio::test]
async fn a_client_resumes_on_a_different_node_with_nothing_lost_or_repeated() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let k = Kinesalite::start().await;
    k.create("s", 2).await;
    k.put("s", 0, 20, 4).await;
    // Node A with a ring of 64; node B with a ring of 4, so B serves the
    // resume from Kinesis itself (a catch-up read at the cursor's sequence number).
    let (a, _da) = node(&k, &[("s", 64)]).await;
    let (b, _db) = node(&k, &[("s", 4)]).await;

    let mut ws = WsClient::connect(a.addr).await;
    ws.subscribe(json!({"topic": "s", "snapshot": false})).await;
    k.put("s", 20, 30, 4).await;
    let first = collect_exactly(&mut ws, &(20..50).collect()).await;
    // The client stops after a record in the middle.
    let cut = &first[11];
    let cursor = cut["cursor"].as_str().unwrap().to_owned();
    let delivered: HashSet<u64> = first[..=11].iter().map(seq).collect();
    drop(ws);

    let puts = k.put("s", 50, 30, 4).await;
    let want: HashSet<u64> = (20..80).filter(|s| !delivered.contains(s)).collect();
    // Both nodes have read all 80 (and their frontier cursors, made of
    // Kinesis's own sequence numbers, are the same text), so the resume is all replay.
    wait_read(&[a.addr, b.addr], &puts).await;
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = collect_exactly(&mut ws, &want).await;
    assert_shard_order(&got.iter().map(position).collect::<Vec<_>>());
    ws.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(
        ws.lives.last().unwrap()["replayed"].as_u64().unwrap() as usize,
        want.len(),
        "everything missed was replayed (none of it arrived live)"
    );

    // The same resume over SSE with Last-Event-ID, on node A (served from its ring).
    let http = reqwest::Client::new();
    let mut sse = SseClient::connect(&http, a.addr, "topic=s", Some(&cursor)).await;
    let sub = sse.next().await.json();
    assert_eq!(sub["recovered"], true, "{sub}");
    let events = sse.records(want.len()).await;
    let seqs: HashSet<u64> = events.iter().map(|e| seq(&e.json())).collect();
    assert_eq!(seqs, want);
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());

    // A cursor ahead of a node is never answered with a gap: a node that has
    // not read that far says retry (a sequence number past the end of shard 0).
    let mut ahead = Cursor::decode(&cursor).unwrap();
    let mut shards = ahead.shards.take().unwrap();
    shards[0] = ShardPos::After(pushgate::cursor::decimal_to_position(&"9".repeat(56)).unwrap());
    ahead.shards = Some(shards);
    let mut ws = WsClient::connect(b.addr).await;
    ws.send(json!({"type": "subscribe", "topic": "s", "cursor": ahead.encode()}))
        .await;
    let err = ws.json().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "unavailable", "{err}");
}

#[tokio::test]
async fn split_then_merge_under_load_loses_and_repeats_nothing_and_keeps_key_order() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let k = Kinesalite::start().await;
    k.create("s", 2).await;
    let (a, _da) = node(&k, &[("s", 4096)]).await;
    let mut all = WsClient::connect(a.addr).await;
    all.subscribe(json!({"topic": "s", "snapshot": false}))
        .await;
    let mut early = WsClient::connect(a.addr).await;
    early
        .subscribe(json!({"topic": "s", "keys": ["k1", "k2", "k5"], "snapshot": false}))
        .await;

    // 600 records at about 150 a second over 8 keys, while shard 0 splits and
    // its two children then merge back into one.
    const N: u64 = 600;
    const AFTER: u64 = 60;
    let mut load = k.spawn_tool(
        "s",
        &[
            "put",
            "--count",
            &N.to_string(),
            "--keys",
            "8",
            "--batch",
            "10",
            "--rate",
            "150",
        ],
    );
    let mut load_out = load.stdout.take().unwrap();
    let load_lines = tokio::spawn(async move {
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut load_out, &mut out)
            .await
            .unwrap();
        out
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A client that stops before the split: its cursor names shard 0 while open.
    let mut early_got = early.records(10).await;
    let early_cursor = early_got.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(early);
    let split: Vec<String> = serde_json::from_str(
        k.tool("s", &["split", "--shard", "shardId-000000000000"])
            .await
            .trim(),
    )
    .unwrap();
    assert_eq!(split, vec!["shardId-000000000002", "shardId-000000000003"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let merged: Vec<String> = serde_json::from_str(
        k.tool(
            "s",
            &[
                "merge",
                "--shard",
                "shardId-000000000002",
                "--adjacent",
                "shardId-000000000003",
            ],
        )
        .await
        .trim(),
    )
    .unwrap();
    assert_eq!(merged, vec!["shardId-000000000004"]);
    let status = tokio::time::timeout(Duration::from_secs(60), load.wait())
        .await
        .expect("the load finished")
        .unwrap();
    assert!(status.success());
    let mut puts = parse_puts(&load_lines.await.unwrap());
    assert_eq!(puts.len() as u64, N);
    // More records after the merge, so the merged child certainly gets some
    // however long the split and merge took (on a loaded machine the load
    // above could end before the merge).
    let after = k
        .tool(
            "s",
            &[
                "put",
                "--count",
                &AFTER.to_string(),
                "--start",
                &N.to_string(),
                "--keys",
                "8",
                "--batch",
                "10",
            ],
        )
        .await;
    puts.extend(parse_puts(&after));
    assert_eq!(puts.len() as u64, N + AFTER);
    let shards_used: HashSet<u32> = puts.iter().map(|p| p.shard).collect();
    for shard in [0, 1, 2, 3, 4] {
        assert!(
            shards_used.contains(&shard),
            "records went to shard {shard}: {shards_used:?}"
        );
    }
    let shards = k.shards("s").await;
    assert_eq!(
        shards.iter().filter(|s| s["closed"] == true).count(),
        3,
        "{shards:?}"
    );

    // Every record exactly once, and each key's records in the order they were put.
    let got = collect_exactly(&mut all, &(0..N + AFTER).collect()).await;
    let mut last_of: HashMap<String, u64> = HashMap::new();
    for r in &got {
        let key = r["key"].as_str().unwrap().to_owned();
        let s = seq(r);
        if let Some(prev) = last_of.insert(key.clone(), s) {
            assert!(s > prev, "key {key}: seq {s} after {prev}");
        }
    }
    assert_shard_order(&got.iter().map(position).collect::<Vec<_>>());
    all.expect_silence(Duration::from_millis(500)).await;

    // The last cursor closes the parents (0, 2, 3) and the closed parents stay closed.
    let last = Cursor::decode(got.last().unwrap()["cursor"].as_str().unwrap()).unwrap();
    let shard_pos = last.shards.unwrap();
    assert_eq!(shard_pos.len(), 5);
    for p in [0, 2, 3] {
        assert_eq!(
            shard_pos[p],
            ShardPos::Closed,
            "shard {p} closed in the cursor"
        );
    }
    for p in [1, 4] {
        assert!(matches!(shard_pos[p], ShardPos::After(_)), "shard {p}");
    }

    // The client that stopped before the split resumes on a node started
    // after the merge: the rest of shard 0, then its children, then theirs.
    let (b, _db) = node(&k, &[("s", 4096)]).await;
    let seen_early: HashSet<u64> = early_got.drain(..).map(|r| seq(&r)).collect();
    let keys = ["k1", "k2", "k5"];
    let want: HashSet<u64> = puts
        .iter()
        .filter(|p| keys.contains(&p.key.as_str()) && !seen_early.contains(&p.seq))
        .map(|p| p.seq)
        .collect();
    let max_seen = *seen_early.iter().max().unwrap();
    assert!(want
        .iter()
        .all(|s| *s > max_seen || !seen_early.contains(s)));
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "keys": keys, "cursor": early_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let resumed = collect_exactly(&mut ws, &want).await;
    let mut last_of: HashMap<String, u64> = HashMap::new();
    for r in &resumed {
        let key = r["key"].as_str().unwrap().to_owned();
        if let Some(prev) = last_of.insert(key.clone(), seq(r)) {
            assert!(seq(r) > prev, "key {key}: seq {} after {prev}", seq(r));
        }
    }
    ws.expect_silence(Duration::from_millis(500)).await;

    // A cursor naming closed parents resumes on another node with nothing more to send.
    let end_cursor = got.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": end_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    ws.expect_silence(Duration::from_millis(500)).await;
    k.put("s", N, 4, 8).await;
    let tail: HashSet<u64> = collect_exactly(&mut ws, &(N..N + 4).collect())
        .await
        .iter()
        .map(seq)
        .collect();
    assert_eq!(tail.len(), 4);
}

#[tokio::test]
async fn a_resume_older_than_retention_gets_recovered_false_and_a_gap() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let mut k = Kinesalite::start().await;
    k.create("s", 1).await;
    k.put("s", 0, 10, 2).await;
    // Node A keeps a ring of 4, so an old cursor needs Kinesis itself.
    let (a, _da) = node(&k, &[("s", 4)]).await;
    let mut ws = WsClient::connect(a.addr).await;
    let start = ws.subscribe(json!({"topic": "s", "snapshot": false})).await;
    k.put("s", 10, 2, 2).await;
    ws.records(2).await;
    drop(ws);
    // A client that has seen nothing of the shard: everything retained, in order.
    let mut from_start = Cursor::decode(start["cursor"].as_str().unwrap()).unwrap();
    from_start.shards = Some(vec![ShardPos::Start]);
    let mut ws = WsClient::connect(a.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": from_start.encode(), "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed = ws.records(12).await;
    let seqs: Vec<u64> = replayed.iter().map(seq).collect();
    assert_eq!(seqs, (0..12).collect::<Vec<_>>());
    // The cursor of a client that stopped after record 2.
    let old_cursor = replayed[2]["cursor"].as_str().unwrap().to_owned();
    drop(ws);

    // Before retention: the resume is served from Kinesis (older than A's ring of 4).
    let mut ws = WsClient::connect(a.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": old_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let seqs: Vec<u64> = ws.records(9).await.iter().map(seq).collect();
    assert_eq!(seqs, (3..12).collect::<Vec<_>>());
    ws.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(ws.lives.last().unwrap()["replayed"], 9);
    drop(ws);

    // kinesalite trims records older than the stream's retention (24 h) from
    // its own clock: move it past that, then put fresh records.
    k.advance(Duration::from_secs(25 * 3600)).await;
    k.put("s", 100, 3, 2).await;

    // Node A held the old positions in its ring no longer: Kinesis's trim
    // horizon is past them, so the client is told plainly.
    let mut ws = WsClient::connect(a.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": old_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let gap = ws.json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "retention", "{gap}");

    // A node started after the trim never saw the old records at all.
    let (b, _db) = node(&k, &[("s", 64)]).await;
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": old_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let gap = ws.json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "retention", "{gap}");
    // The earliest cursor resumes with exactly what is retained.
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": gap["earliest"], "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let seqs: Vec<u64> = ws.records(3).await.iter().map(seq).collect();
    assert_eq!(seqs, vec![100, 101, 102]);
}

#[tokio::test]
async fn a_recreated_stream_is_detected_and_old_cursors_are_not_recovered() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let k = Kinesalite::start().await;
    k.create("s", 1).await;
    k.put("s", 0, 3, 1).await;
    let (a, _da) = node(&k, &[("s", 64)]).await;
    let old_cursor = frontier(a.addr).await;
    let mut live = WsClient::connect(a.addr).await;
    live.subscribe(json!({"topic": "s", "snapshot": false}))
        .await;
    k.tool("s", &["delete"]).await;
    // kinesalite reports the creation time in whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    k.create("s", 1).await;
    k.put("s", 10, 2, 1).await;
    // The running node notices the new incarnation: its subscribers are told
    // (close 4004) and resume; the old cursor is then not recovered.
    assert_eq!(live.close_code().await, Some(4004));
    let deadline = tokio::time::Instant::now() + WAIT;
    let reply = loop {
        let mut ws = WsClient::connect(a.addr).await;
        ws.send(json!({"type": "subscribe", "topic": "s", "cursor": old_cursor, "snapshot": true}))
            .await;
        let reply = ws.json().await;
        if reply["type"] == "subscribed" {
            let gap = ws.json().await;
            assert_eq!(gap["reason"], "epoch", "{gap}");
            // The new incarnation's records only: the latest value (a snapshot
            // taken while the node had read 10 may be followed by 11, live).
            loop {
                let r = ws.records(1).await.remove(0);
                assert!(matches!(seq(&r), 10 | 11), "{r}");
                if seq(&r) == 11 {
                    break;
                }
            }
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "warming up: {reply}");
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply["recovered"], false, "{reply}");
    let (b, _db) = node(&k, &[("s", 64)]).await;
    let new_cursor = frontier(b.addr).await;
    assert_ne!(
        Cursor::decode(&old_cursor).unwrap().epoch,
        Cursor::decode(&new_cursor).unwrap().epoch,
        "the epoch names the stream's incarnation (ARN and creation time)"
    );
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "s", "cursor": old_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let gap = ws.json().await;
    assert_eq!(gap["reason"], "epoch", "{gap}");
}

#[tokio::test]
async fn version_1_cursors_still_resume_on_embedded_topics_and_version_2_ones_are_foreign() {
    if !tiers(&["kinesis"]) {
        return;
    }
    let server = TestServer::start().await;
    for seq in 0..6u64 {
        server.publish("one", "a", json!({"seq": seq})).await;
    }
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let epoch = Cursor::decode(reply["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    // A version 1 cursor written byte by byte, as every cursor handed out before version 2.
    let mut raw = vec![1u8];
    raw.extend_from_slice(&epoch.to_le_bytes());
    raw.extend_from_slice(&[1, 2]); // one partition, next offset 2
    use base64::Engine;
    let v1 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "one", "cursor": v1, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let seqs: Vec<u64> = ws.records(4).await.iter().map(seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    // Records of embedded topics keep numeric offsets and version 1 cursors.
    let mut ws2 = server.ws().await;
    ws2.subscribe(json!({"topic": "one", "cursor": v1, "snapshot": false}))
        .await;
    let r = ws2.records(1).await.remove(0);
    assert!(r["offset"].is_u64(), "{r}");
    assert!(Cursor::decode(r["cursor"].as_str().unwrap())
        .unwrap()
        .shards
        .is_none());

    // A version 2 cursor (of a Kinesis stream) on an embedded topic: a gap, never a misread.
    let v2 = Cursor::with_shards(epoch, vec![ShardPos::Start]).encode();
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "one", "cursor": v2, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let gap = ws.json().await;
    assert_eq!(gap["reason"], "epoch", "{gap}");
    server.stop().await;
}
