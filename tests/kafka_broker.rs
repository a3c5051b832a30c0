//! What only a real Kafka broker allows: ACLs, transactions, log compaction.
//!
//! One Apache Kafka node for the whole binary, with `StandardAuthorizer`
//! (`allow.everyone.if.no.acl.found=true`: topics without ACLs are open, so
//! only the ACL test's topic is guarded; PLAINTEXT is the super user that
//! administers) and a log cleaner that runs every 500 ms. pushgate reaches it
//! as `PUSHGATE_TEST_KAFKA_SECURITY` says, except in the ACL test, which needs
//! a named principal (SCRAM-SHA-512). kafka-python is the independent client.

mod common;
mod kafka_common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use kafka_common::*;
use serde_json::{json, Value};

/// This binary's broker (see the module doc).
fn broker() -> Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            Broker::shared_with(&[
                "--authorizer",
                "User:admin",
                "--prop",
                "allow.everyone.if.no.acl.found=true",
                "--prop",
                "log.cleaner.backoff.ms=500",
            ])
        })
        .clone()
}

async fn node(broker: &Broker, topics: &[(&str, usize)], tweak: &[(&str, &str)]) -> NodeDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = kafka_config_as(broker.mode, &broker.addr(), topics, "");
    for (from, to) in tweak {
        assert!(config.contains(from), "{from}");
        config = config.replace(from, to);
    }
    let process = Process::start_listening(dir.path(), &config, "127.0.0.1:0").await;
    NodeDir { process, _dir: dir }
}

struct NodeDir {
    process: Process,
    _dir: tempfile::TempDir,
}

