//! Debezium in Avro end to end: PostgreSQL -> Debezium (Kafka Connect, Apicurio's
//! AvroConverter) -> Apicurio Registry and Apache Kafka -> pushgate -> WebSocket, SSE and
//! gRPC clients.
//!
//! Nothing is produced by hand: a real PostgreSQL (scripts/cdc-postgres), a Kafka Connect
//! standalone worker running the Debezium PostgreSQL connector whose keys and values go
//! through `io.apicurio.registry.utils.converter.AvroConverter` (scripts/cdc-connect
//! `--avro`), which registers each schema in a real Apicurio Registry (scripts/registry) and
//! writes the Confluent wire format (magic byte 0, the 4-byte schema id, the Avro body), and
//! Apache Kafka 4.4.0 (the binary's shared broker), all on 127.0.0.1. pushgate reads the
//! topics with `format = "debezium"`, `encoding = "avro"` and `key_encoding = "avro"`. The
//! test drives SQL with psql and checks, record by record and in commit order, the JSON
//! every client receives: Debezium's initial snapshot, INSERT, UPDATE, DELETE (and its
//! tombstone), a column added while everything runs (a second schema version), a
//! multi-statement transaction and a burst of committed updates; then the raw topic itself
//! (every key and value in the wire format, the ids the registry serves) and a new
//! subscriber's snapshot. A second test runs Debezium with `time.precision.mode=connect` and
//! `decimal.handling.mode=precise`, whose Avro logical types reach clients as date, time,
//! timestamp and decimal strings. Needs scripts/kafka-setup, scripts/cdc-setup,
//! scripts/registry-setup and scripts/grpc-setup.

mod common;
mod kafka_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::*;
use kafka_common::{dump_raw, metric, repo, script, Broker};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

/// Debezium's topic prefix of the main test: the table's topic is `avro.public.items`.
const PREFIX: &str = "avro";
const TOPIC: &str = "avro.public.items";
/// Committed updates of one row in the burst (one transaction each).
const BURST: i64 = 60;

/// The registry, database and Connect worker of the test, on the binary's shared broker;
/// all stopped on drop (PostgreSQL and Connect also by their `--watch-pid` watchers if the
/// test process dies).
struct Pipeline {
    broker: Broker,
    /// Debezium's `topic.prefix` (each test its own, on the shared broker).
    prefix: &'static str,
    registry: String,
    registry_port: String,
    pg: tempfile::TempDir,
    connect: tempfile::TempDir,
    bootstrap: String,
    postgres: String,
}

impl Pipeline {
    async fn start(prefix: &'static str) -> Self {
        let me = std::process::id().to_string();
        let (pg, connect) = (tempdir(), tempdir());
        let pg_dir = pg.path().to_str().unwrap().to_owned();
        let pg_args = ["cdc-postgres", "start", &pg_dir, "--watch-pid", &me];
        let (postgres, registry) = tokio::join!(
            script(&pg_args, Duration::from_secs(60)),
            script(&["registry", "start"], Duration::from_secs(180)),
        );
        let registry = registry.trim().to_owned();
        let registry_port = registry
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let broker = tokio::task::spawn_blocking(Broker::shared).await.unwrap();
        Self {
            bootstrap: broker.admin_addr(),
            broker,
            prefix,
            registry,
            registry_port,
            postgres: postgres.trim().to_owned(),
            pg,
            connect,
        }
    }

    /// Starts the worker with the Avro converters and `props` (`KEY=VALUE`) on the
    /// connector; returns once the connector's task runs.
    async fn start_connect(&self, props: &[&str]) {
        let me = std::process::id().to_string();
        let mut args = vec![
            "cdc-connect",
            "start",
            self.connect.path().to_str().unwrap(),
            "--bootstrap",
            &self.bootstrap,
            "--postgres",
            &self.postgres,
            "--prefix",
            self.prefix,
            "--avro",
            &self.registry,
            // One partition: the whole table's changes in commit order.
            "--partitions",
            "1",
            "--watch-pid",
            &me,
        ];
        for p in props {
            args.extend(["--prop", p]);
        }
        script(&args, Duration::from_secs(120)).await;
    }

    /// Debezium's topic of table `items`.
    fn topic(&self) -> String {
        format!("{}.public.items", self.prefix)
    }

    async fn sql(&self, sql: &str) -> String {
        let pg = self.pg.path().to_str().unwrap().to_owned();
        script(
            &["cdc-postgres", "psql", &pg, "-At", "-c", sql],
            Duration::from_secs(60),
        )
        .await
    }

