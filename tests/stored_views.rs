//! The view is a cache of the log (issue 30 item 3): on the embedded log, a
//! snapshot of a view larger than its memory bounds (`view_max_keys`,
//! `view_max_bytes`) reads the evicted keys' latest records from the log's
//! `latest` table, whole and with an exact seam under concurrent writes, over
//! WebSocket and SSE; a restarted node (its memory holding only the warm
//! start's tail) and a log from before the table (rebuilt at open) still give
//! complete snapshots. Checked key by key against the publish answers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, WAIT};
use serde_json::{json, Value};

/// `t`: at most 100 keys per partition in memory; `b`: at most 150,000
/// bytes of view for the whole topic (about 200 of these records).
const CONFIG: &str = r#"
[limits]
publish_rate = 1000000.0
publish_burst = 1000000.0
queue_bytes = 65536
[[topics]]
name = "t"
partitions = 3
ring_records = 64
view_max_keys = 100
[[topics]]
name = "b"
partitions = 3
ring_records = 64
view_max_bytes = 150000
"#;

/// What was published to one topic: per key, every (partition, offset, n) in order.
#[derive(Default)]
struct Log {
    topic: String,
    by_key: HashMap<String, Vec<(u64, u64, u64)>>,
}

impl Log {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            ..Self::default()
        }
    }

    fn latest(&self) -> HashMap<String, (u64, u64, u64)> {
        self.by_key
            .iter()
            .map(|(k, v)| (k.clone(), *v.last().unwrap()))
            .collect()
    }
}

/// Publishes `records` (key, n) in one request and notes where each landed.
async fn publish(server: &TestServer, log: &Mutex<Log>, records: &[(String, u64)]) {
    let topic = log.lock().unwrap().topic.clone();
    let batch: Vec<(String, Value)> = records
        .iter()
        .map(|(k, n)| (k.clone(), json!({"n": n, "pad": "x".repeat(300)})))
        .collect();
    let answer = server.publish_batch(&topic, &batch).await;
    let placed = answer["records"].as_array().unwrap();
    let mut log = log.lock().unwrap();
    for ((key, n), at) in records.iter().zip(placed) {
        let p = at["partition"].as_u64().unwrap();
        let o = at["offset"].as_u64().unwrap();
        log.by_key.entry(key.clone()).or_default().push((p, o, *n));
    }
}

fn key(i: usize) -> String {
    format!("k{i:06}")
}

/// Keys below this are deleted (tombstones) after the seed: no snapshot may list them.
const DELETED: usize = 50;

/// Publishes `count` keys, then tombstones for the first [`DELETED`] (the
/// oldest, long evicted from memory: only the log's table can forget them).
async fn seed(server: &TestServer, log: &Mutex<Log>, count: usize) {
    let all: Vec<(String, u64)> = (0..count).map(|i| (key(i), 0)).collect();
    for chunk in all.chunks(1000) {
        publish(server, log, chunk).await;
    }
    let topic = log.lock().unwrap().topic.clone();
    let tombstones: Vec<(String, Value)> = (0..DELETED).map(|i| (key(i), Value::Null)).collect();
    server.publish_batch(&topic, &tombstones).await;
    let mut log = log.lock().unwrap();
    for i in 0..DELETED {
        log.by_key.remove(&key(i));
    }
}