async fn ready(addr: std::net::SocketAddr) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Subscribes, retrying a refusal until `within`; the last answer.
async fn subscribe_until(ws: &mut WsClient, request: Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut request = request;
    request["type"] = json!("subscribe");
    loop {
        ws.send(request.clone()).await;
        let reply = ws.json().await;
        if reply["type"] == "subscribed" || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records of a transaction that was aborted never reach a client, live, in a
/// snapshot, from the ring or from Kafka; committed ones do, once, and a node
/// that starts on a log ending in a transaction marker gets ready.
#[tokio::test]
async fn aborted_transactions_never_reach_a_client() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = broker();
    broker.create_topic("txn", 1, &[]).await;
    let n = node(&broker, &[("txn", 64)], &[]).await;
    n.process.wait_ready(Duration::from_secs(20)).await;
    let mut ws = WsClient::connect(n.process.addr).await;
    ws.subscribe(json!({"topic": "txn", "snapshot": false}))
        .await;

    let txn = |start: u64, count: u64, abort: bool| {
        let broker = broker.clone();
        async move {
            let (start, count, addr) = (start.to_string(), count.to_string(), broker.addr());
            let mut args = vec![
                "txn",
                "--brokers",
                &addr,
                "--topic",
                "txn",
                "--start",
                &start,
                "--count",
                &count,
            ];
            if abort {
                args.push("--abort");
            }
            let out = tool_as(broker.mode, &args).await;
            let what = if abort { "aborted" } else { "committed" };
            assert!(out.contains(&format!("{what} {count}")), "{out}");
        }
    };
    txn(0, 3, false).await;
    txn(100, 3, true).await; // keys k0..k2 again: must not replace their values
    txn(3, 2, false).await;
    produce(&broker, "txn", 5, 1).await; // outside any transaction
    txn(6, 1, false).await; // the log ends with a commit marker
    let seqs: Vec<u64> = ws.records(7).await.iter().map(seq).collect();
    assert_eq!(seqs, (0..7).collect::<Vec<_>>(), "committed, in order");
    ws.expect_silence(Duration::from_millis(500)).await;

    // They are in the log: kafka-python reading uncommitted sees them.
    let everything = dump(&broker, "txn").await;
    let aborted: BTreeSet<u64> = everything
        .iter()
        .filter_map(|r| r.seq)
        .filter(|s| *s >= 100)
        .collect();
    assert_eq!(aborted, BTreeSet::from([100, 101, 102]), "{everything:?}");

    // A node started now (the log ends in records and markers of transactions)
    // gets ready, its snapshot holds committed values only, and a resume from
    // the first record read back from Kafka (tiny ring) skips the aborted ones.
    let m = node(
        &broker,
        &[("txn", 2)],
        &[("warm_start_records = 1000", "warm_start_records = 2")],
    )
    .await;
    m.process.wait_ready(Duration::from_secs(20)).await;
    let mut snap = WsClient::connect(m.process.addr).await;
    let reply = snap
        .subscribe(json!({"topic": "txn", "snapshot": true}))
        .await;
    let count = reply["snapshot"].as_u64().unwrap() as usize;
    for r in snap.records(count).await {
        assert!(seq(&r) < 100, "an aborted value in the snapshot: {r}");
    }
    let first_cursor = {
        let mut c = pushgate::cursor::Cursor::decode(reply["cursor"].as_str().unwrap()).unwrap();
        c.offsets = vec![1]; // after the first record
        c.encode()
    };
    let mut resume = WsClient::connect(m.process.addr).await;
    let reply = resume
        .subscribe(json!({"topic": "txn", "cursor": first_cursor}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let seqs: Vec<u64> = resume.records(6).await.iter().map(seq).collect();
    assert_eq!(seqs, (1..7).collect::<Vec<_>>());
    resume.expect_silence(Duration::from_millis(500)).await;
}

/// Kafka refuses READ on one topic to pushgate's principal: that topic is not
/// served (the cause in /readyz's `unavailable_topics` and one log line; the
/// node stays ready for the rest), subscriptions to it are `unavailable`
/// naming authorization, the other topic is served; granting READ brings it
/// up without a restart.
#[tokio::test]
async fn a_topic_pushgate_may_not_read_is_reported_and_served_once_granted() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = broker().as_mode(Mode::Scram512);
    let principal = Mode::Scram512.principal();
    broker.create_topic("acl-open", 1, &[]).await;
    broker.create_topic("acl-guarded", 1, &[]).await;
    // An ACL on the topic: from now on only what is allowed is (DESCRIBE, not READ).
    broker
        .acl("allow", &principal, "DESCRIBE", "acl-guarded")
        .await;
    broker
        .acl("allow", "User:admin", "ALL", "acl-guarded")
        .await;
    produce(&broker.as_mode(Mode::Plaintext), "acl-guarded", 0, 3).await;
    produce(&broker, "acl-open", 0, 3).await;

    let n = node(
        &broker,
        &[("acl-open", 64), ("acl-guarded", 64)],
        &[("startup_timeout = \"10s\"", "startup_timeout = \"60s\"")],
    )
    .await;
    let addr = n.process.addr;
    let http = reqwest::Client::new();

    // The open topic is served; the guarded one is refused, naming authorization.
    let mut open = WsClient::connect(addr).await;
    let reply = subscribe_until(
        &mut open,
        json!({"id": 1, "topic": "acl-open", "snapshot": false}),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut guarded = WsClient::connect(addr).await;
    guarded
        .send(json!({"type": "subscribe", "id": 2, "topic": "acl-guarded"}))
        .await;
    let refused = guarded.json().await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("authoriz"),
        "{refused}"
    );
    // Ready for what it can serve (a load balancer keeps it), the refused topic named.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = ready(addr).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cause = body["unavailable_topics"]["acl-guarded"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        cause.contains("not authorized") && cause.contains("READ"),
        "{body}"
    );
    assert!(
        body["unavailable_topics"].get("acl-open").is_none(),
        "{body}"
    );
    let sse = http
        .get(format!("http://{addr}/sse?topic=acl-guarded"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503);
    produce(&broker, "acl-open", 3, 2).await;
    let seqs: Vec<u64> = open.records(2).await.iter().map(seq).collect();
    assert_eq!(seqs, vec![3, 4], "the open topic is served meanwhile");
    let log = n.process.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("acl-guarded") && l.to_ascii_lowercase().contains("authoriz")),
        "{log}"
    );

    // Granted: served without a restart, from the warm start on.
    broker.acl("allow", &principal, "READ", "acl-guarded").await;
    let reply = subscribe_until(
        &mut guarded,
        json!({"id": 3, "topic": "acl-guarded", "snapshot": true}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["snapshot"], 3, "{reply}");
    let (status, body) = ready(addr).await;
    assert_eq!((status, body), (200, json!({"ready": true})));
    let seqs: Vec<u64> = guarded.records(3).await.iter().map(seq).collect();
    assert_eq!(seqs.len(), 3, "the snapshot: one record per key");
}

/// A compacted topic cleaned while pushgate runs: the snapshot is the latest
/// value of each key, and a resume from before the cleaned range gets what
/// Kafka still has after it, in order, once.
#[tokio::test]
async fn a_compacted_topic_cleaned_while_pushgate_runs() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = broker();
    broker
        .create_topic(
            "compacted",
            1,
            &[
                "cleanup.policy=compact",
                "segment.ms=1000",
                "min.cleanable.dirty.ratio=0.01",
                "min.compaction.lag.ms=0",
                "delete.retention.ms=1000",
            ],
        )
        .await;
    let n = node(&broker, &[("compacted", 1024)], &[]).await;
    n.process.wait_ready(Duration::from_secs(20)).await;
    let mut ws = WsClient::connect(n.process.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "compacted", "snapshot": false}))
        .await;
    let before = reply["cursor"].as_str().unwrap().to_owned();
    // 40 updates of 4 keys, then (after segment.ms) more, so the first segment closes.
    produce_keys(&broker, "compacted", 0, 40, 4).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    produce_keys(&broker, "compacted", 40, 4, 4).await;
    let live: Vec<u64> = ws.records(44).await.iter().map(seq).collect();
    assert_eq!(live, (0..44).collect::<Vec<_>>());

    // The cleaner runs: kafka-python reads fewer records than were written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let all = dump(&broker, "compacted").await;
        if all.len() < 44 {
            break all;
        }
        assert!(Instant::now() < deadline, "the log was never cleaned");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("compacted: {} of 44 records kept", kept.len());
    let kept_seqs: Vec<u64> = kept.iter().filter_map(|r| r.seq).collect();
    for seq in 40..44 {
        assert!(kept_seqs.contains(&seq), "the latest of each key stays");
    }

    // Snapshot on the running node and on a node started after the cleaning.
    let m = node(&broker, &[("compacted", 1024)], &[]).await;
    m.process.wait_ready(Duration::from_secs(20)).await;
    for addr in [n.process.addr, m.process.addr] {
        let mut snap = WsClient::connect(addr).await;
        let reply = snap
            .subscribe(json!({"topic": "compacted", "snapshot": true}))
            .await;
        assert_eq!(reply["snapshot"], 4, "{reply}");
        let latest: BTreeSet<u64> = snap.records(4).await.iter().map(seq).collect();
        assert_eq!(latest, BTreeSet::from([40, 41, 42, 43]));
    }

    // A resume from before the cleaned range, read from Kafka (tiny ring):
    // exactly the records Kafka kept, in offset order, nothing twice.
    let cold = node(
        &broker,
        &[("compacted", 2)],
        &[("warm_start_records = 1000", "warm_start_records = 2")],
    )
    .await;
    cold.process.wait_ready(Duration::from_secs(20)).await;
    let mut resume = WsClient::connect(cold.process.addr).await;
    let reply = resume
        .subscribe(json!({"topic": "compacted", "cursor": before}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = resume.records(kept.len()).await;
    let offsets: Vec<u64> = got.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    let want: Vec<u64> = kept.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, want, "what Kafka kept, in order");
    resume.expect_silence(Duration::from_millis(500)).await;
}
