//! Schema-registry encodings on Kafka topics (`encoding`, `key_encoding`, `[schema_registry]`):
//! records written by confluent-kafka's Avro, Protobuf and JSON Schema serializers (Python,
//! tests/registry/produce.py, sharing no code with pushgate) through a real registry
//! (Apicurio Registry, scripts/registry) to Apache Kafka reach WebSocket, SSE and gRPC
//! (Python grpcio, tests/grpc/client.py) clients as JSON with the README's type mapping.
//! A second Avro schema version registered while pushgate runs decodes beside the first;
//! a filter and `fields` on the field it added work, and a JSON Patch delta between a
//! record of each version turns one into the other. Records with an unknown schema id or
//! bytes not in the wire format are counted, logged with their position, dead-lettered
//! and skipped while later records still arrive. A registry that is down at start keeps
//! the node not ready until it answers.

mod common;
mod kafka_common;

use std::time::Duration;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A registry started by scripts/registry, stopped on drop.
struct Registry {
    url: String,
    port: String,
}

impl Registry {
    async fn start(port: Option<u16>) -> Self {
        let script = repo().join("scripts/registry");
        let mut cmd = tokio::process::Command::new(&script);
        cmd.arg("start");
        if let Some(p) = port {
            cmd.arg(p.to_string());
        }
        let out = cmd.output().await.expect("scripts/registry");
        assert!(
            out.status.success(),
            "scripts/registry start failed (scripts/registry-setup installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        Self { url, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/registry"))
            .args(["stop", &self.port])
            .status();
    }
}

fn python() -> std::path::PathBuf {
    repo().join("tests/registry/.venv/bin/python")
}

/// Runs produce.py: each step `TOPIC=KIND:KEY[:ARG]` is one acknowledged record.
async fn produce(registry: &str, broker: &Broker, steps: &[&str]) {
    let run = tokio::process::Command::new(python())
        .arg(repo().join("tests/registry/produce.py"))
        .arg(registry)
        .arg(broker.addr_for(Mode::Plaintext))
        .args(steps)
        .kill_on_drop(true)
        .output();
    // Bounded: a test fails, it never hangs the suite.
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("produce.py {steps:?} ran for 180 s"))
        .expect("tests/registry/.venv (scripts/registry-setup)");
    assert!(
        out.status.success(),
        "produce.py {steps:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `tests/grpc/client.py subscribe` (Python grpcio), read line by line.
struct Grpc {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Grpc {
    fn start(addr: std::net::SocketAddr, request: Value) -> Self {
        let mut child = tokio::process::Command::new(repo().join("tests/grpc/.venv/bin/python"))
            .arg(repo().join("tests/grpc/client.py"))
            .arg("subscribe")
            .arg(addr.to_string())
            .arg(request.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tests/grpc/.venv (scripts/grpc-setup)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            lines,
        }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("a gRPC event within 30 s")
            .unwrap()
            .expect("client.py ended early");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("end").is_none(), "the stream ended: {v}");
        v
    }

    /// Reads past the snapshot to the `live` marker.
    async fn until_live(&mut self) {
        while self.next().await["type"] != "live" {}
    }

    /// The next `n` records.
    async fn records(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.next().await;
            if v["type"] == "record" {
                out.push(v);
            }
        }
        out
    }
}

/// The shared Kafka config with a dead-letter topic, the registry, and each topic's encodings.
fn config(broker: &Broker, registry: &str, topics: &[(&str, &str)]) -> String {
    let names: Vec<(&str, usize)> = topics.iter().map(|(n, _)| (*n, 64)).collect();
    let mut text = kafka_config(
        &broker.addr(),
        &names,
        &format!(
            "[schema_registry]\nurl = \"{registry}\"\nretries = 2\nretry_backoff = \"50ms\"\n"
        ),
    )
    .replace("[kafka]\n", "[kafka]\ndead_letter_topic = \"reg-dlq\"\n");
    for (name, encodings) in topics {
        text = text.replace(
            &format!("name = \"{name}\"\n"),
            &format!("name = \"{name}\"\n{encodings}\n"),
        );
    }
    text
}

/// What a v1 Order of produce.py is, by the README's mapping.
fn order_v1(key: &str, qty: u64) -> Value {
    json!({
        "id": key, "qty": qty, "price": "1234.50", "at": "2024-01-02T03:04:05.123Z",
        "day": "2024-01-02", "blob": "/wAB", "state": "PAID",
        "note": if qty % 2 == 1 { Value::Null } else { json!("even") },
        "attrs": {"a": 1, "b": 2}, "ratio": 0.25
    })
}

