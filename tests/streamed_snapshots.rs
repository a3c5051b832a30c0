//! Streamed snapshots (issue 30 item 1): a view larger than the former
//! 10,000-record cap goes out whole, a page at a time, with an exact seam
//! under concurrent writes; a reader that stops mid-snapshot is not
//! disconnected; a stream cut mid-snapshot resumes where it stopped
//! (WebSocket `cursor`, SSE `Last-Event-ID`). Checked key by key against the
//! publish answers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, WAIT};
use serde_json::{json, Value};

/// A small queue (and backlog) so that writes during a paused snapshot
/// overflow it: the old code closed such a client with 4001.
const CONFIG: &str = "[limits]\npublish_rate = 1000000.0\npublish_burst = 1000000.0\n\
                      queue_bytes = 65536\n";

/// What was published: per key, every (partition, offset, n) in order.
#[derive(Default)]
struct Log {
    by_key: HashMap<String, Vec<(u64, u64, u64)>>,
}

impl Log {
    fn latest(&self) -> HashMap<String, (u64, u64, u64)> {
        self.by_key
            .iter()
            .map(|(k, v)| (k.clone(), *v.last().unwrap()))
            .collect()
    }
}

/// Publishes `records` (key, n) in one request and notes where each landed.
async fn publish(server: &TestServer, log: &Mutex<Log>, records: &[(String, u64)]) {
    let batch: Vec<(String, Value)> = records
        .iter()
        .map(|(k, n)| (k.clone(), json!({"n": n, "pad": "x".repeat(300)})))
        .collect();
    let answer = server.publish_batch("t", &batch).await;
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

async fn seed(server: &TestServer, log: &Mutex<Log>, count: usize) {
    let all: Vec<(String, u64)> = (0..count).map(|i| (key(i), 0)).collect();
    for chunk in all.chunks(1000) {
        publish(server, log, chunk).await;
    }
}

/// Writes `batches` batches of 100 (updates of seeded keys and new keys)
/// while a subscriber reads; the last batch's answer is the end to wait for.
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
                        ((b * 7919 + i * 104_729) as usize) % seeded
                    };
                    (key(k), b * 1000 + i)
                })
                .collect();
            publish(&server, &log, &records).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
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
    /// Resumed mid-snapshot, or a snapshot that may move on
    /// (`limits.snapshot_hold_bytes`): the sent keys' changes come first,
    /// then the rest of the snapshot.
    resumed: bool,
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
                self.resumed || self.changes.is_empty(),
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

    /// The exact seam: each key's final value is the last published one, and
    /// the changes received for a key are exactly the published records after
    /// the one its snapshot record showed (none missing, none twice, none older).
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
fn caught_up<'a>(log: &Mutex<Log>, holds: impl Fn(&str) -> Option<&'a (u64, u64, u64)>) -> bool {
    let log = log.lock().unwrap();
    log.by_key.iter().all(|(k, v)| holds(k) == v.last())
}

/// Reads WebSocket messages into `seen` until every published record of `log` is reflected.
async fn ws_until_caught_up(ws: &mut common::WsClient, seen: &mut Seen, log: &Mutex<Log>) {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        // Checked only once `live` came (the whole map, so not on every record).
        if !ws.lives.is_empty() && caught_up(log, |k| seen.state.get(k)) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let latest = log.lock().unwrap().latest();
            let off: Vec<_> = latest
                .iter()
                .filter(|(k, v)| seen.state.get(*k) != Some(v))
                .take(5)
                .map(|(k, v)| (k.clone(), *v, seen.state.get(k).copied()))
                .collect();
            panic!(
                "not caught up in time: lives {:?}, snapshot {}, {} keys off, e.g. {off:?}",
                ws.lives,
                seen.snapshot_keys.len(),
                latest
                    .iter()
                    .filter(|(k, v)| seen.state.get(*k) != Some(v))
                    .count()
            );
        }
        match ws.event_within(Duration::from_secs(1)).await {
            Some(common::WsEvent::Json(v)) => seen.apply(&v),
            Some(common::WsEvent::Closed(code)) => panic!("closed ({code:?}) mid-stream"),
            None => {}
        }
    }
}

