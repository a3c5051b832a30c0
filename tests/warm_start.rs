//! A node that has just started: it accepts sockets at once and answers a
//! subscribe to a topic still warming when the topic is ready, without holding
//! up the connection's other messages (WebSocket) and without a 503 (SSE).
//!
//! The log is made large enough that the warm start takes a while; each test
//! checks that its subscribe really met the warm start (`/readyz` still 503
//! after it was sent), so a machine fast enough to hide the window fails the
//! test loudly instead of passing it for the wrong reason.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Topic `t` holds many keys and a large ring; publishes are not rate limited.
const EXTRA: &str = "[limits]\npublish_rate = 1000000.0\npublish_burst = 1000000.0\n[[topics]]\nname = \"t\"\npartitions = 3\nring_records = 50000\nretention_records = 1000000\n";

/// Topic `t`'s records written before the restart: enough that the warm
/// start of a debug build takes well over the time a client needs to connect.
const RECORDS: usize = 120_000;
const KEYS: usize = 40_000;

/// The key of the `n`th record written (the warm start keeps the latest
/// records' keys in the view, so the tests ask for keys written last).
fn key_of(n: usize) -> String {
    format!("k{}", n % KEYS)
}

/// Fills topic `t` through a gateway process, then stops it (SIGTERM).
async fn filled_log(dir: &std::path::Path) -> String {
    let config = config_toml(dir, EXTRA);
    let mut writer = Process::start(dir, &config, "127.0.0.1:0").await;
    let http = reqwest::Client::new();
    let pad = "x".repeat(150);
    for batch in 0..RECORDS / 1000 {
        let records: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                json!({"key": format!("k{}", n % KEYS), "data": {"n": n, "pad": pad}})
            })
            .collect();
        let r = http
            .post(format!("http://{}/topics/t", writer.addr))
            .json(&json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    writer.sigterm();
    assert_eq!(writer.wait(Duration::from_secs(20)).await, Some(0));
    config
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ready_status(addr).await != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready_status(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_during_the_warm_start_is_answered_when_the_topic_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = filled_log(dir.path()).await;

    // WebSocket: the subscribe waits for the topic; a later message on the
    // same connection is answered at once meanwhile.
    let mut node = Process::start_listening(dir.path(), &config, "127.0.0.1:0").await;
    let addr = node.addr;
    let mut ws = WsClient::connect(addr).await;
    let request = json!({"type": "subscribe", "id": "a", "topic": "t", "keys": [key_of(RECORDS - 5)], "snapshot": true});
    let sent = std::time::Instant::now();
    ws.send(request.clone()).await;
    ws.send(json!({"type": "subscribe", "id": "b", "topic": "nope"}))
        .await;
    assert_eq!(
        ready_status(addr).await,
        503,
        "the warm start was over before the test could meet it: make the log larger"
    );
    let first = ws.json().await;
    assert_eq!(first["type"], "error", "{first}");
    assert_eq!(
        first["id"], "b",
        "the other subscribe was not held up: {first}"
    );
    assert_eq!(first["code"], "unknown_topic", "{first}");
    let mut subscribed = ws.json().await;
    if subscribed["type"] == "error" {
        // Only once the bounded wait is over and the node is still warming
        // (a loaded machine): `unavailable`, and asked again it is served.
        assert_eq!(subscribed["code"], "unavailable", "{subscribed}");
        assert!(
            sent.elapsed() >= pushgate::TOPIC_READY_WAIT,
            "answered unavailable before the wait was over: {subscribed}"
        );
        println!("the warm start outlasted the wait; subscribing again once ready");
        wait_ready(addr).await;
        ws.send(request).await;
        subscribed = ws.json().await;
    }
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["id"], "a");
    assert_eq!(subscribed["snapshot"], 1);
    let record = ws.json().await;
    assert_eq!(record["key"], key_of(RECORDS - 5));
    assert_eq!(
        record["data"]["n"],
        RECORDS - 5,
        "the snapshot is the latest value"
    );
    assert_eq!(ready_status(addr).await, 200);
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(20)).await, Some(0));

    // SSE: the request is answered with the stream, not 503.
    let mut node = Process::start_listening(dir.path(), &config, "127.0.0.1:0").await;
    let addr = node.addr;
    let http = reqwest::Client::new();
    let sent = std::time::Instant::now();
    let sse = tokio::spawn(async move {
        SseClient::connect(
            &http,
            addr,
            &format!("topic=t&key={}", key_of(RECORDS - 9)),
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        ready_status(addr).await,
        503,
        "the warm start was over before the test could meet it: make the log larger"
    );
    let mut sse = sse.await.unwrap();
    if sse.status == 503 {
        // As above: only after the bounded wait, on a loaded machine.
        assert!(sent.elapsed() >= pushgate::TOPIC_READY_WAIT);
        println!("the warm start outlasted the wait; opening the stream again once ready");
        wait_ready(addr).await;
        let http = reqwest::Client::new();
        let query = format!("topic=t&key={}", key_of(RECORDS - 9));
        sse = SseClient::connect(&http, addr, &query, None).await;
    }
    assert_eq!(sse.status, 200);
    let subscribed = sse.next().await;
    assert_eq!(subscribed.event, "subscribed", "{}", subscribed.data);
    let record = sse.next().await.json();
    assert_eq!(record["key"], key_of(RECORDS - 9));
    assert_eq!(record["data"]["n"], RECORDS - 9);
    drop(sse);
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(20)).await, Some(0));
}
