//! Topics by pattern in the embedded log: created by their first publish, kept across restarts (the real binary).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

const TOPICS: &str = r#"
[[topics]]
name = "fixed"
[[topics]]
pattern = "orders\\..*"
partitions = 3
ring_records = 16
max_topics = 2
"#;

/// `GET /topics`: name -> (partitions, cursor, ready).
async fn topics(addr: SocketAddr) -> Vec<(String, u64, Cursor, bool)> {
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
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["partitions"].as_u64().unwrap(),
                Cursor::decode(t["cursor"].as_str().unwrap()).unwrap(),
                t["ready"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn names(addr: SocketAddr) -> Vec<String> {
    topics(addr).await.into_iter().map(|t| t.0).collect()
}

async fn post(addr: SocketAddr, topic: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/topics/{topic}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn start(dir: &Path, topics: &str) -> Process {
    Process::start(dir, &config_toml(dir, topics), "127.0.0.1:0").await
}

async fn stop(mut process: Process) {
    process.sigterm();
    assert_eq!(process.wait(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test]
async fn the_first_publish_to_a_matching_name_creates_the_topic_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), TOPICS).await;
    assert_eq!(names(node.addr).await, ["fixed"]);

    // Before its first publish a matching name is unknown (subscribing never creates).
    let mut ws = WsClient::connect(node.addr).await;
    ws.send(json!({"type": "subscribe", "topic": "orders.eu"}))
        .await;
    assert_eq!(ws.json().await["code"], "unknown_topic");
    let sse = reqwest::get(format!("http://{}/sse?topic=orders.eu", node.addr))
        .await
        .unwrap();
    assert_eq!(sse.status(), 404);
    assert_eq!(
        names(node.addr).await,
        ["fixed"],
        "subscribing created nothing"
    );
    // Unmatched, or matched but not a valid topic name: refused, nothing created.
    for name in ["nomatch", "xorders.eu", "orders.a%20b", "orders.a*b"] {
        let (status, body) = post(node.addr, name, json!({"key": "a", "data": 1})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("unknown_topic")),
            "{name}"
        );
    }
    // A bad body to a matching name creates nothing either.
    let (status, _) = post(node.addr, "orders.eu", json!({"key": "a"})).await;
    assert_eq!(status, 400);
    assert_eq!(names(node.addr).await, ["fixed"]);

    // The first publish creates it, with the pattern's 3 partitions.
    let (status, first) = post(
        node.addr,
        "orders.eu",
        json!({"key": "a", "data": {"seq": 0}}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["topic"], "orders.eu");
    assert_eq!(first["offset"], 0);
    assert_eq!(
        Cursor::decode(first["cursor"].as_str().unwrap())
            .unwrap()
            .offsets
            .len(),
        3
    );
    let listed = topics(node.addr).await;
    let eu = listed.iter().find(|t| t.0 == "orders.eu").expect("listed");
    assert_eq!((eu.1, eu.3), (3, true));
    let epoch = eu.2.epoch;

    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws.subscribe(json!({"topic": "orders.eu"})).await;
    assert_eq!(reply["snapshot"], 1);
    assert_eq!(seq(&ws.records(1).await[0]), 0);
    for s in 1..6u64 {
        publish(
            &reqwest::Client::new(),
            node.addr,
            "orders.eu",
            &format!("k{s}"),
            json!({"seq": s}),
        )
        .await;
    }
    let got = ws.records(5).await;
    assert_eq!(
        got.iter().map(seq).collect::<Vec<_>>(),
        (1..6).collect::<Vec<_>>()
    );
    let cursor = got[4]["cursor"].as_str().unwrap().to_owned();
    // Missed by that client from here on: seq 6..10, then a restart.
    drop(ws);
    for s in 6..10u64 {
        publish(
            &reqwest::Client::new(),
            node.addr,
            "orders.eu",
            &format!("k{s}"),
            json!({"seq": s}),
        )
        .await;
    }

    // Concurrent first publishes to one new name: created once, every record placed once.
    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            post(
                addr,
                "orders.us",
                json!({"key": format!("u{s}"), "data": {"seq": s}}),
            )
            .await
        }));
    }
    let mut placed = BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        placed.insert((
            body["partition"].as_u64().unwrap(),
            body["offset"].as_u64().unwrap(),
        ));
    }
    assert_eq!(placed.len(), 8, "no position handed out twice: {placed:?}");
    assert_eq!(names(node.addr).await, ["fixed", "orders.eu", "orders.us"]);

    // max_topics = 2: a third topic through this pattern is refused.
    let (status, body) = post(node.addr, "orders.asia", json!({"key": "a", "data": 1})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("too_many_topics")),
        "{body}"
    );
    assert!(!names(node.addr).await.contains(&"orders.asia".to_owned()));
    let before = topics(node.addr).await;
    stop(node).await;

    // Restart on the same data dir: both created topics are back, same epochs and positions.
    let node = start(dir.path(), TOPICS).await;
    let after = topics(node.addr).await;
    assert_eq!(
        after.iter().map(|t| (&t.0, t.1, &t.2)).collect::<Vec<_>>(),
        before.iter().map(|t| (&t.0, t.1, &t.2)).collect::<Vec<_>>(),
        "same topics, partitions and cursors (epoch and offsets)"
    );
    assert!(after.iter().all(|t| t.3), "ready");
    assert_eq!(after[1].2.epoch, epoch);
    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "orders.eu", "cursor": cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut seqs: Vec<u64> = ws.records(4).await.iter().map(seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (6..10).collect::<Vec<_>>(),
        "nothing lost or repeated across the restart"
    );
    ws.expect_silence(Duration::from_millis(200)).await;
    publish(
        &reqwest::Client::new(),
        node.addr,
        "orders.eu",
        "k1",
        json!({"seq": 10}),
    )
    .await;
    assert_eq!(seq(&ws.records(1).await[0]), 10);
    // Still at its limit after the restart.
    let (status, _) = post(node.addr, "orders.asia", json!({"key": "a", "data": 1})).await;
    assert_eq!(status, 409);
    stop(node).await;

    // Without the pattern the created topics are kept on disk but not served.
    let node = start(dir.path(), "[[topics]]\nname = \"fixed\"\n").await;
    assert_eq!(names(node.addr).await, ["fixed"]);
    let (status, _) = post(node.addr, "orders.eu", json!({"key": "a", "data": 1})).await;
    assert_eq!(status, 404);
    stop(node).await;
    // ...and served again, with everything, when it comes back.
    let node = start(dir.path(), TOPICS).await;
    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "orders.eu", "cursor": cursor, "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true);
    let mut seqs: Vec<u64> = ws.records(5).await.iter().map(seq).collect();
    seqs.sort();
    assert_eq!(seqs, (6..11).collect::<Vec<_>>());
}