/// Reads on until `writes` is done: a client that stopped reading while a
/// slow machine still wrote would meet the write timeout, which is not what
/// these tests are about.
async fn read_while_writing(
    ws: &mut common::WsClient,
    seen: &mut Seen,
    writes: tokio::task::JoinHandle<()>,
) {
    while !writes.is_finished() {
        match ws.event_within(Duration::from_millis(200)).await {
            Some(common::WsEvent::Json(v)) => seen.apply(&v),
            Some(common::WsEvent::Closed(code)) => panic!("closed ({code:?}) mid-stream"),
            None => {}
        }
    }
    writes.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_streams_30000_keys_with_an_exact_seam_and_a_paused_reader_is_not_disconnected() {
    let server = Arc::new(TestServer::start_with(CONFIG).await);
    let log = Arc::new(Mutex::new(Log::default()));
    seed(&server, &log, 30_000).await;

    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    let n = subscribed["snapshot"].as_u64().unwrap();
    assert!(n >= 30_000, "the whole view, no cap: {subscribed}");
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    let writes = writer(Arc::clone(&server), Arc::clone(&log), 30_000, 60);
    let mut seen = Seen::default();
    for r in ws.records(1000).await {
        seen.apply(&r);
    }
    // Stop reading mid-snapshot (well inside the write timeout) while the
    // writer goes on: far more than the 64 KiB queue arrives meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    read_while_writing(&mut ws, &mut seen, writes).await;
    ws_until_caught_up(&mut ws, &mut seen, &log).await;
    assert_eq!(seen.snapshot_keys.len() as u64, n);
    assert!(ws.lives[0].get("snapshot_skipped").is_none());
    seen.check(&log.lock().unwrap());
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("pushgate_catchup_resyncs_total"),
        "the backlog overflowed and was read again from the log"
    );
    assert!(!metrics.contains("pushgate_slow_disconnects_total 1"));
}

/// A reader slower than the writes for the whole of its snapshot (it reads a
/// thousand records, then pauses), with pings every 300 ms: its backlog
/// overflows, and the ping rule's two intervals pass many times while the
/// server only writes to it. When its catch-up ends the socket buffers still
/// hold megabytes, which it takes longer than two intervals to read, and its
/// pongs wait behind them. It is neither closed as too slow (4001) nor as
/// idle (4008: the rule counts from the catch-up's end, and a peer still
/// acknowledging a backlog is not idle), and it gets every record exactly
/// once with an exact seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_slow_snapshot_reader_is_kept_and_gets_an_exact_seam() {
    // Short pings: when its catch-up ends, the reader still has more in the
    // socket buffers than it reads in two intervals, so its pongs come late.
    let config = format!("{CONFIG}[websocket]\nping_interval = \"300ms\"\n");
    let server = Arc::new(TestServer::start_with(&config).await);
    let log = Arc::new(Mutex::new(Log::default()));
    seed(&server, &log, 30_000).await;

    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    assert!(subscribed["snapshot"].as_u64().unwrap() >= 30_000);
    // 10,000 writes, over well before the snapshot is: a reader slower than
    // writes that go on is closed (4001 after 16 resyncs without progress).
    let writes = writer(Arc::clone(&server), Arc::clone(&log), 30_000, 100);
    // Those writes let go of more than the default snapshot_hold_bytes (the
    // entries and the tree paths they copy), so the snapshot moves on.
    let mut seen = Seen {
        resumed: true,
        ..Seen::default()
    };
    let started = tokio::time::Instant::now();
    let mut read = 0;
    while ws.lives.is_empty() {
        match ws.event_within(WAIT).await {
            Some(common::WsEvent::Json(v)) => seen.apply(&v),
            Some(common::WsEvent::Closed(code)) => panic!("closed ({code:?}) mid-snapshot"),
            // `live` came (the client reads on past it) and nothing since.
            None if !ws.lives.is_empty() => break,
            None => panic!("nothing for {WAIT:?} mid-snapshot"),
        }
        read += 1;
        if read % 1000 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        started.elapsed() > Duration::from_secs(5),
        "the snapshot outlasted the ping rule's two intervals (600 ms)"
    );
    // Live now, so no longer slow: a live reader that falls behind the writes
    // by a whole queue is closed with 4001, by design.
    read_while_writing(&mut ws, &mut seen, writes).await;
    ws_until_caught_up(&mut ws, &mut seen, &log).await;
    // Live, still answering pings: not closed as idle.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < quiet_until {
        if let Some(common::WsEvent::Closed(code)) =
            ws.event_within(Duration::from_millis(200)).await
        {
            panic!("closed ({code:?}) after the snapshot");
        }
    }
    seen.check(&log.lock().unwrap());
    let metrics = server.metrics_text().await;
    let resyncs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_catchup_resyncs_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the backlog overflowed mid-snapshot and was read again from the log");
    assert!(resyncs >= 1.0, "{resyncs}");
    assert!(
        !metrics.contains("pushgate_slow_disconnects_total 1"),
        "not disconnected as too slow"
    );
}

