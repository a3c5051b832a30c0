//! Topics by pattern and topics that change under running nodes, against Apache Kafka and kafka-python.
//!
//! The tests share this binary's broker (each with topic names of its own)
//! and start the real pushgate binary. Not covered here: deleting (or deleting
//! and recreating) a topic a node is assigned to. Against tansu 0.6 that
//! crashed librdkafka 2.12 (tansu answered the Fetch for a deleted topic with a
//! zero topic id plus a `CurrentLeader` tag); it has not been written against
//! Apache Kafka yet. Deletion is covered at the metadata level by the unit
//! tests in `src/source/kafka.rs` and `src/hub.rs`.

mod common;
mod kafka_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use kafka_common::*;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

/// The node's `GET /topics`: (name, partitions, cursor) of the topics it serves (`ready`).
async fn topics(addr: SocketAddr) -> Vec<(String, u64, Cursor)> {
    let v: Value = reqwest::get(format!("http://{addr}/topics"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ready"] == true)
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["partitions"].as_u64().unwrap(),
                Cursor::decode(t["cursor"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

async fn topic_names(addr: SocketAddr) -> Vec<String> {
    topics(addr).await.into_iter().map(|t| t.0).collect()
}

/// Polls `GET /topics` until `done` holds; returns how long that took.
async fn until_topics(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    done: impl Fn(&[(String, u64, Cursor)]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if done(&topics(addr).await) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; /topics = {:?}",
            topic_names(addr).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a subscribe and returns the answer (`subscribed` or `error`).
async fn try_subscribe(ws: &mut WsClient, request: Value) -> Value {
    let mut msg = request;
    msg["type"] = json!("subscribe");
    ws.send(msg).await;
    ws.json().await
}

/// A Kafka node serving `[[topics]]` tables given as TOML (after the shared test config).
async fn node(broker: &str, topics: &str, tweak: &[(&str, &str)]) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = kafka_config(broker, &[], "");
    for (from, to) in tweak {
        assert!(config.contains(from), "{from}");
        config = config.replace(from, to);
    }
    config.push_str(topics);
    let process = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    (process, dir)
}

const INVENTORY: &str = r#"
[[topics]]
name = "other"
ring_records = 64
[[topics]]
pattern = "db\\.inv\\..*"
ring_records = 64
"#;

#[tokio::test]
async fn a_pattern_serves_topics_found_at_start_and_topics_created_later_without_a_restart() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("db.inv.a", 2, &[]).await;
    broker.create_topic("other", 1, &[]).await;
    broker.create_topic("xdb.inv.a", 1, &[]).await; // anchored: not matched
    broker.create_topic("db.invx", 1, &[]).await; // the dot is literal
    produce(&broker, "db.inv.a", 0, 4).await;
    let (n, _dir) = node(&broker.addr(), INVENTORY, &[]).await;

    assert_eq!(topic_names(n.addr).await, ["db.inv.a", "other"]);
    let mut ws = WsClient::connect(n.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "db.inv.a", "snapshot": true}))
        .await;
    assert_eq!(reply["snapshot"], 4, "warmed like a named topic: {reply}");
    ws.records(4).await;
    for name in ["db.inv.b", "xdb.inv.a", "db.invx", "nothing"] {
        let mut other = WsClient::connect(n.addr).await;
        let answer = try_subscribe(&mut other, json!({"topic": name})).await;
        assert_eq!(answer["code"], "unknown_topic", "{name}: {answer}");
    }
    produce(&broker, "db.inv.a", 4, 5).await;
    let seqs: BTreeSet<u64> = ws.records(5).await.iter().map(seq).collect();
    assert_eq!(seqs, (4..9).collect());

    // Created while the node runs: served within the metadata refresh interval (500 ms here).
    broker.create_topic("db.inv.b", 3, &[]).await;
    let found = until_topics(n.addr, Duration::from_secs(5), "db.inv.b served", |t| {
        t.iter().any(|t| t.0 == "db.inv.b")
    })
    .await;
    eprintln!("db.inv.b listed and ready {found:?} after CreateTopics returned");
    assert!(
        found < Duration::from_millis(2500),
        "within the refresh interval and a warm start: {found:?}"
    );
    let listed = topics(n.addr).await;
    let (_, partitions, cursor) = listed.iter().find(|t| t.0 == "db.inv.b").unwrap();
    assert_eq!(*partitions, 3);

    let mut ws_b = WsClient::connect(n.addr).await;
    let reply = ws_b
        .subscribe(json!({"topic": "db.inv.b", "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true);
    let sent = Instant::now();
    produce(&broker, "db.inv.b", 100, 6).await;
    let got = ws_b.records(6).await;
    eprintln!(
        "6 records produced with kafka-python (acked one by one) reached the subscriber in {:?}",
        sent.elapsed()
    );
    let seqs: BTreeSet<u64> = got.iter().map(seq).collect();
    assert_eq!(seqs, (100..106).collect());
    for r in &got {
        assert_eq!(r["topic"], "db.inv.b");
        let c = Cursor::decode(r["cursor"].as_str().unwrap()).unwrap();
        assert_eq!(c.epoch, cursor.epoch, "an epoch of its own, as listed");
        assert_eq!(c.offsets.len(), 3);
    }
    ws_b.expect_silence(Duration::from_millis(300)).await;
    ws.expect_silence(Duration::from_millis(10)).await; // nothing of db.inv.b on db.inv.a

    // Kafka topics are never created by pushgate: publishing to a matching name Kafka lacks is 404.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/topics/db.inv.zzz", n.addr))
        .json(&json!({"key": "k", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_topic");
    // ...while a matched topic takes publishes.
    let r = publish(&http, n.addr, "db.inv.b", "k1", json!({"seq": 200})).await;
    assert_eq!(r["topic"], "db.inv.b");
    assert_eq!(seq(&ws_b.records(1).await[0]), 200);
}

#[tokio::test]
async fn a_matching_topic_is_retryable_while_the_node_warms_and_an_unmatched_one_is_unknown() {
    if !tiers(&["kafka"]) {
        return;
    }
    // No broker at all: the node never gets past its start, so every topic is "warming".
    let nobody = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut config = kafka_config(&nobody, &[], "")
        .replace("startup_timeout = \"10s\"", "startup_timeout = \"60s\"");
    config.push_str(INVENTORY);
    let n = Process::start_listening(dir.path(), &config, "127.0.0.1:0").await;
    let http = reqwest::Client::new();

    let mut ws = WsClient::connect(n.addr).await;
    for (topic, code) in [
        ("db.inv.anything", "unavailable"),
        ("other", "unavailable"),
        ("xdb.inv.a", "unknown_topic"),
        ("__db.inv.a", "unknown_topic"),
    ] {
        let answer = try_subscribe(&mut ws, json!({"topic": topic})).await;
        assert_eq!(answer["code"], code, "{topic}: {answer}");
    }
    let sse = http
        .get(format!("http://{}/sse?topic=db.inv.anything", n.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503);
    assert!(sse.headers().get("retry-after").is_some());
    let sse = http
        .get(format!("http://{}/sse?topic=nomatch", n.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 404);
    let publish = http
        .post(format!("http://{}/topics/db.inv.anything", n.addr))
        .json(&json!({"key": "k", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 503);
}

#[tokio::test]
async fn partitions_added_while_nodes_run_reach_subscribers_and_old_cursors_resume_exactly() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("grow", 2, &[]).await;
    let grow = "[[topics]]\npattern = \"gro.*\"\nring_records = 1024\n";
    let (a, _da) = node(&broker.addr(), grow, &[]).await;
    // A node that checks metadata rarely: it lags behind the change.
    let (lagging, _dl) = node(
        &broker.addr(),
        grow,
        &[(
            "metadata_refresh_interval = \"500ms\"",
            "metadata_refresh_interval = \"120s\"",
        )],
    )
    .await;

    let mut ws = WsClient::connect(a.addr).await;
    ws.subscribe(json!({"topic": "grow", "snapshot": false}))
        .await;
    produce_keys(&broker, "grow", 0, 10, 20).await;
    let before = ws.records(10).await;
    let old_cursor = before[9]["cursor"].as_str().unwrap().to_owned();
    assert_eq!(Cursor::decode(&old_cursor).unwrap().offsets.len(), 2);

    add_partitions(&broker, "grow", 4).await;
    let grown = until_topics(a.addr, Duration::from_secs(5), "4 partitions", |t| {
        t.iter().any(|t| t.0 == "grow" && t.1 == 4)
    })
    .await;
    eprintln!("node saw 4 partitions {grown:?} after the change");

    // Keys k0..k19 over 4 partitions: k8, k10, k11, k14, k15, k18 land in 2 and 3.
    produce_keys(&broker, "grow", 10, 30, 20).await;
    let all = dump(&broker, "grow").await;
    assert_eq!(all.len(), 40);
    assert!(
        all.iter().filter(|r| r.partition >= 2).count() >= 6,
        "records in the new partitions: {all:?}"
    );
    let after = ws.records(30).await;
    let positions: BTreeSet<(u32, u64)> = after
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap() as u32,
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeSet<(u32, u64)> = all
        .iter()
        .filter(|r| r.seq.unwrap() >= 10)
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(
        positions, expected,
        "live: every record, new partitions included"
    );
    let new_cursor = after[29]["cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        Cursor::decode(&new_cursor).unwrap().offsets.len(),
        4,
        "the cursor grew"
    );
    ws.expect_silence(Duration::from_millis(300)).await;

    // The old cursor (2 partitions) resumes with nothing lost or repeated:
    // from the ring on node A, and from Kafka on a node started now with tiny rings.
    let (b, _db) = node(
        &broker.addr(),
        "[[topics]]\npattern = \"gro.*\"\nring_records = 2\n",
        &[("warm_start_records = 1000", "warm_start_records = 2")],
    )
    .await;
    for (addr, tier) in [(a.addr, "ring"), (b.addr, "kafka")] {
        let mut ws = WsClient::connect(addr).await;
        let reply = ws
            .subscribe(json!({"topic": "grow", "cursor": old_cursor, "snapshot": false}))
            .await;
        assert_eq!(reply["recovered"], true, "{tier}: {reply}");
        let got = ws.records(30).await;
        let mut seqs: Vec<u64> = got.iter().map(seq).collect();
        seqs.sort();
        assert_eq!(
            seqs,
            (10..40).collect::<Vec<_>>(),
            "{tier}: 0 lost, 0 repeated"
        );
        ws.expect_silence(Duration::from_millis(300)).await;
        // The cursor taken after the change resumes with nothing to replay.
        let mut ws = WsClient::connect(addr).await;
        let reply = ws
            .subscribe(json!({"topic": "grow", "cursor": new_cursor, "snapshot": false}))
            .await;
        assert_eq!(reply["recovered"], true, "{tier}: {reply}");
        ws.expect_silence(Duration::from_millis(300)).await;
    }
    assert!(metric(b.addr, "pushgate_kafka_catchup_reads_total").await >= 1.0);

    // A node that has not seen the new partitions yet serves the old cursor
    // from what it reads (partitions 0 and 1)...
    assert_eq!(
        topics(lagging.addr).await[0].1,
        2,
        "the lagging node still knows 2"
    );
    let mut ws = WsClient::connect(lagging.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "grow", "cursor": old_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true);
    let known: BTreeSet<u64> = all
        .iter()
        .filter(|r| r.seq.unwrap() >= 10 && r.partition < 2)
        .map(|r| r.seq.unwrap())
        .collect();
    let got: BTreeSet<u64> = ws.records(known.len()).await.iter().map(seq).collect();
    assert_eq!(got, known);
    ws.expect_silence(Duration::from_millis(300)).await;
    drop(ws);
    // ...and the new cursor, naming partitions it has not seen, makes it
    // refresh its metadata at once (not in 120 s) and resume exactly.
    let asked = Instant::now();
    let mut ws = WsClient::connect(lagging.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "grow", "cursor": new_cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        topics(lagging.addr).await[0].1,
        4,
        "the lagging node learned 4"
    );
    ws.expect_silence(Duration::from_millis(300)).await;

    // A cursor of this topic naming partitions Kafka does not have (forged or
    // corrupted): once a refresh confirms the count, `bad_cursor`, not
    // `unavailable` ("retry shortly") for ever.
    let forged = Cursor::new(Cursor::decode(&new_cursor).unwrap().epoch, vec![0; 9]).encode();
    for addr in [a.addr, lagging.addr] {
        let asked = Instant::now();
        let mut ws = WsClient::connect(addr).await;
        let answer = try_subscribe(&mut ws, json!({"topic": "grow", "cursor": forged})).await;
        assert_eq!(answer["code"], "bad_cursor", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("9 partitions"),
            "{answer}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
    }

    // Kafka egress per topic, from librdkafka's statistics (every 5 s): node A
    // fetched the 40 records of `grow`, each over 20 bytes.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let bytes = metric(a.addr, "pushgate_kafka_fetch_bytes_total").await;
        if bytes >= 40.0 * 20.0 {
            break;
        }
        assert!(Instant::now() < deadline, "fetch bytes {bytes}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
