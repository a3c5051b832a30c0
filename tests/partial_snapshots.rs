//! A snapshot cut short is never silent (issue 30 item 2): `subscribed` says
//! `snapshot_partial` and why, `live` says how many keys were left out, on
//! WebSocket and SSE, and `/metrics` counts it.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

async fn publish_keys(server: &TestServer, topic: &str, count: usize) {
    let all: Vec<(String, Value)> = (0..count)
        .map(|i| (format!("k{i:05}"), json!({"n": i, "even": i % 2 == 0})))
        .collect();
    for batch in all.chunks(500) {
        server.publish_batch(topic, batch).await;
    }
}

/// Subscribes over WebSocket; returns `subscribed`, the snapshot records and `live`.
async fn ws_snapshot(server: &TestServer, request: Value) -> (Value, usize, Value) {
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(request).await;
    let n = subscribed["snapshot"].as_u64().unwrap() as usize;
    let records = ws.records(n).await;
    assert!(records.iter().all(|r| r["snapshot"] == true));
    while ws.lives.is_empty() {
        if let Some(ev) = ws.event_within(Duration::from_millis(100)).await {
            panic!("unexpected {ev:?}");
        }
    }
    (subscribed, n, ws.lives.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_snapshot_records_cut_is_told_on_websocket_and_sse() {
    let server = TestServer::start_with("[limits]\nmax_snapshot_records = 50\n").await;
    publish_keys(&server, "t", 120).await;

    let (subscribed, n, live) = ws_snapshot(&server, json!({"topic": "t"})).await;
    assert_eq!(n, 50);
    assert_eq!(subscribed["snapshot_partial"], true, "{subscribed}");
    assert_eq!(
        subscribed["snapshot_partial_reason"],
        "max_snapshot_records"
    );
    assert_eq!(live["snapshot_skipped"], 70, "{live}");

    // With a value filter the cut counts the matching keys only.
    let (subscribed, n, live) =
        ws_snapshot(&server, json!({"topic": "t", "filter": {"even": true}})).await;
    assert_eq!((n, &subscribed["snapshot_partial"]), (50, &json!(true)));
    assert_eq!(live["snapshot_skipped"], 10, "{live}");

    // Under the cap: nothing said.
    let (subscribed, n, live) =
        ws_snapshot(&server, json!({"topic": "t", "prefix": "k0001"})).await;
    assert_eq!(n, 10);
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    assert!(subscribed.get("snapshot_partial_reason").is_none());
    assert!(live.get("snapshot_skipped").is_none(), "{live}");
    // A resume sends no snapshot, so nothing is partial.
    let cursor = subscribed["cursor"].as_str().unwrap();
    let mut ws = server.ws().await;
    let resumed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert!(resumed.get("snapshot_partial").is_none(), "{resumed}");

    // SSE: the same members in `subscribed` and `live`.
    let mut sse = server.sse("topic=t", None).await;
    assert_eq!(sse.status, 200);
    let subscribed = sse.next().await;
    assert_eq!(subscribed.event, "subscribed");
    let subscribed = subscribed.json();
    assert_eq!(subscribed["snapshot"], 50);
    assert_eq!(subscribed["snapshot_partial"], true);
    assert_eq!(
        subscribed["snapshot_partial_reason"],
        "max_snapshot_records"
    );
    sse.records(50).await;
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(sse.lives.len(), 1);
    assert_eq!(sse.lives[0]["snapshot_skipped"], 70, "{}", sse.lives[0]);

    let metrics = server.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("pushgate_snapshots_partial_total{reason=\"max_snapshot_records\"}")
        })
        .unwrap_or_else(|| panic!("no partial snapshot metric:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    server.stop().await;
}

/// On the embedded log, eviction no longer cuts a snapshot: the evicted
/// keys' latest records come from the log's `latest` table (issue 30 item
/// 3; `tests/stored_views.rs` checks it under writes). Kafka, which keeps no
/// such table, still says `view_max_keys` (`hub::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_max_keys_eviction_on_the_embedded_log_is_not_partial() {
    let server =
        TestServer::start_with("[[topics]]\nname = \"v\"\npartitions = 1\nview_max_keys = 5\n")
            .await;
    publish_keys(&server, "v", 8).await;

    let (subscribed, n, live) = ws_snapshot(&server, json!({"topic": "v"})).await;
    assert_eq!(n, 8, "the 5 keys in memory and the 3 evicted ones");
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    assert!(live.get("snapshot_skipped").is_none(), "{live}");

    // Named keys, one of them evicted: complete.
    let (subscribed, n, _) =
        ws_snapshot(&server, json!({"topic": "v", "keys": ["k00007", "k00000"]})).await;
    assert_eq!(n, 2);
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");

    let mut sse = server.sse("topic=v", None).await;
    let subscribed = sse.next().await.json();
    assert_eq!(subscribed["snapshot"], 8, "{subscribed}");
    assert!(subscribed.get("snapshot_partial").is_none(), "{subscribed}");
    assert!(!server
        .metrics_text()
        .await
        .contains("pushgate_snapshots_partial_total{reason=\"view_max_keys\"}"));
    server.stop().await;
}