/// The other side of the rule above: a client that stops reading and
/// answering (it never polls its socket, so it sends no pong) while nothing
/// more is on its way to it is still closed as idle (4008) after two ping
/// intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_as_idle() {
    let config = format!("{CONFIG}[websocket]\nping_interval = \"300ms\"\n");
    let server = Arc::new(TestServer::start_with(&config).await);
    let log = Arc::new(Mutex::new(Log::default()));
    seed(&server, &log, 100).await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "t"})).await;
    // Not polled: no pong goes out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "not closed as idle");
        if let Some(common::WsEvent::Closed(code)) = ws.event_within(WAIT).await {
            assert_eq!(code, Some(4008));
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_30000_keys_with_an_exact_seam_under_writes() {
    let server = Arc::new(TestServer::start_with(CONFIG).await);
    let log = Arc::new(Mutex::new(Log::default()));
    seed(&server, &log, 30_000).await;

    let mut sse = server.sse("topic=t", None).await;
    assert_eq!(sse.status, 200);
    let subscribed = sse.next().await.json();
    let n = subscribed["snapshot"].as_u64().unwrap();
    assert!(n >= 30_000, "{subscribed}");
    let writes = writer(Arc::clone(&server), Arc::clone(&log), 30_000, 40);
    let mut seen = Seen::default();
    for ev in sse.records(500).await {
        assert!(ev.id.is_some(), "every snapshot event has an id");
        seen.apply(&ev.json());
    }
    // A pause mid-snapshot, then reading on while the writer finishes: a
    // client that stops reading until the writer is done (which takes longer
    // on a loaded machine) meets the server's write timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while !writes.is_finished() {
        if let Some(ev) = sse.next_within(Duration::from_millis(200)).await {
            seen.apply(&ev.json());
        }
        assert!(!sse.ended, "the stream ended while the writer ran");
    }
    writes.await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        if !sse.lives.is_empty() && caught_up(&log, |k| seen.state.get(k)) {
            break;
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
    assert_eq!(seen.snapshot_keys.len() as u64, n);
    seen.check(&log.lock().unwrap());
}

/// Keys up to `after` were received at the first connection's position: a
/// resume replays their changes and streams the snapshot of the rest.
fn check_resumed(first: &Seen, second: &Seen, log: &Log) {
    let last = first.snapshot_keys.last().unwrap();
    assert!(
        second.snapshot_keys.iter().all(|k| k > last),
        "no key sent twice as a snapshot record"
    );
    for k in second.changes.keys() {
        assert!(
            k <= last,
            "a change of {k}, a key the resumed snapshot covers"
        );
    }
    let mut merged = Seen {
        state: first.state.clone(),
        ..Seen::default()
    };
    merged.state.extend(second.state.clone());
    let latest = log.latest();
    assert_eq!(merged.state.len(), latest.len());
    for (k, want) in &latest {
        assert_eq!(merged.state.get(k), Some(want), "key {k}");
    }
    // The changes replayed for held keys are exactly those after what was held.
    for (k, held) in &first.state {
        let want: Vec<(u64, u64)> = log.by_key[k]
            .iter()
            .filter(|p| p.1 > held.1)
            .map(|p| (p.0, p.1))
            .collect();
        assert_eq!(
            second.changes.get(k).cloned().unwrap_or_default(),
            want,
            "replayed changes of {k}"
        );
    }
}

/// Seeds 3,000 keys, reads 1,200 snapshot records over WebSocket and drops
/// the connection, then writes (`write_between`): what was seen, and the
/// cursor of the last record.
async fn cut_after_1200_of_3000(server: &TestServer, log: &Mutex<Log>) -> (Seen, String) {
    seed(server, log, 3000).await;
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    assert_eq!(subscribed["snapshot"], 3000);
    let mut first = Seen::default();
    let got = ws.records(1200).await;
    for r in &got {
        first.apply(r);
    }
    let cursor = got.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    write_between(server, log).await;
    (first, cursor)
}

async fn write_between(server: &TestServer, log: &Mutex<Log>) {
    // Updates of keys on both sides of any cut, and new keys.
    for b in 0..5u64 {
        let records: Vec<(String, u64)> = (0..200u64)
            .map(|i| {
                (
                    key(((b * 200 + i) * 37 % 3200) as usize),
                    100 + b * 1000 + i,
                )
            })
            .collect();
        publish(server, log, &records).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_cut_mid_snapshot_resumes_where_it_stopped() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::default());
    let (first, cursor) = cut_after_1200_of_3000(&server, &log).await;

    let mut ws = server.ws().await;
    let resumed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let last = first.snapshot_keys.last().unwrap().clone();
    let after_cut = |log: &Log, last: &str| log.by_key.keys().filter(|k| k.as_str() > last).count();
    assert_eq!(
        resumed["snapshot"],
        after_cut(&log.lock().unwrap(), &last),
        "the keys after the cut: {resumed}"
    );
    let mut second = Seen {
        resumed: true,
        ..Seen::default()
    };
    ws_until_caught_up_from(&mut ws, &mut second, &first, &log).await;
    assert_eq!(
        second.snapshot_keys.len(),
        after_cut(&log.lock().unwrap(), &last)
    );
    check_resumed(&first, &second, &log.lock().unwrap());
}

async fn ws_until_caught_up_from(
    ws: &mut common::WsClient,
    seen: &mut Seen,
    before: &Seen,
    log: &Mutex<Log>,
) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let done = {
            let latest = log.lock().unwrap().latest();
            latest
                .iter()
                .all(|(k, v)| seen.state.get(k).or_else(|| before.state.get(k)) == Some(v))
        };
        if done && !ws.lives.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let latest = log.lock().unwrap().latest();
            let off: Vec<_> = latest
                .iter()
                .filter(|(k, v)| seen.state.get(*k).or_else(|| before.state.get(*k)) != Some(v))
                .take(5)
                .map(|(k, v)| {
                    (
                        k.clone(),
                        *v,
                        seen.state.get(k).copied(),
                        before.state.get(k).copied(),
                    )
                })
                .collect();
            panic!(
                "not caught up: lives {:?}, snapshot {}, changes {}, last held {:?}, off {off:?}",
                ws.lives,
                seen.snapshot_keys.len(),
                seen.changes.len(),
                before.snapshot_keys.last()
            );
        }
        match ws.event_within(Duration::from_secs(1)).await {
            Some(common::WsEvent::Json(v)) => seen.apply(&v),
            Some(common::WsEvent::Closed(code)) => panic!("closed ({code:?})"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_resumes_mid_snapshot() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::default());
    seed(&server, &log, 3000).await;

    let mut sse = server.sse("topic=t", None).await;
    let subscribed = sse.next().await.json();
    assert_eq!(subscribed["snapshot"], 3000);
    let mut first = Seen::default();
    let got = sse.records(700).await;
    for ev in &got {
        first.apply(&ev.json());
    }
    let last_id = got
        .last()
        .unwrap()
        .id
        .clone()
        .expect("snapshot events have ids");
    drop(sse);
    write_between(&server, &log).await;

    // What a browser's EventSource does on its own.
    let mut sse = server.sse("topic=t", Some(&last_id)).await;
    assert_eq!(sse.status, 200);
    let resumed = sse.next().await.json();
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let last = first.snapshot_keys.last().unwrap().clone();
    let after_cut = log
        .lock()
        .unwrap()
        .by_key
        .keys()
        .filter(|k| **k > last)
        .count();
    assert_eq!(resumed["snapshot"], after_cut, "{resumed}");
    let mut second = Seen {
        resumed: true,
        ..Seen::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let done = {
            let latest = log.lock().unwrap().latest();
            latest
                .iter()
                .all(|(k, v)| second.state.get(k).or_else(|| first.state.get(k)) == Some(v))
        };
        if done && !sse.lives.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up in time"
        );
        if let Some(ev) = sse.next_within(Duration::from_secs(1)).await {
            assert!(ev.id.is_some());
            second.apply(&ev.json());
        }
    }
    check_resumed(&first, &second, &log.lock().unwrap());
}

