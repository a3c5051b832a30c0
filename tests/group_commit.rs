//! Group commit in the embedded log (issue 29 item 5), on the real binary:
//! publishes that arrive together share a commit, and each is still answered
//! only once its record is committed, with its own offset, after subscribers got it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PUBLISHES: u64 = 200;
const KEYS: u64 = 50;

/// `embedded.commit_wait` long enough that concurrent publishes surely group.
const CONFIG: &str = "[embedded]\ncommit_wait = \"20ms\"\ndurability = \"fsync\"\n\
                      [limits]\npublish_rate = 100000.0\npublish_burst = 100000.0\n";

/// The value of the unlabelled metric `name` in the node's `/metrics` now.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// 200 concurrent single-record publishes (50 keys, each four times) on one
/// partition: every answer has its own offset, together exactly 0..200; a
/// subscriber gets all of them in offset order; fewer commits than publishes
/// ran; and after a SIGKILL right after the last answer, a restarted node
/// holds every acknowledged record, each key's latest being its last publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits_and_keep_offsets_order_and_durability() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_toml(dir.path(), CONFIG);
    let mut node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let addr = node.addr;
    let mut ws = WsClient::connect(addr).await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;

    let metrics_url = format!("http://{addr}/metrics");
    let commits_before = metric(&metrics_url, "pushgate_log_commits_total").await;
    let http = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..PUBLISHES).map(|i| {
        let http = http.clone();
        async move {
            let body = publish(
                &http,
                addr,
                "one",
                &format!("k{}", i % KEYS),
                json!({"seq": i}),
            )
            .await;
            (i, body["offset"].as_u64().expect("offset"))
        }
    }))
    .await;
    let commits = metric(&metrics_url, "pushgate_log_commits_total").await - commits_before;

    // Each publish its own offset, together exactly 0..PUBLISHES.
    let offset_of: BTreeMap<u64, u64> = answers.iter().copied().collect();
    let offsets: BTreeSet<u64> = offset_of.values().copied().collect();
    assert_eq!(offsets, (0..PUBLISHES).collect::<BTreeSet<_>>());
    assert!(
        commits >= 1.0 && commits < PUBLISHES as f64 / 2.0,
        "{commits} commits for {PUBLISHES} concurrent publishes: not grouped"
    );

    // The subscriber got every record, in offset order, each as acknowledged.
    let got = ws.records(PUBLISHES as usize).await;
    let seen: Vec<u64> = got.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(seen, (0..PUBLISHES).collect::<Vec<_>>(), "in offset order");
    for r in &got {
        assert_eq!(offset_of[&seq(r)], r["offset"].as_u64().unwrap());
    }

    // Acknowledged means committed: a SIGKILL loses none of them.
    node.sigkill();
    node.wait(Duration::from_secs(10)).await;
    let mut node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws.subscribe(json!({"topic": "one"})).await;
    assert_eq!(reply["snapshot"], KEYS, "{reply}");
    let snapshot: Vec<Value> = ws.records(KEYS as usize).await;
    let mut keys = BTreeSet::new();
    for r in &snapshot {
        let key = r["key"].as_str().unwrap();
        let k: u64 = key[1..].parse().unwrap();
        // The key's latest record is its publish that got the highest offset.
        let last = (0..PUBLISHES)
            .filter(|s| s % KEYS == k)
            .max_by_key(|s| offset_of[s])
            .unwrap();
        assert_eq!(seq(r), last, "{key}");
        assert_eq!(r["offset"].as_u64().unwrap(), offset_of[&last], "{key}");
        keys.insert(k);
    }
    assert_eq!(keys.len() as u64, KEYS);
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(15)).await, Some(0));
}
