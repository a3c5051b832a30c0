//! Change data capture: Debezium change topics and deletes, against Apache Kafka.
//!
//! Change events are produced by kafka-python in Debezium's documented JSON
//! shapes (MySQL connector: create, update, delete followed by a tombstone,
//! snapshot read), with and without Kafka Connect's schema/payload wrapper.
//! The tests share this binary's broker (topic names of their own) and start
//! their own pushgate processes on free 127.0.0.1 ports, killed when each
//! ends. Needs `scripts/kafka-setup`.

mod common;
mod kafka_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use kafka_common::*;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

const DLQ: &str = "pushgate.dlq";

/// A pushgate process on the Kafka source. `topics`: `[[topics]]` tables.
async fn start_node(
    broker: &Broker,
    topics: &str,
    kafka_extra: &str,
) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = kafka_config(&broker.addr(), &[], "").replace(
        "startup_timeout = \"10s\"",
        &format!("startup_timeout = \"10s\"\n{kafka_extra}"),
    );
    config.push_str(topics);
    let process = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    (process, dir)
}

fn debezium_topic(name: &str, ring: usize) -> String {
    format!("[[topics]]\nname = \"{name}\"\nformat = \"debezium\"\nring_records = {ring}\n")
}

/// Debezium's `source` block (MySQL connector).
fn source(table: &str, pos: u64, snapshot: bool) -> Value {
    json!({
        "version": "2.7.0.Final", "connector": "mysql", "name": "dbserver1",
        "ts_ms": 1_700_000_000_000u64 + pos, "snapshot": if snapshot { "true" } else { "false" },
        "db": "inventory", "sequence": null, "table": table, "server_id": 223344,
        "gtid": null, "file": "mysql-bin.000003", "pos": pos, "row": 0, "thread": 7, "query": null
    })
}

fn customer(id: u64, email: &str) -> Value {
    json!({"id": id, "first_name": "Anne", "last_name": "Kretchmar", "email": email})
}

fn row_schema(name: &str) -> Value {
    json!({
        "type": "struct", "optional": true, "name": name,
        "fields": [
            {"type": "int32", "optional": false, "field": "id"},
            {"type": "string", "optional": false, "field": "first_name"},
            {"type": "string", "optional": false, "field": "last_name"},
            {"type": "string", "optional": false, "field": "email"}
        ]
    })
}

/// JsonConverter with `schemas.enable=true`: `{"schema": …, "payload": …}`.
fn wrap_value(payload: Value) -> Value {
    let mut before = row_schema("dbserver1.inventory.customers.Value");
    before["field"] = json!("before");
    let mut after = before.clone();
    after["field"] = json!("after");
    json!({
        "schema": {
            "type": "struct", "optional": false, "name": "dbserver1.inventory.customers.Envelope",
            "fields": [
                before, after,
                {"type": "struct", "optional": false, "field": "source", "name": "io.debezium.connector.mysql.Source",
                 "fields": [{"type": "string", "optional": false, "field": "table"}]},
                {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"},
                {"type": "struct", "optional": true, "field": "transaction", "fields": []}
            ]
        },
        "payload": payload
    })
}

fn wrap_key(payload: Value) -> Value {
    json!({
        "schema": {
            "type": "struct", "optional": false, "name": "dbserver1.inventory.customers.Key",
            "fields": [{"type": "int32", "optional": false, "field": "id"}]
        },
        "payload": payload
    })
}

/// One change as produced and as a client must see it.
#[derive(Clone, Debug)]
struct Change {
    id: u64,
    /// Debezium's op code; `None` for a tombstone.
    code: Option<&'static str>,
    before: Value,
    after: Value,
    pos: u64,
}

impl Change {
    fn new(id: u64, code: &'static str, before: Value, after: Value, pos: u64) -> Self {
        Self {
            id,
            code: Some(code),
            before,
            after,
            pos,
        }
    }

    fn tombstone(id: u64) -> Self {
        Self {
            id,
            code: None,
            before: Value::Null,
            after: Value::Null,
            pos: 0,
        }
    }

    /// The line for kafka_tool's `raw` subcommand.
    fn line(&self, table: &str, wrapped: bool) -> Value {
        let key = json!({"id": self.id});
        let value = self.code.map(|code| {
            json!({
                "before": self.before, "after": self.after,
                "source": source(table, self.pos, code == "r"),
                "op": code, "ts_ms": 1_700_000_000_500u64 + self.pos, "transaction": null
            })
        });
        match (wrapped, value) {
            (false, value) => json!({"key": key, "value": value}),
            (true, Some(value)) => json!({"key": wrap_key(key), "value": wrap_value(value)}),
            // The tombstone is a record without a value, wrapper or not.
            (true, None) => json!({"key": wrap_key(key), "value": null}),
        }
    }

    fn op(&self) -> &'static str {
        match self.code {
            Some("c") => "create",
            Some("u") => "update",
            Some("d") | None => "delete",
            Some("r") => "read",
            Some(other) => panic!("no such op {other}"),
        }
    }

    fn data(&self) -> &Value {
        match self.code {
            Some("d") => &self.before,
            _ => &self.after,
        }
    }

    /// Asserts `record` (a client record) is this change.
    fn check(&self, record: &Value, table: &str) {
        assert_eq!(record["type"], "record", "{record}");
        assert_eq!(
            record["key"],
            self.id.to_string(),
            "the key field's value: {record}"
        );
        assert_eq!(record["op"], self.op(), "{record}");
        assert_eq!(&record["data"], self.data(), "{record}");
        match self.code {
            Some(_) => {
                assert_eq!(record["source"]["table"], table, "{record}");
                assert_eq!(record["source"]["pos"], self.pos, "{record}");
                assert_eq!(record["source"]["connector"], "mysql", "{record}");
                assert!(record.get("tombstone").is_none(), "{record}");
            }
            None => {
                assert_eq!(record["tombstone"], true, "{record}");
                assert!(record.get("source").is_none(), "{record}");
            }
        }
    }
}