/// A counter's value in `/metrics` text (0 when it was never counted).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A snapshot read slowly while the writer replaces keys moves on to the
/// views as they are now each time they let go of more than
/// `limits.snapshot_hold_bytes` (64 KiB here) since it was taken: the keys it
/// already sent get their changes up to there, then the rest of the snapshot
/// follows from the newer view. Key by key the seam stays exact: each key's
/// snapshot record is a published record, and the changes after it come
/// once, in order, none older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_snapshot_that_holds_too_much_moves_on_with_an_exact_seam() {
    let config = format!("{CONFIG}snapshot_hold_bytes = 65536\n");
    let server = Arc::new(TestServer::start_with(&config).await);
    let log = Arc::new(Mutex::new(Log::default()));
    seed(&server, &log, 30_000).await;

    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    let n = subscribed["snapshot"].as_u64().unwrap();
    assert!(n >= 30_000, "{subscribed}");
    let writes = writer(Arc::clone(&server), Arc::clone(&log), 30_000, 60);
    // Changes of keys already sent come between snapshot records after a move.
    let mut seen = Seen {
        resumed: true,
        ..Seen::default()
    };
    for r in ws.records(1000).await {
        seen.apply(&r);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    read_while_writing(&mut ws, &mut seen, writes).await;
    ws_until_caught_up(&mut ws, &mut seen, &log).await;
    seen.check(&log.lock().unwrap());
    // The writer's new keys sort after the seeded ones: a moved snapshot has them.
    assert!(seen.snapshot_keys.len() as u64 >= n);
    let metrics = server.metrics_text().await;
    let moved = counter(&metrics, "pushgate_snapshots_moved_total");
    assert!(moved >= 1.0, "the snapshot moved on: {moved}");
    // Some key's changes came before the last snapshot record: what a move shows.
    let last_snapshot_key = seen.snapshot_keys.last().unwrap();
    assert!(
        seen.changes.keys().any(|k| k < last_snapshot_key),
        "changes of keys sent before the move"
    );
}