/// Writes `batches` batches of 100 (updates of seeded keys, most of them
/// evicted from memory, and new keys) while subscribers register and read.
fn writer(
    server: Arc<TestServer>,
    log: Arc<Mutex<Log>>,
    seeded: usize,
    batches: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in 1..=batches {
            let records: Vec<(String, u64)> = (0..100u64)
                .map(|i| {
                    let k = if i % 10 == 0 {
                        seeded + (b * 10 + i / 10) as usize
                    } else {
                        DELETED + ((b * 7919 + i * 104_729) as usize) % (seeded - DELETED)
                    };
                    (key(k), b * 1000 + i)
                })
                .collect();
            publish(&server, &log, &records).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// What a client saw: snapshot records, then live ones, applied in order.
#[derive(Default)]
struct Seen {
    state: HashMap<String, (u64, u64, u64)>,
    snapshot_keys: Vec<String>,
    /// Per key, the (partition, offset) its snapshot record showed.
    snap_at: HashMap<String, (u64, u64)>,
    /// Per key, the (partition, offset) of the records received as changes.
    changes: HashMap<String, Vec<(u64, u64)>>,
}

impl Seen {
    fn apply(&mut self, r: &Value) {
        assert_eq!(r["type"], "record", "{r}");
        let key = r["key"].as_str().unwrap().to_owned();
        let at = (
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
            r["data"]["n"].as_u64().unwrap(),
        );
        if r["snapshot"] == true {
            assert!(
                self.changes.is_empty(),
                "a snapshot record after a change: {r}"
            );
            self.snapshot_keys.push(key.clone());
            assert!(
                self.snap_at.insert(key.clone(), (at.0, at.1)).is_none(),
                "key {key} twice in the snapshot"
            );
        } else {
            self.changes
                .entry(key.clone())
                .or_default()
                .push((at.0, at.1));
        }
        self.state.insert(key, at);
    }

    /// The exact seam: each key's final value is the last published one, no
    /// deleted key is listed, and the changes received for a key are exactly
    /// the published records after the one its snapshot record showed (none
    /// missing, none twice, none from before the snapshot's position).
    fn check(&self, log: &Log) {
        let latest = log.latest();
        assert_eq!(self.state.len(), latest.len(), "every key, no extra key");
        for (k, want) in &latest {
            assert_eq!(self.state.get(k), Some(want), "key {k}");
        }
        let mut sorted = self.snapshot_keys.clone();
        sorted.sort();
        assert_eq!(
            sorted, self.snapshot_keys,
            "the snapshot comes in key order"
        );
        for (k, published) in &log.by_key {
            let from = self.snap_at.get(k);
            if let Some(at) = from {
                assert!(
                    published.iter().any(|p| (p.0, p.1) == *at),
                    "the snapshot of {k} is a published record"
                );
            }
            let want: Vec<(u64, u64)> = published
                .iter()
                .map(|p| (p.0, p.1))
                .filter(|p| from.is_none_or(|f| p.1 > f.1))
                .collect();
            let got = self.changes.get(k).cloned().unwrap_or_default();
            assert_eq!(got, want, "changes of key {k}");
        }
    }
}

/// Every key's last published value is what the client holds.
fn caught_up(log: &Mutex<Log>, seen: &Seen) -> bool {
    let log = log.lock().unwrap();
    log.by_key
        .iter()
        .all(|(k, v)| seen.state.get(k) == v.last())
}

/// Reads WebSocket messages into `seen` until every published record of `log` is reflected.
async fn ws_until_caught_up(ws: &mut common::WsClient, seen: &mut Seen, log: &Mutex<Log>) {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        if !ws.lives.is_empty() && caught_up(log, seen) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up in time: lives {:?}, snapshot {}",
            ws.lives,
            seen.snapshot_keys.len()
        );
        match ws.event_within(Duration::from_secs(1)).await {
            Some(common::WsEvent::Json(v)) => seen.apply(&v),
            Some(common::WsEvent::Closed(code)) => panic!("closed ({code:?}) mid-stream"),
            None => {}
        }
    }
}

/// Reads SSE events into `seen` until every published record of `log` is reflected.
async fn sse_until_caught_up(sse: &mut common::SseClient, seen: &mut Seen, log: &Mutex<Log>) {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        if !sse.lives.is_empty() && caught_up(log, seen) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up in time"
        );
        if let Some(ev) = sse.next_within(Duration::from_secs(1)).await {
            assert!(ev.id.is_some(), "{ev:?}");
            seen.apply(&ev.json());
        }
        assert!(!sse.ended, "the stream ended mid-way");
    }
}

/// The gauge `pushgate_view_bytes` of `topic`.
async fn view_bytes(server: &TestServer, topic: &str) -> f64 {
    let metrics = server.metrics_text().await;
    let prefix = format!("pushgate_view_bytes{{topic=\"{topic}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in\n{metrics}"))
        .parse()
        .unwrap()
}