fn position(record: &Value) -> (u32, u64) {
    (
        record["partition"].as_u64().unwrap() as u32,
        record["offset"].as_u64().unwrap(),
    )
}

/// Produces `changes` and returns them by the position each landed at.
async fn produce_changes(
    broker: &Broker,
    topic: &str,
    table: &str,
    wrapped: bool,
    changes: &[Change],
) -> BTreeMap<(u32, u64), Change> {
    let lines: Vec<Value> = changes.iter().map(|c| c.line(table, wrapped)).collect();
    let positions = produce_raw(broker, topic, &lines).await;
    positions.into_iter().zip(changes.iter().cloned()).collect()
}

/// Checks that `got` are exactly the changes of `expected`, each at its own position.
fn check_all(got: &[Value], expected: &BTreeMap<(u32, u64), Change>, table: &str) {
    let mut seen = BTreeSet::new();
    for record in got {
        let at = position(record);
        let change = expected
            .get(&at)
            .unwrap_or_else(|| panic!("unexpected record {record}"));
        change.check(record, table);
        assert!(seen.insert(at), "delivered twice: {record}");
    }
    assert_eq!(seen.len(), expected.len(), "every change delivered");
}

/// The value of one labelled series in `/metrics` (0 if absent).
async fn series(addr: SocketAddr, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The snapshot a new WebSocket subscriber gets: (subscribed reply, records).
async fn snapshot(addr: SocketAddr, request: Value) -> (Value, Vec<Value>) {
    let mut ws = WsClient::connect(addr).await;
    let reply = ws.subscribe(request).await;
    let n = reply["snapshot"].as_u64().unwrap() as usize;
    let records = ws.records(n).await;
    assert!(records.iter().all(|r| r["snapshot"] == true));
    // Nothing else: the catch-up ends and nothing live is pending.
    ws.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(ws.lives.len(), 1, "live marker after the snapshot");
    (reply, records)
}

fn keys_of(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect()
}

/// A customer's life in Debezium events: snapshot reads, create, update,
/// delete followed by its tombstone.
fn history() -> Vec<Change> {
    let anne = customer(1001, "annek@noanswer.org");
    let anne2 = customer(1001, "anne@example.com");
    let bob = customer(1002, "bob@example.com");
    let cat = customer(1003, "cat@example.com");
    vec![
        Change::new(1001, "r", Value::Null, anne.clone(), 10),
        Change::new(1002, "r", Value::Null, bob.clone(), 11),
        Change::new(1003, "c", Value::Null, cat, 12),
        Change::new(1001, "u", anne, anne2, 13),
        Change::new(1002, "d", bob, Value::Null, 14),
        Change::tombstone(1002),
    ]
}

#[tokio::test]
async fn change_events_live_and_in_snapshots_with_and_without_the_wrapper() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("customers", 2, &[]).await;
    broker.create_topic("customers.wrapped", 2, &[]).await;
    let topics = format!(
        "{}{}",
        debezium_topic("customers", 64),
        debezium_topic("customers.wrapped", 64)
    );
    let (node, _dir) = start_node(&broker, &topics, "").await;
    let http = reqwest::Client::new();

    for (topic, wrapped) in [("customers", false), ("customers.wrapped", true)] {
        let mut ws = WsClient::connect(node.addr).await;
        ws.subscribe(json!({"topic": topic, "snapshot": false}))
            .await;
        let mut sse =
            SseClient::connect(&http, node.addr, &format!("topic={topic}&key=1002"), None).await;
        assert_eq!(sse.next().await.event, "subscribed");

        let expected = produce_changes(&broker, topic, "customers", wrapped, &history()).await;
        let got = ws.records(expected.len()).await;
        check_all(&got, &expected, "customers");
        // Per key, in the order produced: read, delete, then the tombstone.
        let bob: Vec<&Value> = got.iter().filter(|r| r["key"] == "1002").collect();
        let ops: Vec<&str> = bob.iter().map(|r| r["op"].as_str().unwrap()).collect();
        assert_eq!(ops, vec!["read", "delete", "delete"], "{topic}");
        assert_eq!(
            bob[1]["data"]["email"], "bob@example.com",
            "a delete carries the old row"
        );
        assert_eq!(
            (&bob[2]["data"], &bob[2]["tombstone"]),
            (&Value::Null, &json!(true))
        );
        ws.expect_silence(Duration::from_millis(300)).await;

        // SSE, one key: the same records, with the cursor as event id.
        let events = sse.records(3).await;
        for e in &events {
            let record = e.json();
            expected[&position(&record)].check(&record, "customers");
            assert_eq!(e.id.as_deref(), record["cursor"].as_str());
        }

        // A new subscriber's snapshot lists only the customers that exist.
        let (reply, records) = snapshot(node.addr, json!({"topic": topic})).await;
        assert_eq!(reply["snapshot"], 2, "{reply}");
        assert_eq!(
            keys_of(&records),
            BTreeSet::from(["1001".into(), "1003".into()])
        );
        let anne = records.iter().find(|r| r["key"] == "1001").unwrap();
        assert_eq!(anne["op"], "update");
        assert_eq!(anne["data"]["email"], "anne@example.com", "the latest row");
        let (reply, _) = snapshot(node.addr, json!({"topic": topic, "keys": ["1002"]})).await;
        assert_eq!(
            reply["snapshot"], 0,
            "a deleted key has no snapshot: {reply}"
        );
        let mut sse =
            SseClient::connect(&http, node.addr, &format!("topic={topic}&prefix=100"), None).await;
        let subscribed = sse.next().await.json();
        assert_eq!(subscribed["snapshot"], 2, "{subscribed}");

        // The row comes back: the key is in snapshots again.
        let back = customer(1002, "bob@new.example.com");
        let again = [Change::new(1002, "c", Value::Null, back, 20)];
        let expected = produce_changes(&broker, topic, "customers", wrapped, &again).await;
        check_all(&ws.records(1).await, &expected, "customers");
        let (_, records) = snapshot(node.addr, json!({"topic": topic})).await;
        assert_eq!(keys_of(&records).len(), 3);
    }
}