/// A client resuming mid-snapshot first gets the changes of the keys it
/// holds; each of those records is a place to resume too. A client cut right
/// after one resumes from its cursor and still gets the rest of the
/// snapshot (the cursor carries the snapshot's key), not just later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_cut_on_a_change_replayed_mid_snapshot_still_gets_the_rest_of_it() {
    let server = TestServer::start_with(CONFIG).await;
    let log = Mutex::new(Log::default());
    let (first, cursor) = cut_after_1200_of_3000(&server, &log).await;

    // The second connection: cut on the first replayed change.
    let mut ws = server.ws().await;
    let resumed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let change = ws.records(1).await.remove(0);
    assert_ne!(
        change["snapshot"], true,
        "changes of held keys come first: {change}"
    );
    let mut held = first.state.clone();
    let key = change["key"].as_str().unwrap().to_owned();
    held.insert(
        key,
        (
            change["partition"].as_u64().unwrap(),
            change["offset"].as_u64().unwrap(),
            change["data"]["n"].as_u64().unwrap(),
        ),
    );
    let cursor = change["cursor"].as_str().unwrap().to_owned();
    drop(ws);

    let mut ws = server.ws().await;
    let resumed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let last = first.snapshot_keys.last().unwrap().clone();
    let after_cut = log
        .lock()
        .unwrap()
        .by_key
        .keys()
        .filter(|k| **k > last)
        .count();
    assert_eq!(
        resumed["snapshot"], after_cut,
        "the rest of the snapshot: {resumed}"
    );
    let before = Seen {
        state: held,
        ..Seen::default()
    };
    let mut third = Seen {
        resumed: true,
        ..Seen::default()
    };
    ws_until_caught_up_from(&mut ws, &mut third, &before, &log).await;
    assert_eq!(third.snapshot_keys.len(), after_cut);
    assert!(third.snapshot_keys.iter().all(|k| *k > last));
}
