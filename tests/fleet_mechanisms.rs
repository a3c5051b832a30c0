//! What keeps a fleet calm when many clients move at once: a drain spread
//! over `server.drain_spread`, admission limited by `limits.connect_rate`
//! (refused cheaply with 503 and Retry-After), catch-up reads shared by
//! resumes of the same range, and a cursor naming partitions a topic does not
//! have answered `bad_cursor` where the partition count is final.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

async fn metric(node: &TestServer, name: &str) -> f64 {
    node.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_spreads_its_closes_over_drain_spread() {
    let node =
        TestServer::start_with("[server]\nshutdown_grace = \"10s\"\ndrain_spread = \"2s\"\n").await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut ws = node.ws().await;
        ws.subscribe(json!({"topic": "one"})).await;
        clients.push(ws);
    }
    let started = Instant::now();
    node.shutdown.trigger();
    let closes = futures_util::future::join_all(clients.iter_mut().map(|ws| async {
        let code = ws.close_code().await;
        (code, started.elapsed())
    }))
    .await;
    let mut times: Vec<Duration> = closes
        .iter()
        .map(|(code, at)| {
            assert_eq!(*code, Some(1012), "each gets the reconnect code");
            *at
        })
        .collect();
    times.sort();
    let (first, last) = (times[0], *times.last().unwrap());
    assert!(
        last < Duration::from_millis(2600),
        "all closed within the spread: {times:?}"
    );
    assert!(
        last - first > Duration::from_millis(800),
        "not all at once: {times:?}"
    );
    // Roughly even: the middle client closes neither at the start nor the end.
    let middle = times[times.len() / 2];
    assert!(
        middle > Duration::from_millis(300) && middle < Duration::from_millis(1800),
        "{times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_connect_rate_a_handshake_is_refused_cheaply_with_retry_after() {
    let node = TestServer::start_with(
        "[limits]\nconnect_rate = 0.5\nconnect_burst = 3.0\n[auth]\nanonymous_subscribe = false\n[[auth.keys]]\nkind = \"hmac\"\nsecret = \"not-used-by-this-test-0123456789-0123456789\"\n",
    )
    .await;
    let http = reqwest::Client::new();
    // The burst is admitted to authentication (and refused there: no token).
    for _ in 0..3 {
        let r = http.get(node.url("/sse?topic=one")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    // Past it, refused before authentication: 503 with Retry-After.
    let r = http.get(node.url("/sse?topic=one")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr)).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!(
            "the WebSocket handshake was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    let refused = node
        .metrics_text()
        .await
        .lines()
        .any(|l| l.starts_with("pushgate_connections_refused_total{reason=\"rate\"}"));
    assert!(refused, "counted as reason=rate");
    // The bucket refills at connect_rate: one more is admitted two seconds later.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = http.get(node.url("/sse?topic=one")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// The in-process servers of this binary share one metrics recorder: the tests
/// that count catch-up reads run one at a time.
static CATCHUP_METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_of_the_same_range_share_their_log_reads_and_get_exactly_what_they_missed() {
    let _alone = CATCHUP_METRICS.lock().await;
    // Topic `one` keeps 64 records in its ring: a resume from offset 10 of 400 reads the log.
    let node = TestServer::start_with("[limits]\ncatchup_concurrency = 1\n").await;
    let records: Vec<(String, Value)> = (0..400)
        .map(|i| (format!("k{}", i % 7), json!({"i": i})))
        .collect();
    node.publish_batch("one", &records).await;
    let mut ws = node.ws().await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    drop(ws);
    // A cursor after the 10th record, taken from the log's own numbering.
    let any = node.publish("one", "k0", json!({"i": 400})).await;
    let epoch = Cursor::decode(any["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    let cursor = Cursor::new(epoch, vec![10]).encode();

    let reads_before = metric(&node, "pushgate_catchup_reads_total").await;
    let joined_before = metric(&node, "pushgate_catchup_reads_coalesced_total").await;
    const CLIENTS: usize = 40;
    let resumes = (0..CLIENTS).map(|_| {
        let cursor = cursor.clone();
        let addr = node.addr;
        async move {
            let mut ws = WsClient::connect(addr).await;
            ws.subscribe(json!({"topic": "one", "cursor": cursor}))
                .await;
            let got = ws.records(391).await;
            got.iter()
                .map(|r| r["offset"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    });
    let all = futures_util::stream::iter(resumes)
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    let expected: Vec<u64> = (10..401).collect();
    for got in &all {
        assert_eq!(
            got, &expected,
            "exactly the missed records, in order, once each"
        );
    }
    let reads = metric(&node, "pushgate_catchup_reads_total").await - reads_before;
    let joined = metric(&node, "pushgate_catchup_reads_coalesced_total").await - joined_before;
    // Each resume needs one log read (390 records < one chunk) beyond the ring.
    assert_eq!(
        reads + joined,
        CLIENTS as f64,
        "reads {reads}, joined {joined}"
    );
    assert!(
        joined > 0.0,
        "no read was shared by {CLIENTS} simultaneous resumes"
    );
    println!("{CLIENTS} resumes of one range: {reads} log reads, {joined} joined one in flight");
}

/// A resume of large records from the log is sent in steps of bounded bytes
/// (each connection holds one step until its socket takes it), each step
/// after the first taken from the recent read: nothing is missed or repeated
/// at the step boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_large_records_from_the_log_comes_in_bounded_steps_exactly() {
    let _alone = CATCHUP_METRICS.lock().await;
    // 400 records of ~2 KB at offsets 0..400: 780 KB to replay from offset 10.
    let pad = "x".repeat(2000);
    let (node, epoch) = node_with_401_records("k0", |i| json!({"i": i, "pad": pad})).await;
    let cursor = Cursor::new(epoch, vec![10]).encode();
    let reads_before = metric(&node, "pushgate_catchup_reads_total").await;
    let joined_before = metric(&node, "pushgate_catchup_reads_coalesced_total").await;
    let mut ws = node.ws().await;
    ws.subscribe(json!({"topic": "one", "cursor": cursor}))
        .await;
    let got: Vec<u64> = ws
        .records(391)
        .await
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        (10..401).collect::<Vec<u64>>(),
        "each missed record once, in order"
    );
    let reads = metric(&node, "pushgate_catchup_reads_total").await - reads_before;
    let joined = metric(&node, "pushgate_catchup_reads_coalesced_total").await - joined_before;
    // One read of the log (the aligned block holds all 390); every further
    // step takes its part of it again: at 128 KiB a step, at least six.
    assert_eq!(reads, 1.0, "one log read");
    assert!(joined >= 5.0, "steps after the first: {joined}");
}

/// A node with one catch-up permit (reads queue) and topic `one` holding 401
/// records: `{"i": i}` keyed `k{i % 7}` at offsets 0..400, then offset 400
/// keyed `last`. Returns the node and the topic's epoch.
async fn one_permit_node_with_401_records(last: &str) -> (TestServer, u64) {
    node_with_401_records(last, |i| json!({"i": i})).await
}

/// The same node, the first 400 records' values made by `value(i)`.
async fn node_with_401_records(last: &str, value: impl Fn(u64) -> Value) -> (TestServer, u64) {
    let node = TestServer::start_with("[limits]\ncatchup_concurrency = 1\n").await;
    let records: Vec<(String, Value)> = (0..400)
        .map(|i| (format!("k{}", i % 7), value(i)))
        .collect();
    node.publish_batch("one", &records).await;
    let any = node.publish("one", last, json!({"i": 400})).await;
    let epoch = Cursor::decode(any["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    (node, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_few_records_apart_share_the_earliest_read_in_flight() {
    let _alone = CATCHUP_METRICS.lock().await;
    // As after a lost node: each client was live until its own last record, so
    // their cursors differ by a few records. With one permit the reads queue,
    // and each later start joins a read that covers it.
    let (node, epoch) = one_permit_node_with_401_records("k0").await;
    let reads_before = metric(&node, "pushgate_catchup_reads_total").await;
    let joined_before = metric(&node, "pushgate_catchup_reads_coalesced_total").await;
    const CLIENTS: u64 = 40;
    let resumes = (0..CLIENTS).map(|c| {
        let from = 10 + c;
        let cursor = Cursor::new(epoch, vec![from]).encode();
        let addr = node.addr;
        async move {
            let mut ws = WsClient::connect(addr).await;
            ws.subscribe(json!({"topic": "one", "cursor": cursor}))
                .await;
            let got = ws.records((401 - from) as usize).await;
            let got: Vec<u64> = got.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
            (from, got)
        }
    });
    let all = futures_util::stream::iter(resumes)
        .buffer_unordered(CLIENTS as usize)
        .collect::<Vec<_>>()
        .await;
    for (from, got) in &all {
        let expected: Vec<u64> = (*from..401).collect();
        assert_eq!(
            got, &expected,
            "from {from}: exactly the missed records, in order, once each"
        );
    }
    let reads = metric(&node, "pushgate_catchup_reads_total").await - reads_before;
    let joined = metric(&node, "pushgate_catchup_reads_coalesced_total").await - joined_before;
    // One answer each (a read of its own, or its part of one in flight); with
    // exact-range sharing only, no two of these 40 ranges would ever be shared.
    assert_eq!(
        reads + joined,
        CLIENTS as f64,
        "reads {reads}, joined {joined}"
    );
    assert!(
        joined > 0.0,
        "{CLIENTS} resumes from 40 different offsets: {reads} log reads, none joined"
    );
    println!("{CLIENTS} resumes from different offsets: {reads} log reads, {joined} joined one in flight");
}

#[tokio::test]
async fn a_cursor_naming_partitions_the_topic_does_not_have_is_a_bad_cursor() {
    let node = TestServer::start().await;
    let any = node.publish("one", "k", json!({})).await;
    let epoch = Cursor::decode(any["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    // `one` has one partition; this cursor of the same log names five.
    let forged = Cursor::new(epoch, vec![0, 0, 0, 0, 0]).encode();
    let mut ws = node.ws().await;
    ws.send(json!({"type": "subscribe", "id": 1, "topic": "one", "cursor": forged}))
        .await;
    let reply = ws.json().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(
        reply["code"], "bad_cursor",
        "not `unavailable` for ever: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_resumes_of_a_few_keys_take_a_recent_read_and_get_exactly_their_keys_records() {
    let _alone = CATCHUP_METRICS.lock().await;
    // As after a cold restart: resumes arrive one after another, each after the
    // previous one's read is done (so none is in flight to join), and each
    // wants a few keys of the range. The first reads the log; the others take
    // the recent read through its key index.
    // Offset 400, keyed like the others (400 % 7 == 1).
    let (node, epoch) = one_permit_node_with_401_records("k1").await;
    let key_of = |i: u64| format!("k{}", i % 7);
    let reads_before = metric(&node, "pushgate_catchup_reads_total").await;
    let joined_before = metric(&node, "pushgate_catchup_reads_coalesced_total").await;
    let wants: [(u64, &[&str]); 5] = [
        (10, &["k3"]),
        (10, &["k1", "k5"]),
        (57, &["k0", "k6", "k2"]),
        (200, &["k4"]),
        (10, &["k3", "nobody"]),
    ];
    for (from, keys) in wants {
        let cursor = Cursor::new(epoch, vec![from]).encode();
        let mut ws = node.ws().await;
        ws.subscribe(json!({"topic": "one", "keys": keys, "cursor": cursor}))
            .await;
        let expected: Vec<u64> = (from..401)
            .filter(|&i| keys.contains(&key_of(i).as_str()))
            .collect();
        let got: Vec<u64> = ws
            .records(expected.len())
            .await
            .iter()
            .map(|r| {
                let offset = r["offset"].as_u64().unwrap();
                assert_eq!(r["key"], key_of(offset), "{r}");
                offset
            })
            .collect();
        assert_eq!(
            got, expected,
            "from {from}, keys {keys:?}: exactly their records, in order"
        );
        // Nothing more: the `live` that ends the replay counts exactly these.
        ws.expect_silence(Duration::from_millis(300)).await;
        let live = ws.lives.last().expect("a live message");
        assert_eq!(live["replayed"], expected.len(), "{live}");
    }
    let reads = metric(&node, "pushgate_catchup_reads_total").await - reads_before;
    let joined = metric(&node, "pushgate_catchup_reads_coalesced_total").await - joined_before;
    // Offsets 0-400: one read of the block that holds them all, shared by the rest.
    assert_eq!(reads, 1.0, "reads {reads}, joined {joined}");
    assert_eq!(joined, 4.0, "reads {reads}, joined {joined}");
}