#[tokio::test]
async fn a_resume_across_a_delete_replays_it_from_the_ring_and_from_kafka() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("accounts", 1, &[]).await;
    // One node whose ring covers the resume, one whose ring (2 records) does not.
    let (ring, _d1) = start_node(&broker, &debezium_topic("accounts", 64), "").await;
    let (log, _d2) = start_node(&broker, &debezium_topic("accounts", 2), "").await;

    let mut ws = WsClient::connect(ring.addr).await;
    ws.subscribe(json!({"topic": "accounts", "snapshot": false}))
        .await;
    let a = customer(1, "a@x");
    let b = customer(2, "b@x");
    let first = [
        Change::new(1, "c", Value::Null, a.clone(), 1),
        Change::new(2, "c", Value::Null, b.clone(), 2),
    ];
    produce_changes(&broker, "accounts", "accounts", false, &first).await;
    let seen = ws.records(2).await;
    let cursor = seen[1]["cursor"].as_str().unwrap().to_owned();
    assert_eq!(Cursor::decode(&cursor).unwrap().offsets, vec![2]);

    // Missed while away: an update, b's delete and tombstone, c's create and update.
    let c = customer(3, "c@x");
    let missed = [
        Change::new(1, "u", a.clone(), customer(1, "a2@x"), 3),
        Change::new(2, "d", b, Value::Null, 4),
        Change::tombstone(2),
        Change::new(3, "c", Value::Null, c.clone(), 5),
        Change::new(3, "u", c, customer(3, "c2@x"), 6),
    ];
    let expected = produce_changes(&broker, "accounts", "accounts", true, &missed).await;
    let live = ws.records(5).await;
    check_all(&live, &expected, "accounts");

    for (addr, from_kafka) in [(ring.addr, false), (log.addr, true)] {
        let before = metric(addr, "pushgate_kafka_catchup_reads_total").await;
        let mut ws = WsClient::connect(addr).await;
        let reply = ws
            .subscribe(json!({"topic": "accounts", "cursor": cursor}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let replayed = ws.records(5).await;
        check_all(&replayed, &expected, "accounts");
        // In order, and the same bytes a live client got (but for the cursor).
        for (r, l) in replayed.iter().zip(&live) {
            assert_eq!(position(r), position(l));
            for member in ["key", "op", "data", "source", "tombstone", "timestamp"] {
                assert_eq!(r.get(member), l.get(member), "{member}: {r} vs {l}");
            }
        }
        ws.expect_silence(Duration::from_millis(300)).await;
        assert_eq!(ws.lives[0]["replayed"], 5);
        let reads = metric(addr, "pushgate_kafka_catchup_reads_total").await - before;
        assert_eq!(reads >= 1.0, from_kafka, "read back from Kafka: {reads}");

        // SSE with Last-Event-ID, one key: what it missed is its delete and tombstone.
        let http = reqwest::Client::new();
        let mut sse = SseClient::connect(&http, addr, "topic=accounts&key=2", Some(&cursor)).await;
        assert_eq!(sse.next().await.json()["recovered"], true);
        let events = sse.records(2).await;
        let ops: Vec<Value> = events.iter().map(|e| e.json()["op"].clone()).collect();
        assert_eq!(ops, vec![json!("delete"), json!("delete")]);
        assert_eq!(events[1].json()["tombstone"], true);

        let (_, records) = snapshot(addr, json!({"topic": "accounts"})).await;
        assert_eq!(keys_of(&records), BTreeSet::from(["1".into(), "3".into()]));
    }
}

#[tokio::test]
async fn bad_envelopes_are_dead_lettered_with_their_headers_and_skipped() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("customers.bad", 1, &[]).await;
    broker.create_topic(DLQ, 1, &[]).await;
    let dlq = format!("dead_letter_topic = \"{DLQ}\"");
    let (node, _dir) = start_node(&broker, &debezium_topic("customers.bad", 64), &dlq).await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "customers.bad", "snapshot": false}))
        .await;

    let good = |id: u64, pos: u64| Change::new(id, "c", Value::Null, customer(id, "x@y"), pos);
    let key = json!({"id": 7});
    let bad = [
        json!({"key": key, "value_raw": "not json {", "headers": {"trace": "t-1"}}),
        json!({"key": key, "value": {"before": null, "after": customer(7, "a"), "source": source("customers", 3, false)}, "headers": {"trace": "t-2"}}),
        json!({"key": key, "value": {"op": "x", "after": customer(7, "a")}}),
        json!({"key": wrap_key(key.clone()), "value": wrap_value(json!({"op": "c", "before": null, "after": null, "source": source("customers", 5, false)}))}),
    ];
    let mut lines = vec![good(1, 1).line("customers", false)];
    lines.extend(bad.iter().cloned());
    lines.push(good(2, 6).line("customers", false));
    let positions = produce_raw(&broker, "customers.bad", &lines).await;
    assert_eq!(
        positions,
        (0..6).map(|o| (0, o)).collect::<Vec<_>>(),
        "one partition, offsets 0..6"
    );

    // The stream goes on around them, and the cursor moves past them.
    let got = ws.records(2).await;
    good(1, 1).check(&got[0], "customers");
    good(2, 6).check(&got[1], "customers");
    assert_eq!(position(&got[1]), (0, 5));
    assert_eq!(
        Cursor::decode(got[0]["cursor"].as_str().unwrap())
            .unwrap()
            .offsets,
        vec![1]
    );
    assert_eq!(
        Cursor::decode(got[1]["cursor"].as_str().unwrap())
            .unwrap()
            .offsets,
        vec![6]
    );
    ws.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        series(
            node.addr,
            "pushgate_kafka_bad_records_total",
            "reason=\"bad_envelope\""
        )
        .await,
        4.0
    );

    // Copied to the dead-letter topic unchanged, with where and why.
    // Not awaited by pushgate: wait for them (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut copies = dump_raw(&broker, DLQ).await;
    while copies.len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        copies = dump_raw(&broker, DLQ).await;
    }
    assert_eq!(copies.len(), 4, "{copies:?}");
    for (i, copy) in copies.iter().enumerate() {
        let line = &bad[i];
        let value = match line.get("value_raw") {
            Some(raw) => raw.as_str().unwrap().to_owned(),
            None => line["value"].to_string(),
        };
        assert_eq!(copy["value"], value, "value unchanged: {copy}");
        assert_eq!(
            copy["key"],
            line["key"].to_string(),
            "key unchanged: {copy}"
        );
        let headers = &copy["headers"];
        assert_eq!(
            headers["pushgate.source"],
            format!("customers.bad/0/{}", i + 1),
            "{copy}"
        );
        assert_eq!(headers["pushgate.reason"], "bad_envelope", "{copy}");
        match line["headers"]["trace"].as_str() {
            Some(trace) => assert_eq!(headers["trace"], trace, "own headers kept: {copy}"),
            None => assert!(headers.get("trace").is_none()),
        }
    }

    // A cursor pointing at the first bad record resumes with the next good one.
    let resume = got[0]["cursor"].as_str().unwrap();
    let mut again = WsClient::connect(node.addr).await;
    let reply = again
        .subscribe(json!({"topic": "customers.bad", "cursor": resume}))
        .await;
    assert_eq!(reply["recovered"], true);
    let replayed = again.records(1).await;
    assert_eq!(position(&replayed[0]), (0, 5));
    again.expect_silence(Duration::from_millis(300)).await;

    // The same from Kafka: a node whose ring does not reach back that far.
    let (cold, _d2) = start_node(&broker, &debezium_topic("customers.bad", 1), "").await;
    let mut ws2 = WsClient::connect(cold.addr).await;
    let reply = ws2
        .subscribe(json!({"topic": "customers.bad", "cursor": resume}))
        .await;
    assert_eq!(reply["recovered"], true);
    let replayed = ws2.records(1).await;
    good(2, 6).check(&replayed[0], "customers");
    ws2.expect_silence(Duration::from_millis(300)).await;
    assert!(metric(cold.addr, "pushgate_kafka_catchup_reads_total").await >= 1.0);

    // Still streaming.
    let more = produce_changes(&broker, "customers.bad", "customers", false, &[good(3, 9)]).await;
    check_all(&ws.records(1).await, &more, "customers");
    check_all(&ws2.records(1).await, &more, "customers");
}