    /// A pushgate process reading every `avro.public.*` topic as Debezium change events in
    /// Avro, keys included, through the registry.
    async fn pushgate(&self) -> (Process, tempfile::TempDir) {
        let dir = tempdir();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"
static_dir = ""
shutdown_grace = "3s"
[source]
kind = "kafka"
[auth]
anonymous_subscribe = true
[kafka]
brokers = "{brokers}"
metadata_refresh_interval = "500ms"
catchup_timeout = "5s"
startup_timeout = "20s"
[schema_registry]
url = "{registry}"
[[topics]]
pattern = "{prefix}\\.public\\..*"
format = "debezium"
encoding = "avro"
key_encoding = "avro"
ring_records = 4096
[websocket]
ping_interval = "600s"
"#,
            brokers = self.bootstrap,
            registry = self.registry,
            prefix = self.prefix,
        );
        let process = Process::start(dir.path(), &config, "127.0.0.1:0").await;
        (process, dir)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new(repo().join("scripts").join(args[0]))
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status();
        };
        run(&["cdc-connect", "stop", self.connect.path().to_str().unwrap()]);
        run(&["cdc-postgres", "stop", self.pg.path().to_str().unwrap()]);
        run(&["registry", "stop", &self.registry_port]);
    }
}

fn tempdir() -> tempfile::TempDir {
    // Under /tmp whatever TMPDIR says: the postgres user must reach the cluster's folder.
    tempfile::Builder::new()
        .prefix("pushgate-cdc-avro-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A running `tests/grpc/client.py subscribe` (Python grpcio), read line by line.
struct Grpc {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Grpc {
    fn start(addr: SocketAddr, request: Value) -> Self {
        let mut child = Command::new(repo().join("tests/grpc/.venv/bin/python"))
            .arg(repo().join("tests/grpc/client.py"))
            .arg("subscribe")
            .arg(addr.to_string())
            .arg(request.to_string())
            .arg("--timeout")
            .arg("600")
            .stdout(Stdio::piped())
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
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("a gRPC event within 60 s")
            .unwrap()
            .expect("client.py ended early");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("end").is_none(), "the stream ended: {v}");
        v
    }

    async fn until_live(&mut self) {
        while self.next().await["type"] != "live" {}
    }

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

/// Subscribes over WebSocket once the topic exists and its snapshot holds `rows` rows.
async fn ws_subscribe(addr: SocketAddr, topic: &str, rows: u64) -> (WsClient, Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut ws = WsClient::connect(addr).await;
        ws.send(json!({"type": "subscribe", "topic": topic})).await;
        let reply = ws.json().await;
        if reply["type"] == "subscribed" && reply["snapshot"] == rows {
            return (ws, reply);
        }
        if reply["type"] == "error" {
            assert!(
                reply["code"] == "unknown_topic" || reply["code"] == "unavailable",
                "{reply}"
            );
        }
        assert!(Instant::now() < deadline, "never subscribed: {reply}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One change a client must receive, in order: key, op, row image (`None`: a tombstone).
type Expected = (String, &'static str, Option<Value>);

/// (key, op, data) of records from any transport; a tombstone's data is `null`.
fn changes(records: &[Value]) -> Vec<(String, String, Value)> {
    records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["op"].as_str().unwrap().to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

fn expected(list: &[Expected]) -> Vec<(String, String, Value)> {
    list.iter()
        .map(|(k, op, data)| {
            (
                k.clone(),
                op.to_string(),
                data.clone().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The row as Debezium's default modes write it (`time.precision.mode=adaptive`,
/// `decimal.handling.mode=string` as scripts/cdc-connect sets it) and pushgate maps the
/// Avro: NUMERIC a decimal string, DATE days since 1970-01-01 (io.debezium.time.Date),
/// TIME(3)/TIMESTAMP(3) milliseconds (Time, Timestamp), TIME/TIMESTAMP microseconds
/// (MicroTime, MicroTimestamp), TIMESTAMPTZ an ISO 8601 UTC string with the column's
/// fraction digits (ZonedTimestamp), JSONB
/// its text (io.debezium.data.Json), UUID a string, BYTEA standard base64, an array an array.
fn item(id: i64, name: &str, qty: i64, price: Option<&str>, filled: bool) -> Value {
    if !filled {
        return json!({
            "id": id, "name": name, "qty": qty, "price": price, "ratio": null, "active": false,
            "born": null, "at_ms": null, "at_us": null, "at_tz": null, "t": null,
            "tags": null, "doc": null, "uid": null, "blob": null
        });
    }
    json!({
        "id": id, "name": name, "qty": qty, "price": price, "ratio": 0.25, "active": true,
        "born": 19724, "at_ms": 1_704_164_645_123i64, "at_us": 1_704_164_645_123_456i64,
        "at_tz": "2024-01-02T03:04:05.500000Z", "t": 11_045_500_000i64,
        "tags": ["a", "b"], "doc": "{\"k\": 1}", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "blob": "AP8B"
    })
}

/// The SQL values of a row that `item(.., filled = true)` describes.
const FILLED: &str = "0.25, true, '2024-01-02', '2024-01-02 03:04:05.123', \
    '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+00', '03:04:05.5', '{a,b}', \
    '{\"k\": 1}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff01'";

fn with(mut row: Value, field: &str, value: Value) -> Value {
    row[field] = value;
    row
}

/// The registry's schema `id` (Confluent-compatible API), parsed.
async fn registry_schema(registry: &str, id: u32) -> Value {
    let body: Value = reqwest::get(format!("{registry}/schemas/ids/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_str(body["schema"].as_str().unwrap_or_else(|| panic!("{body}"))).unwrap()
}

fn full_name(schema: &Value) -> String {
    let name = schema["name"].as_str().unwrap();
    match schema["namespace"].as_str() {
        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

/// The field names of the row record of a Debezium envelope schema (defined in `before`;
/// `after` names it).
fn row_fields(envelope: &Value) -> Vec<String> {
    let before = envelope["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "before")
        .unwrap();
    let row = before["type"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t.is_object())
        .unwrap();
    row["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Magic byte 0 and the 4-byte big-endian schema id in front of a key or value.
fn wire_id(b64: &str) -> u32 {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(bytes.len() > 5, "{bytes:?}");
    assert_eq!(bytes[0], 0, "magic byte: {bytes:?}");
    u32::from_be_bytes(bytes[1..5].try_into().unwrap())
}

#[tokio::test]
async fn debezium_avro_through_the_registry_reaches_clients_as_json() {
    if !tiers(&["kafka", "debezium", "registry", "grpc"]) {
        return;
    }
    let started = Instant::now();
    let pipe = Pipeline::start(PREFIX).await;
    pipe.sql(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty bigint NOT NULL,
           price numeric(10, 2), ratio double precision, active boolean NOT NULL, born date,
           at_ms timestamp(3), at_us timestamp, at_tz timestamptz, t time, tags text[],
           doc jsonb, uid uuid, blob bytea);
         ALTER TABLE items REPLICA IDENTITY FULL;
         INSERT INTO items VALUES (1, 'ann', 9007199254740993, 1234.50, {FILLED});
         INSERT INTO items (id, name, qty, active) VALUES (2, 'bob', 2, false);"
    ))
    .await;
    pipe.start_connect(&[]).await;
    let (node, _node_dir) = pipe.pushgate().await;

    // 1. Debezium's initial snapshot: both rows, read, with every column's value.
    let ann = item(1, "ann", 9_007_199_254_740_993, Some("1234.50"), true);
    let bob = item(2, "bob", 2, None, false);
    let (mut ws, reply) = ws_subscribe(node.addr, TOPIC, 2).await;
    let snapshot = ws.records(2).await;
    let mut reads: Vec<(String, String, Value)> = changes(&snapshot);
    reads.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        reads,
        vec![
            ("1".into(), "read".into(), ann.clone()),
            ("2".into(), "read".into(), bob.clone())
        ],
        "the snapshot: {snapshot:?}"
    );
    for r in &snapshot {
        assert_eq!(r["snapshot"], true, "{r}");
        assert_eq!(r["source"]["connector"], "postgresql", "{r}");
        assert_eq!(r["source"]["table"], "items", "{r}");
        assert_ne!(r["source"]["snapshot"], "false", "{r}");
    }
    let http = reqwest::Client::new();
    let mut sse = SseClient::connect(
        &http,
        node.addr,
        &format!("topic={TOPIC}&snapshot=false"),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.event, "subscribed");
    let mut grpc = Grpc::start(node.addr, json!({"topic": TOPIC}));
    grpc.until_live().await;
    eprintln!(
        "snapshot through Avro at {:.1?}; cursor {}",
        started.elapsed(),
        reply["cursor"]
    );

    // 2. Live changes, one partition: the clients get them in commit order.
    for sql in [
        "INSERT INTO items (id, name, qty, price, active) VALUES (3, 'cat', 3, 3.00, false)",
        "UPDATE items SET price = 1299.99, at_tz = '2025-06-30 23:59:59.999999+02' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        // A second schema version of the topic's value, registered while pushgate runs.
        "ALTER TABLE items ADD COLUMN note text",
        "UPDATE items SET note = 'vip' WHERE id = 1",
        "INSERT INTO items (id, name, qty, active, note) VALUES (4, 'dan', 0, true, 'new')",
        "BEGIN; UPDATE items SET qty = 30 WHERE id = 3; UPDATE items SET name = 'dan2' WHERE id = 4; COMMIT;",
    ] {
        pipe.sql(sql).await;
    }
    let ann2 = with(
        with(ann.clone(), "price", json!("1299.99")),
        "at_tz",
        json!("2025-06-30T21:59:59.999999Z"),
    );
    let ann3 = with(ann2.clone(), "note", json!("vip"));
    let cat = item(3, "cat", 3, Some("3.00"), false);
    let cat30 = with(item(3, "cat", 30, Some("3.00"), false), "note", Value::Null);
    let dan = with(item(4, "dan", 0, None, false), "active", json!(true));
    let dan = with(dan, "note", json!("new"));
    let dan2 = with(dan.clone(), "name", json!("dan2"));
    let mut want: Vec<Expected> = vec![
        ("3".into(), "create", Some(cat)),
        ("1".into(), "update", Some(ann2)),
        ("2".into(), "delete", Some(bob)),
        ("2".into(), "delete", None),
        ("1".into(), "update", Some(ann3)),
        ("4".into(), "create", Some(dan)),
        ("3".into(), "update", Some(cat30)),
        ("4".into(), "update", Some(dan2.clone())),
    ];
    // 3. A burst: every committed update once, in order.
    pipe.sql(&format!(
        "DO $$ BEGIN FOR i IN 1..{BURST} LOOP
           UPDATE items SET qty = qty + 1 WHERE id = 4; COMMIT;
         END LOOP; END $$"
    ))
    .await;
    for n in 1..=BURST {
        want.push((
            "4".into(),
            "update",
            Some(with(dan2.clone(), "qty", json!(n))),
        ));
    }
    let want = expected(&want);

    let live = ws.records(want.len()).await;
    ws.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(changes(&live), want, "WebSocket");
    let tombstone = &live[3];
    assert_eq!(tombstone["tombstone"], true, "{tombstone}");
    for r in live.iter().filter(|r| r["tombstone"] != true) {
        assert_eq!(r["source"]["snapshot"], "false", "{r}");
        assert!(r["source"]["lsn"].is_u64(), "Debezium's source block: {r}");
    }
    let events = sse.records(want.len()).await;
    assert!(sse.next_within(Duration::from_millis(500)).await.is_none());
    let sse_records: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_eq!(changes(&sse_records), want, "SSE");
    let grpc_records = grpc.records(want.len()).await;
    let grpc_changes: Vec<(String, String, Value)> = grpc_records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["op"].as_str().unwrap().to_owned(),
                r["data"].clone(),
            )
        })
        .collect();
    assert_eq!(grpc_changes, want, "gRPC");
    eprintln!(
        "{} live changes on WebSocket, SSE and gRPC at {:.1?}",
        want.len(),
        started.elapsed()
    );

    // 4. The topic itself: every key and value in the Confluent wire format, with ids the
    //    registry's Confluent-compatible API serves: one key schema, two value schemas
    //    (before and after ALTER TABLE), nothing else, and no record twice.
    let raw = dump_raw(&pipe.broker, TOPIC).await;
    assert_eq!(raw.len(), 2 + want.len(), "records on the topic: {raw:?}");
    let mut key_ids = BTreeSet::new();
    let mut value_ids = Vec::new();
    for r in &raw {
        key_ids.insert(wire_id(r["key_b64"].as_str().unwrap()));
        if let Some(v) = r["value_b64"].as_str() {
            let id = wire_id(v);
            if value_ids.last() != Some(&id) {
                value_ids.push(id);
            }
        }
        // The schema id is in the bytes, not in Apicurio's own headers.
        let headers = r["headers"].as_object().unwrap();
        assert!(headers.keys().all(|h| !h.starts_with("apicurio")), "{r}");
    }
    assert_eq!(key_ids.len(), 1, "{key_ids:?}");
    let key_schema = registry_schema(&pipe.registry, *key_ids.first().unwrap()).await;
    assert_eq!(
        full_name(&key_schema),
        format!("{TOPIC}.Key"),
        "{key_schema}"
    );
    assert_eq!(
        value_ids.len(),
        2,
        "two value schemas, in turn: {value_ids:?}"
    );
    let (v1, v2) = (
        registry_schema(&pipe.registry, value_ids[0]).await,
        registry_schema(&pipe.registry, value_ids[1]).await,
    );
    for v in [&v1, &v2] {
        assert_eq!(full_name(v), format!("{TOPIC}.Envelope"), "{v}");
    }
    assert!(!row_fields(&v1).contains(&"note".to_owned()), "{v1}");
    assert!(row_fields(&v2).contains(&"note".to_owned()), "{v2}");

    // 5. A new subscriber's snapshot is the table now, every row decoded; nothing was skipped.
    let (mut fresh, reply) = ws_subscribe(node.addr, TOPIC, 3).await;
    let n = reply["snapshot"].as_u64().unwrap() as usize;
    let rows: BTreeMap<String, Value> = fresh
        .records(n)
        .await
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_owned(), r["data"].clone()))
        .collect();
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for (k, op, data) in reads.iter().chain(want.iter()) {
        if op == "delete" {
            last.remove(k);
        } else {
            last.insert(k.clone(), data.clone());
        }
    }
    assert_eq!(
        rows, last,
        "the snapshot is the last image of each live key"
    );
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["1", "3", "4"]
    );
    assert_eq!(
        metric(node.addr, "pushgate_kafka_bad_records_total").await,
        0.0,
        "no record skipped"
    );
    eprintln!("done in {:.1?}", started.elapsed());
}

/// With `time.precision.mode=connect` and `decimal.handling.mode=precise`, Debezium uses
/// Kafka Connect's own logical types (Date, Time, Timestamp, Decimal), which the converter
/// writes as Avro logical types (`date`, `time-millis`, `timestamp-millis`, `decimal`), and
/// clients get strings by the README's mapping; times at millisecond precision.
#[tokio::test]
async fn debezium_avro_with_connect_logical_types_gives_date_and_decimal_strings() {
    if !tiers(&["kafka", "debezium", "registry"]) {
        return;
    }
    let pipe = Pipeline::start("avrotime").await;
    pipe.sql(
        "CREATE TABLE items (id int PRIMARY KEY, born date, t time(3), at_ms timestamp(3),
           at_us timestamp, at_tz timestamptz, price numeric(10, 2));
         INSERT INTO items VALUES (1, '2024-01-02', '03:04:05.5', '2024-01-02 03:04:05.123',
           '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+00', 1234.50);",
    )
    .await;
    pipe.start_connect(&[
        "time.precision.mode=connect",
        "decimal.handling.mode=precise",
    ])
    .await;
    let (node, _node_dir) = pipe.pushgate().await;
    let topic = pipe.topic();
    let (mut ws, _) = ws_subscribe(node.addr, &topic, 1).await;
    let read = ws.records(1).await;
    assert_eq!(read[0]["op"], "read", "{}", read[0]);
    assert_eq!(
        read[0]["data"],
        json!({
            "id": 1, "born": "2024-01-02", "t": "03:04:05.500",
            "at_ms": "2024-01-02T03:04:05.123Z",
            // Connect's Timestamp holds milliseconds: the microseconds are cut.
            "at_us": "2024-01-02T03:04:05.123Z",
            // TIMESTAMPTZ stays Debezium's ZonedTimestamp string.
            "at_tz": "2024-01-02T03:04:05.500000Z",
            "price": "1234.50"
        })
    );
    // Before 1970 (negative days and milliseconds), live.
    pipe.sql(
        "INSERT INTO items VALUES (2, '1969-12-31', '23:59:59.999', '1969-12-31 23:59:59.999',
           NULL, NULL, -0.01)",
    )
    .await;
    let live = ws.records(1).await;
    assert_eq!(live[0]["op"], "create", "{}", live[0]);
    assert_eq!(
        live[0]["data"],
        json!({
            "id": 2, "born": "1969-12-31", "t": "23:59:59.999",
            "at_ms": "1969-12-31T23:59:59.999Z", "at_us": null, "at_tz": null,
            "price": "-0.01"
        })
    );
    // The value schema the records carry has those logical types.
    let raw = dump_raw(&pipe.broker, &topic).await;
    let id = wire_id(raw[0]["value_b64"].as_str().unwrap());
    let schema = registry_schema(&pipe.registry, id).await.to_string();
    for logical in ["date", "time-millis", "timestamp-millis", "decimal"] {
        assert!(
            schema.contains(&format!("\"logicalType\":\"{logical}\"")),
            "{logical} in {schema}"
        );
    }
}