fn order_v2(key: &str, tier: &str) -> Value {
    let mut v = order_v1(key, 2);
    v["tier"] = json!(tier);
    v
}

fn keys_and_data(records: &[Value]) -> Vec<(String, Value)> {
    records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("").to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn avro_protobuf_and_json_schema_reach_clients_as_json_through_evolution_and_failures() {
    if !tiers(&["kafka", "registry", "grpc"]) {
        return;
    }
    let registry = Registry::start(None).await;
    let broker = Broker::shared();
    for t in ["reg-avro", "reg-proto", "reg-json", "reg-akey", "reg-dlq"] {
        broker.create_topic(t, 1, &[]).await;
    }
    // Before pushgate starts: read (and decoded) by the warm start.
    produce(&registry.url, &broker, &["reg-avro=avro1:k1:1"]).await;

    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &broker,
        &registry.url,
        &[
            ("reg-avro", "encoding = \"avro\""),
            ("reg-proto", "encoding = \"protobuf\""),
            ("reg-json", "encoding = \"json-schema\""),
            ("reg-akey", "encoding = \"avro\"\nkey_encoding = \"avro\""),
        ],
    );
    let node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let http = reqwest::Client::new();

    // The warm start decoded the record written before: the view holds it.
    let back: Value = http
        .get(format!("http://{}/topics/reg-avro/view", node.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = back["records"]
        .as_array()
        .expect("records")
        .first()
        .cloned();
    assert_eq!(
        first.as_ref().map(|r| r["data"].clone()),
        Some(order_v1("k1", 1)),
        "{back}"
    );

    let mut all = WsClient::connect(node.addr).await;
    all.subscribe(json!({"topic": "reg-avro", "snapshot": false}))
        .await;
    // On the field only version 2 has: v1 records lack it and never match.
    let mut gold = WsClient::connect(node.addr).await;
    gold.subscribe(json!({"topic": "reg-avro", "snapshot": false,
        "filter": {"tier": "gold"}, "fields": ["id", "tier"]}))
        .await;
    let mut sse = SseClient::connect(&http, node.addr, "topic=reg-avro&snapshot=false", None).await;
    assert_eq!(sse.next().await.event, "subscribed");
    let mut grpc = Grpc::start(node.addr, json!({"topic": "reg-avro"}));
    grpc.until_live().await;
    let mut others = WsClient::connect(node.addr).await;
    for t in ["reg-proto", "reg-json", "reg-akey"] {
        others
            .subscribe(json!({"topic": t, "snapshot": false}))
            .await;
    }

    // v1, two bad records, v2 registered now (a new version of the subject while
    // pushgate runs), v1 again.
    produce(
        &registry.url,
        &broker,
        &[
            "reg-avro=avro1:k2:3",
            "reg-avro=unknown:bad1",
            "reg-avro=garbage:bad2",
            "reg-avro=avro2:k3:gold",
            "reg-avro=avro2:k4:silver",
            "reg-avro=avro1:k5:4",
            "reg-proto=proto:o1",
            "reg-json=json:j1",
            "reg-akey=avrokey:kk",
        ],
    )
    .await;

    let expected = vec![
        ("k2".to_owned(), order_v1("k2", 3)),
        ("k3".to_owned(), order_v2("k3", "gold")),
        ("k4".to_owned(), order_v2("k4", "silver")),
        ("k5".to_owned(), order_v1("k5", 4)),
    ];
    assert_eq!(keys_and_data(&all.records(4).await), expected, "WebSocket");
    let events = sse.records(4).await;
    let sse_records: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_eq!(keys_and_data(&sse_records), expected, "SSE");
    assert_eq!(keys_and_data(&grpc.records(4).await), expected, "gRPC");
    assert_eq!(
        keys_and_data(&gold.records(1).await),
        vec![("k3".to_owned(), json!({"id": "k3", "tier": "gold"}))],
        "filter and fields on the field version 2 added"
    );
    gold.expect_silence(Duration::from_millis(300)).await;

    // Deltas across versions: one key written as v2, then as v1 (which lacks `tier`).
    let mut delta = WsClient::connect(node.addr).await;
    delta
        .subscribe(
            json!({"topic": "reg-avro", "snapshot": false, "keys": ["k6"], "delta": "json-patch"}),
        )
        .await;
    produce(
        &registry.url,
        &broker,
        &["reg-avro=avro2:k6:gold", "reg-avro=avro1:k6:4"],
    )
    .await;
    let [full, patched] = <[Value; 2]>::try_from(delta.records(2).await).unwrap();
    assert_eq!(
        full["data"],
        order_v2("k6", "gold"),
        "the first is whole: {full}"
    );
    let ops = patched["patch"].clone();
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["op"] == "remove" && op["path"] == "/tier"),
        "v1 has no tier: {ops}"
    );
    let mut doc = full["data"].clone();
    json_patch::patch(
        &mut doc,
        &serde_json::from_value::<json_patch::Patch>(ops).unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc,
        order_v1("k6", 4),
        "the patch turns v2 into the v1 record"
    );

    // Protobuf (message index [1], nested message, enum, int64, Timestamp, bytes, a bool
    // at its default), JSON Schema, and an Avro key.
    let mut by_topic: Vec<(String, String, Value)> = others
        .records(3)
        .await
        .into_iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
                r["data"].clone(),
            )
        })
        .collect();
    by_topic.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_topic,
        vec![
            (
                "reg-akey".into(),
                r#"{"id":"kk"}"#.into(),
                order_v1("kk", 1)
            ),
            (
                "reg-json".into(),
                "j1".into(),
                json!({"id": "j1", "qty": 3, "tags": ["x"]})
            ),
            (
                "reg-proto".into(),
                "o1".into(),
                json!({"id": "o1", "qty": 9007199254740993u64, "customer": {"name": "Ada"},
                       "tags": ["a", "b"], "state": "PAID", "at": "2024-01-02T03:04:05.123Z",
                       "blob": "/wA=", "shipped": false})
            ),
        ]
    );

    // The two bad records: counted by reason, copied to the dead-letter topic with
    // where they were and why, and skipped without stopping the partition (k3..k5 came).
    let metrics = reqwest::get(format!("http://{}/metrics", node.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["unknown_schema", "undecodable"] {
        let line = format!("pushgate_kafka_bad_records_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = dump_raw(&broker, "reg-dlq").await;
        // The dead-letter topic is the shared broker's: keep this test's records
        // (the other test's bad record lands there too when both run at once).
        dead.retain(|r| {
            r["headers"]["pushgate.source"]
                .as_str()
                .is_some_and(|s| !s.starts_with("reg-late/"))
        });
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reasons: Vec<(Value, Value)> = dead
        .iter()
        .map(|r| (r["key"].clone(), r["headers"]["pushgate.reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (json!("bad1"), json!("unknown_schema")),
            (json!("bad2"), json!("undecodable"))
        ],
        "{dead:?}"
    );
    assert_eq!(dead[0]["headers"]["pushgate.source"], "reg-avro/0/2");
    let log = node.stderr();
    assert!(
        log.contains("bad record skipped") && log.contains("offset=2"),
        "logged with its position: {log}"
    );
    drop(registry);
}

#[tokio::test]
async fn a_registry_down_at_start_keeps_the_node_not_ready_until_it_answers() {
    if !tiers(&["kafka", "registry"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("reg-late", 1, &[]).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start_listening(
        dir.path(),
        &config(&broker, &url, &[("reg-late", "encoding = \"avro\"")]),
        "127.0.0.1:0",
    )
    .await;
    let http = reqwest::Client::new();
    let ready = || async {
        http.get(format!("http://{}/readyz", node.addr))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    // A record that is not in the wire format, already there: while the registry is
    // down its partition waits (nothing is skipped), and it is judged once it answers.
    produce_raw(
        &broker,
        "reg-late",
        &[json!({"key_raw": "early", "value_raw": "not in the wire format"})],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready().await, 503, "not ready while the registry is down");
    assert_eq!(
        metric(node.addr, "pushgate_kafka_bad_records_total").await,
        0.0,
        "held, not skipped, while the registry is down"
    );

    let registry = Registry::start(Some(port)).await;
    node.wait_ready(Duration::from_secs(60)).await;
    let mut bad = 0.0;
    for _ in 0..100 {
        bad = metric(node.addr, "pushgate_kafka_bad_records_total").await;
        if bad > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bad, 1.0, "read once the registry answered");
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "reg-late", "snapshot": false}))
        .await;
    produce(&registry.url, &broker, &["reg-late=avro1:late:1"]).await;
    assert_eq!(
        keys_and_data(&ws.records(1).await),
        vec![("late".to_owned(), order_v1("late", 1))]
    );
}