#[tokio::test]
async fn a_tombstone_on_a_json_topic_deletes_its_key_from_snapshots() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("plain", 1, &[]).await;
    let (node, _dir) = start_node(&broker, "[[topics]]\nname = \"plain\"\n", "").await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "plain", "snapshot": false}))
        .await;
    let lines = [
        json!({"key_raw": "a", "value": {"v": 1}}),
        json!({"key_raw": "b", "value": {"v": 2}}),
        json!({"key_raw": "a", "value": null}),
    ];
    produce_raw(&broker, "plain", &lines).await;
    let got = ws.records(3).await;
    assert!(
        got[0].get("op").is_none(),
        "no op on a json value: {}",
        got[0]
    );
    assert_eq!(got[2]["key"], "a");
    assert_eq!(got[2]["op"], "delete");
    assert_eq!(got[2]["tombstone"], true);
    assert_eq!(got[2]["data"], Value::Null);

    let (_, records) = snapshot(node.addr, json!({"topic": "plain"})).await;
    assert_eq!(keys_of(&records), BTreeSet::from(["b".into()]));
    let (reply, _) = snapshot(node.addr, json!({"topic": "plain", "keys": ["a"]})).await;
    assert_eq!(reply["snapshot"], 0);
}

#[tokio::test]
async fn a_null_publish_on_the_embedded_log_is_a_tombstone() {
    if !tiers(&["kafka"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_toml(&dir.path().join("data"), "");
    let mut node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let http = reqwest::Client::new();
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    publish(&http, node.addr, "one", "a", json!({"v": 1})).await;
    let first = publish(&http, node.addr, "one", "b", json!({"v": 2})).await;
    publish(&http, node.addr, "one", "a", Value::Null).await;
    let got = ws.records(3).await;
    assert!(got[1].get("op").is_none());
    assert_eq!(
        (&got[2]["op"], &got[2]["tombstone"]),
        (&json!("delete"), &json!(true))
    );
    assert_eq!(got[2]["data"], Value::Null);
    let (_, records) = snapshot(node.addr, json!({"topic": "one"})).await;
    assert_eq!(keys_of(&records), BTreeSet::from(["b".into()]));

    // After a restart the warm start reads the log back: still deleted, and a
    // resume from before the tombstone replays it as it was sent live.
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(10)).await, Some(0));
    let node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let (_, records) = snapshot(node.addr, json!({"topic": "one"})).await;
    assert_eq!(keys_of(&records), BTreeSet::from(["b".into()]));
    let mut ws = WsClient::connect(node.addr).await;
    let cursor = first["cursor"].as_str().unwrap();
    let reply = ws
        .subscribe(json!({"topic": "one", "cursor": cursor}))
        .await;
    assert_eq!(reply["recovered"], true);
    let replayed = ws.records(1).await;
    assert_eq!(replayed[0]["key"], "a");
    for member in ["op", "tombstone", "data", "offset"] {
        assert_eq!(replayed[0][member], got[2][member], "{member}");
    }
}