/// A WebSocket and an SSE subscriber register while the writer runs; both
/// get every key (evicted ones from disk) and meet the live stream exactly.
async fn complete_under_writes(server: Arc<TestServer>, topic: &str, seeded: usize) {
    let log = Arc::new(Mutex::new(Log::new(topic)));
    seed(&server, &log, seeded).await;
    let writes = writer(Arc::clone(&server), Arc::clone(&log), seeded, 40);
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": topic})).await;
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    let n = subscribed["snapshot"].as_u64().unwrap();
    assert!(
        n >= (seeded - DELETED) as u64,
        "every key that exists, evicted or not: {subscribed}"
    );
    let mut sse = server.sse(&format!("topic={topic}"), None).await;
    assert_eq!(sse.status, 200);
    let sse_subscribed = sse.next().await.json();
    assert!(
        sse_subscribed.get("snapshot_partial").is_none(),
        "{sse_subscribed}"
    );
    let sse_n = sse_subscribed["snapshot"].as_u64().unwrap();
    assert!(sse_n >= (seeded - DELETED) as u64, "{sse_subscribed}");

    let mut seen = Seen::default();
    let mut sse_seen = Seen::default();
    for r in ws.records(500).await {
        seen.apply(&r);
    }
    for ev in sse.records(500).await {
        sse_seen.apply(&ev.json());
    }
    writes.await.unwrap();
    ws_until_caught_up(&mut ws, &mut seen, &log).await;
    sse_until_caught_up(&mut sse, &mut sse_seen, &log).await;
    assert_eq!(seen.snapshot_keys.len() as u64, n);
    assert_eq!(sse_seen.snapshot_keys.len() as u64, sse_n);
    assert!(
        ws.lives[0].get("snapshot_skipped").is_none(),
        "{}",
        ws.lives[0]
    );
    let log = log.lock().unwrap();
    seen.check(&log);
    sse_seen.check(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_evicted_by_view_max_keys_come_from_disk_with_an_exact_seam() {
    let server = Arc::new(TestServer::start_with(CONFIG).await);
    complete_under_writes(Arc::clone(&server), "t", 3000).await;
    assert!(
        !server
            .metrics_text()
            .await
            .contains("pushgate_snapshots_partial_total"),
        "no snapshot was partial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_evicted_by_view_max_bytes_come_from_disk_and_the_gauge_stays_in_bounds() {
    let server = Arc::new(TestServer::start_with(CONFIG).await);
    complete_under_writes(Arc::clone(&server), "b", 2000).await;
    let bytes = view_bytes(&server, "b").await;
    // At most the budget plus the record that pushed it over (about 700 bytes each).
    assert!(
        bytes > 100_000.0 && bytes <= 151_000.0,
        "view bytes of `b`: {bytes}"
    );
    // `t` is bounded by keys only (3 x 100 at most) and holds none here.
    assert_eq!(view_bytes(&server, "t").await, 0.0);
}

/// A whole snapshot of `topic` over WebSocket, as key -> (partition, offset, n).
async fn ws_snapshot(
    server: &TestServer,
    topic: &str,
) -> (Value, HashMap<String, (u64, u64, u64)>) {
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": topic})).await;
    let n = subscribed["snapshot"].as_u64().unwrap() as usize;
    let mut seen = Seen::default();
    for r in ws.records(n).await {
        seen.apply(&r);
    }
    (subscribed, seen.state)
}

/// Waits until the stopped server's log file is closed (its writer thread
/// ends once the last handle is dropped) and opens it, as a new process would.
async fn reopen(dir: &tempfile::TempDir) -> redb::Database {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match redb::Database::open(dir.path().join("pushgate.redb")) {
            Ok(db) => return db,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_and_a_log_from_before_the_table_give_complete_snapshots() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::new("t"));
    seed(&server, &log, 1500).await;
    // A second value for some keys, so "latest" is not "first".
    let again: Vec<(String, u64)> = (DELETED..1500).step_by(7).map(|i| (key(i), 7)).collect();
    publish(&server, &log, &again).await;
    let dir = server.stop_keeping().await;
    drop(reopen(&dir).await);
    let want = log.lock().unwrap().latest();

    // A new node on the same log, whose memory holds only the last 20
    // records of each partition (the warm start).
    let restarted = format!("{CONFIG}\n[source]\nwarm_start_records = 20\n");
    let server = TestServer::start_in(dir, &restarted).await;
    let (subscribed, got) = ws_snapshot(&server, "t").await;
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    assert_eq!(got, want, "every key at its latest value, no deleted key");
    // Named keys, one of them only on disk, one deleted.
    let mut ws = server.ws().await;
    let named = ws
        .subscribe(json!({"topic": "t", "keys": [key(DELETED), key(1499), key(0)]}))
        .await;
    assert_eq!(named["snapshot"], 2, "{named}");
    assert!(named.get("snapshot_partial").is_none(), "{named}");
    let dir = server.stop_keeping().await;

    // A log written before the `latest` table existed: rebuilt at open.
    {
        let db = reopen(&dir).await;
        let txn = db.begin_write().unwrap();
        let def: redb::TableDefinition<(u32, &str), &[u8]> = redb::TableDefinition::new("latest/t");
        assert!(txn.delete_table(def).unwrap(), "the table was there");
        txn.commit().unwrap();
    }
    let server = TestServer::start_in(dir, &restarted).await;
    let (subscribed, got) = ws_snapshot(&server, "t").await;
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    assert_eq!(got, want, "rebuilt from the retained log");
    server.stop().await;
}

/// The key -> (partition, offset, n) of every page of `GET /topics/{topic}/view?{query}`.
async fn pages(server: &TestServer, topic: &str, query: &str) -> HashMap<String, (u64, u64, u64)> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("/topics/{topic}/view?limit=1000&{query}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let r = server.http.get(server.url(&url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        for rec in page["records"].as_array().unwrap() {
            let key = rec["key"].as_str().unwrap().to_owned();
            let at = (
                rec["partition"].as_u64().unwrap(),
                rec["offset"].as_u64().unwrap(),
                rec["data"]["n"].as_u64().unwrap(),
            );
            assert!(out.insert(key, at).is_none(), "a key on two pages");
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_pages_include_the_keys_memory_evicted() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::new("t"));
    seed(&server, &log, 2500).await;
    let want = log.lock().unwrap().latest();
    let (_, snapshot) = ws_snapshot(&server, "t").await;
    assert_eq!(snapshot, want);
    assert_eq!(pages(&server, "t", "").await, want, "every key, by page");
    let k01: HashMap<_, _> = want
        .iter()
        .filter(|(k, _)| k.starts_with("k001"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(k01.len(), 1000);
    assert_eq!(pages(&server, "t", "prefix=k001").await, k01, "by prefix");
    let named = pages(
        &server,
        "t",
        &format!("key={}&key={}&key=k000000", key(60), key(2499)),
    )
    .await;
    assert_eq!(named.len(), 2, "the deleted key is not listed: {named:?}");
    assert_eq!(named.get(&key(60)), want.get(&key(60)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_mid_way_resumes_with_the_evicted_keys_after_its_last_one() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::new("t"));
    seed(&server, &log, 1200).await;
    let want = log.lock().unwrap().latest();

    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    assert_eq!(subscribed["snapshot"], want.len(), "{subscribed}");
    let first = ws.records(400).await;
    drop(ws);
    let cursor = first.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut seen = Seen::default();
    for r in &first {
        seen.apply(r);
    }
    let mut ws = server.ws().await;
    let resumed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let rest = resumed["snapshot"].as_u64().unwrap() as usize;
    assert_eq!(
        rest,
        want.len() - 400,
        "the keys after the last one held: {resumed}"
    );
    for r in ws.records(rest).await {
        assert_eq!(r["snapshot"], true, "{r}");
        seen.apply(&r);
    }
    assert_eq!(seen.state, want, "every key once, at its latest value");
    server.stop().await;
}