/// A Debezium topic found by a pattern (one topic per table, named by the
/// connector) is decoded with the pattern's `format`, including a table
/// created after the node started.
#[tokio::test]
async fn tables_found_by_a_pattern_are_decoded_as_debezium() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker
        .create_topic("dbserver1.inventory.customers", 1, &[])
        .await;
    let topics = "[[topics]]\npattern = \"dbserver1\\\\.inventory\\\\..*\"\nformat = \"debezium\"\nring_records = 64\n";
    let (node, _dir) = start_node(&broker, topics, "").await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "dbserver1.inventory.customers", "snapshot": false}))
        .await;
    let create = Change::new(1001, "c", Value::Null, customer(1001, "a@x"), 10);
    let delete = Change::new(1001, "d", customer(1001, "a@x"), Value::Null, 11);
    let changes = [create, delete];
    let expected = produce_changes(
        &broker,
        "dbserver1.inventory.customers",
        "customers",
        true,
        &changes,
    )
    .await;
    check_all(&ws.records(2).await, &expected, "customers");

    // A table created while the node runs: found by the pattern, same format.
    broker
        .create_topic("dbserver1.inventory.orders", 1, &[])
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut orders = WsClient::connect(node.addr).await;
    loop {
        orders
            .send(json!({"type": "subscribe", "topic": "dbserver1.inventory.orders", "snapshot": false}))
            .await;
        let reply = orders.json().await;
        if reply["type"] == "subscribed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = Change::new(7, "r", Value::Null, customer(7, "o@x"), 20);
    let expected = produce_changes(
        &broker,
        "dbserver1.inventory.orders",
        "orders",
        false,
        &[read],
    )
    .await;
    check_all(&orders.records(1).await, &expected, "orders");
}
