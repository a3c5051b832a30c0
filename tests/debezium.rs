//! Change data capture end to end: PostgreSQL -> Debezium (Kafka Connect) -> Apache Kafka -> pushgate -> WebSocket and SSE clients.
//!
//! Nothing here is produced by hand: a real PostgreSQL (Debian's server, a
//! throwaway cluster with `wal_level = logical`, scripts/cdc-postgres), a
//! Kafka Connect standalone worker running the Debezium PostgreSQL connector
//! 3.6.1.Final with `pgoutput` (scripts/cdc-connect), and Apache Kafka 4.4.0
//! (the test binary's shared broker from tests/kafka_common, started by
//! scripts/kafka-broker), all on 127.0.0.1. The test drives SQL with psql
//! and checks what pushgate's clients receive against what the database
//! holds. It runs once with JsonConverter's `schemas.enable=false` and once
//! with `true` (every key and value wrapped in `{"schema":…,"payload":…}`).
//! Needs `scripts/kafka-setup` and `scripts/cdc-setup`.

mod common;
mod kafka_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::*;
use kafka_common::{repo, script, Broker};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::time::Instant;

/// Rows of `counters`, and at most how many updates the background writer
/// commits (it stops earlier, when the test says so).
const COUNTERS: i64 = 6;
const MAX_WRITES: i64 = 6000;

/// Database and Connect worker of one test, on the binary's shared broker;
/// both stopped on drop (and by their `--watch-pid` watchers if the test
/// process dies). Each test has its own Debezium topic prefix.
struct Pipeline {
    _broker: Broker,
    prefix: &'static str,
    pg: tempfile::TempDir,
    connect: tempfile::TempDir,
    bootstrap: String,
    postgres: String,
    schemas: bool,
}

impl Pipeline {
    async fn start(schemas: bool) -> Self {
        let me = std::process::id().to_string();
        let (pg, connect) = (tempdir(), tempdir());
        let args = [
            "cdc-postgres",
            "start",
            pg.path().to_str().unwrap(),
            "--watch-pid",
            &me,
        ];
        let postgres = script(&args, Duration::from_secs(60)).await;
        // Blocking the first time (it starts the broker) on a thread of its own.
        let broker = tokio::task::spawn_blocking(Broker::shared).await.unwrap();
        Self {
            // Connect and pushgate both use the PLAINTEXT listener.
            bootstrap: broker.admin_addr(),
            _broker: broker,
            prefix: if schemas { "wrapped" } else { "plain" },
            postgres: postgres.trim().to_owned(),
            pg,
            connect,
            schemas,
        }
    }

    /// Starts the worker; it returns once the connector's task runs (its
    /// initial snapshot may still be under way).
    async fn start_connect(&self) {
        let me = std::process::id().to_string();
        let schemas = self.schemas.to_string();
        script(
            &[
                "cdc-connect",
                "start",
                self.connect.path().to_str().unwrap(),
                "--bootstrap",
                &self.bootstrap,
                "--postgres",
                &self.postgres,
                "--prefix",
                self.prefix,
                "--schemas",
                &schemas,
                "--partitions",
                "2",
                "--watch-pid",
                &me,
            ],
            Duration::from_secs(120),
        )
        .await;
    }

    fn psql(&self, sql: &str) -> Command {
        let mut cmd = Command::new(repo().join("scripts/cdc-postgres"));
        cmd.args(["psql", self.pg.path().to_str().unwrap(), "-At", "-c", sql])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs SQL (one transaction per `-c`, psql's autocommit) and returns its output.
    async fn sql(&self, sql: &str) -> String {
        let pg = self.pg.path().to_str().unwrap().to_owned();
        script(
            &["cdc-postgres", "psql", &pg, "-At", "-c", sql],
            Duration::from_secs(30),
        )
        .await
    }

    /// The table's rows, keyed as pushgate keys them, members that are `null` left out.
    async fn rows(&self, table: &str, pk: &str) -> BTreeMap<String, Value> {
        let out = self
            .sql(&format!(
                "SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM {table} t"
            ))
            .await;
        let rows: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
        rows.into_iter()
            .map(|row| (key_text(&row[pk]), without_nulls(&row)))
            .collect()
    }

    /// Debezium's topic of a table: `<prefix>.public.<table>`.
    fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    /// A pushgate process reading every `<prefix>.public.*` topic as Debezium change events.
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
[[topics]]
pattern = "{prefix}\\.public\\..*"
format = "debezium"
ring_records = 4096
[websocket]
# Some clients are only read when a phase expects something of them, maybe
# minutes later on a loaded machine: no idle close (4008) meanwhile.
ping_interval = "600s"
"#,
            brokers = self.bootstrap,
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
    }
}

fn tempdir() -> tempfile::TempDir {
    // Under /tmp whatever TMPDIR says: the postgres user must be able to reach
    // the cluster's folder (scripts/cdc-postgres hands it over).
    tempfile::Builder::new()
        .prefix("pushgate-cdc-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// How pushgate keys a one-column primary key (`key = "field"`): a string as it is, else its JSON.
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Subscribes over WebSocket, retrying while the topic does not exist yet
/// (`unknown_topic`: Debezium has not written to it) or is warming up (`unavailable`).
async fn ws_subscribe(addr: SocketAddr, request: Value, within: Duration) -> (WsClient, Value) {
    let deadline = Instant::now() + within;
    let mut ws = WsClient::connect(addr).await;
    loop {
        let mut msg = request.clone();
        msg["type"] = json!("subscribe");
        ws.send(msg).await;
        let reply = ws.json().await;
        if reply["type"] == "subscribed" {
            return (ws, reply);
        }
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(
            reply["code"] == "unknown_topic" || reply["code"] == "unavailable",
            "{reply}"
        );
        assert!(Instant::now() < deadline, "never subscribed: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An SSE stream, retried while the topic is unknown (404) or warming up (503).
async fn sse_subscribe(
    addr: SocketAddr,
    query: &str,
    last_event_id: Option<&str>,
    within: Duration,
) -> (SseClient, Value) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let mut sse = SseClient::connect(&http, addr, query, last_event_id).await;
        if sse.status == 200 {
            let subscribed = sse.next().await;
            assert_eq!(subscribed.event, "subscribed", "{subscribed:?}");
            return (sse, subscribed.json());
        }
        assert!(
            sse.status == 404 || sse.status == 503,
            "SSE {query}: {}",
            sse.status
        );
        assert!(Instant::now() < deadline, "SSE {query}: never subscribed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A cursor of the same topic (epoch) positioned at offset 0 of every
/// partition, built from the documented version 1 layout
/// `[1][epoch u64 LE][n varint][next offset varint per partition]`.
fn cursor_at_start(cursor: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = b64.decode(cursor).unwrap();
    assert_eq!(bytes[0], 1, "a version 1 cursor");
    let partitions = bytes[9];
    assert!(partitions < 0x80, "one varint byte");
    let mut out = bytes[..10].to_vec();
    out.extend(std::iter::repeat_n(0u8, partitions as usize));
    b64.encode(out)
}

fn source_snapshot(record: &Value) -> &str {
    record["source"]["snapshot"].as_str().unwrap_or("false")
}

/// Per key, the `n` values a client saw of `counters` must climb by exactly 1
/// (no gap, no duplicate) up to the database's final value, and `op` must be
/// `read` exactly for the rows of Debezium's initial snapshot. With
/// `from_start`, each key begins with its snapshot read.
fn check_counters(
    records: &[Value],
    finals: &BTreeMap<String, Value>,
    from_start: bool,
    who: &str,
) {
    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in records {
        by_key
            .entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    assert_eq!(
        by_key.keys().collect::<BTreeSet<_>>(),
        finals.keys().collect::<BTreeSet<_>>(),
        "{who}: keys"
    );
    for (key, seen) in &by_key {
        let ns: Vec<i64> = seen
            .iter()
            .map(|r| r["data"]["n"].as_i64().unwrap())
            .collect();
        for pair in ns.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{who}: key {key} went {ns:?}");
        }
        assert_eq!(
            json!(ns.last().unwrap()),
            finals[key]["n"],
            "{who}: key {key} ends at the database's value"
        );
        for r in seen {
            let expected = if source_snapshot(r) == "false" {
                "update"
            } else {
                "read"
            };
            assert_eq!(r["op"], expected, "{who}: {r}");
            assert_eq!(
                r["data"]["id"],
                json!(key.parse::<i64>().unwrap()),
                "{who}: {r}"
            );
        }
        if from_start {
            assert_eq!(
                seen[0]["op"], "read",
                "{who}: key {key} starts with its snapshot read"
            );
            let reads = seen.iter().filter(|r| r["op"] == "read").count();
            assert_eq!(reads, 1, "{who}: key {key}: one read");
        }
    }
}

/// Reads records until every key's latest `n` is the final one, then checks
/// nothing else arrives.
async fn ws_counters(
    ws: &mut WsClient,
    mut records: Vec<Value>,
    finals: &BTreeMap<String, Value>,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !counters_done(&records, finals) {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.event_within(left).await {
            Some(WsEvent::Json(v)) => {
                assert_eq!(v["type"], "record", "{v}");
                records.push(v);
            }
            other => panic!(
                "counters over WebSocket: {other:?} after {} records",
                records.len()
            ),
        }
    }
    ws.expect_silence(Duration::from_millis(500)).await;
    records
}

async fn sse_counters(sse: &mut SseClient, finals: &BTreeMap<String, Value>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while !counters_done(&records, finals) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = sse
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("counters over SSE: stuck after {} records", records.len()));
        assert_eq!(ev.event, "message", "{ev:?}");
        records.push(ev.json());
    }
    assert!(sse.next_within(Duration::from_millis(500)).await.is_none());
    records
}

fn counters_done(records: &[Value], finals: &BTreeMap<String, Value>) -> bool {
    let mut last: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in records {
        last.insert(r["key"].as_str().unwrap(), &r["data"]["n"]);
    }
    finals
        .iter()
        .all(|(k, row)| last.get(k.as_str()) == Some(&&row["n"]))
}

/// One change a client must receive: key, op, row image (`None`: a tombstone).
type Expected = (&'static str, &'static str, Option<Value>);

/// The received records, grouped by key, must be exactly `expected`'s, in order.
fn check_changes(records: &[Value], expected: &[Expected], who: &str) {
    let mut got: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for r in records {
        assert_eq!(r["type"], "record", "{who}: {r}");
        let data = if r["tombstone"] == true {
            assert!(r["data"].is_null(), "{who}: {r}");
            Value::Null
        } else {
            assert_eq!(source_snapshot(r), "false", "{who}: {r}");
            assert!(
                r["source"]["lsn"].is_u64(),
                "{who}: Debezium's source block: {r}"
            );
            assert_eq!(r["source"]["connector"], "postgresql", "{who}: {r}");
            r["data"].clone()
        };
        got.entry(r["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((r["op"].as_str().unwrap().to_owned(), data));
    }
    let mut want: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (key, op, data) in expected {
        want.entry(key.to_string())
            .or_default()
            .push((op.to_string(), data.clone().unwrap_or(Value::Null)));
    }
    assert_eq!(got, want, "{who}: changes per key, in commit order");
}

async fn ws_records(ws: &mut WsClient, n: usize) -> Vec<Value> {
    let records = ws.records(n).await;
    ws.expect_silence(Duration::from_millis(500)).await;
    records
}

async fn sse_records(sse: &mut SseClient, n: usize) -> Vec<Value> {
    let events = sse.records(n).await;
    assert!(sse.next_within(Duration::from_millis(500)).await.is_none());
    // The id of each record event is its cursor.
    for ev in &events {
        assert_eq!(ev.id.as_deref(), ev.json()["cursor"].as_str(), "{ev:?}");
    }
    events.iter().map(SseEvent::json).collect()
}

/// What a new subscriber's snapshot holds: key -> row (nulls left out).
async fn snapshot_rows(addr: SocketAddr, topic: &str) -> BTreeMap<String, Value> {
    let (mut ws, reply) = ws_subscribe(addr, json!({"topic": topic}), WAIT).await;
    let n = reply["snapshot"].as_u64().unwrap() as usize;
    let records = ws.records(n).await;
    let mut rows = BTreeMap::new();
    for r in records {
        assert_eq!(r["snapshot"], true, "{r}");
        assert_ne!(r["op"], "delete", "no deleted key in a snapshot: {r}");
        rows.insert(
            r["key"].as_str().unwrap().to_owned(),
            without_nulls(&r["data"]),
        );
    }
    rows
}

/// The one row of a table just created: in the snapshot, or live right after
/// it when pushgate served the topic before Debezium's first record was in.
async fn first_row(ws: &mut WsClient, reply: &Value) -> Vec<Value> {
    let n = reply["snapshot"].as_u64().unwrap();
    assert!(n <= 1, "{reply}");
    ws_records(ws, 1).await
}

async fn scenario(schemas: bool) {
    let started = Instant::now();
    let pipe = Pipeline::start(schemas).await;
    pipe.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, tier text);
         ALTER TABLE customers REPLICA IDENTITY FULL;
         INSERT INTO customers VALUES (1, 'ann@x', 'gold'), (2, 'bob@x', 'silver'), (3, 'cat@x', 'gold');
         CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         CREATE TABLE writer_stop (at timestamptz);",
    )
    .await;
    pipe.sql(&format!(
        "INSERT INTO counters SELECT g, 0 FROM generate_series(1, {COUNTERS}) g"
    ))
    .await;

    // 1. Debezium's initial snapshot taken while a writer commits updates:
    //    every key must go from its snapshot read to its live updates with no
    //    gap and no duplicate, through Debezium and through pushgate. It
    //    writes until both clients below are live, however long the
    //    pipeline takes to start.
    let mut writer = pipe
        .psql(&format!(
            "DO $$ BEGIN FOR i IN 1..{MAX_WRITES} LOOP
               EXIT WHEN EXISTS (SELECT 1 FROM writer_stop);
               UPDATE counters SET n = n + 1 WHERE id = 1 + i % {COUNTERS};
               COMMIT;
               PERFORM pg_sleep(0.025);
             END LOOP; END $$"
        ))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pipe.start_connect().await;
    let (node, node_dir) = pipe.pushgate().await;
    let wait = Duration::from_secs(60);
    let (mut counters_ws, reply) =
        ws_subscribe(node.addr, json!({"topic": pipe.topic("counters")}), wait).await;
    let snapshot = reply["snapshot"].as_u64().unwrap() as usize;
    let first = counters_ws.records(snapshot).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (mut counters_sse, _) = sse_subscribe(
        node.addr,
        &format!("topic={}", pipe.topic("counters")),
        None,
        wait,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pipe.sql("INSERT INTO writer_stop VALUES (now())").await;
    let status = tokio::time::timeout(Duration::from_secs(60), writer.wait())
        .await
        .expect("the writer ends")
        .unwrap();
    assert!(status.success(), "the writer failed");
    let finals = pipe.rows("counters", "id").await;
    assert_eq!(finals.len() as i64, COUNTERS);
    let writes: i64 = finals.values().map(|r| r["n"].as_i64().unwrap()).sum();
    assert!(writes < MAX_WRITES, "the writer stopped when told to");

    let ws_seen = ws_counters(&mut counters_ws, first, &finals).await;
    check_counters(&ws_seen, &finals, false, "WebSocket, snapshot then live");
    let sse_seen = sse_counters(&mut counters_sse, &finals).await;
    check_counters(&sse_seen, &finals, false, "SSE, snapshot then live");
    for (seen, who) in [(&ws_seen, "WebSocket"), (&sse_seen, "SSE")] {
        assert!(
            seen.iter().any(|r| r["snapshot"] != true),
            "{who}: live updates after the snapshot"
        );
    }
    // The whole history, replayed from offset 0: each key's snapshot read
    // first, then every committed update once.
    let from_start = cursor_at_start(reply["cursor"].as_str().unwrap());
    let (mut replay, reply) = ws_subscribe(
        node.addr,
        json!({"topic": pipe.topic("counters"), "cursor": from_start}),
        WAIT,
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let history = ws_counters(&mut replay, Vec::new(), &finals).await;
    check_counters(&history, &finals, true, "WebSocket, replay from offset 0");
    let snapshot_reads = history
        .iter()
        .filter(|r| r["op"] == "read")
        .collect::<Vec<_>>();
    let updates = history.len() - snapshot_reads.len();
    // Debezium's snapshot saw some updates already applied: those are not
    // events, the rest are, each exactly once.
    let at_snapshot: i64 = snapshot_reads
        .iter()
        .map(|r| r["data"]["n"].as_i64().unwrap())
        .sum();
    assert_eq!(
        at_snapshot + updates as i64,
        writes,
        "every update after the snapshot, once"
    );
    assert!(
        updates > 0,
        "the writer was still running after Debezium's snapshot"
    );
    eprintln!(
        "[schemas={schemas}] counters: Debezium's snapshot saw {at_snapshot} of {writes} updates; \
         {updates} streamed; WS got {} records, SSE {} ({:.1?} so far)",
        ws_seen.len(),
        sse_seen.len(),
        started.elapsed()
    );

    // 2. Customers: the snapshot's reads, then INSERT, UPDATE, DELETE, an
    //    UPDATE of the primary key and ALTER TABLE ADD COLUMN, live.
    let (mut customers_ws, reply) =
        ws_subscribe(node.addr, json!({"topic": pipe.topic("customers")}), wait).await;
    assert_eq!(reply["snapshot"], 3, "{reply}");
    let reads = customers_ws.records(3).await;
    let mut read_rows = BTreeMap::new();
    for r in &reads {
        assert_eq!(
            (&r["op"], &r["snapshot"]),
            (&json!("read"), &json!(true)),
            "{r}"
        );
        assert_ne!(source_snapshot(r), "false", "{r}");
        read_rows.insert(r["key"].as_str().unwrap().to_owned(), r["data"].clone());
    }
    assert_eq!(
        read_rows,
        pipe.rows("customers", "id").await,
        "the snapshot is the table"
    );
    let (mut customers_sse, _) = sse_subscribe(
        node.addr,
        &format!("topic={}&snapshot=false", pipe.topic("customers")),
        None,
        WAIT,
    )
    .await;
    for sql in [
        "INSERT INTO customers VALUES (4, 'dan@x', 'bronze')",
        "UPDATE customers SET email = 'ann@y' WHERE id = 1",
        "DELETE FROM customers WHERE id = 3",
        "UPDATE customers SET id = 20 WHERE id = 2",
        "ALTER TABLE customers ADD COLUMN note text",
        "UPDATE customers SET note = 'vip' WHERE id = 1",
        "INSERT INTO customers VALUES (5, 'eve@x', 'gold', 'new')",
    ] {
        pipe.sql(sql).await;
    }
    let expected: Vec<Expected> = vec![
        (
            "4",
            "create",
            Some(json!({"id": 4, "email": "dan@x", "tier": "bronze"})),
        ),
        (
            "1",
            "update",
            Some(json!({"id": 1, "email": "ann@y", "tier": "gold"})),
        ),
        (
            "3",
            "delete",
            Some(json!({"id": 3, "email": "cat@x", "tier": "gold"})),
        ),
        ("3", "delete", None),
        // A new primary key: Debezium deletes the old key and creates the new one.
        (
            "2",
            "delete",
            Some(json!({"id": 2, "email": "bob@x", "tier": "silver"})),
        ),
        ("2", "delete", None),
        (
            "20",
            "create",
            Some(json!({"id": 20, "email": "bob@x", "tier": "silver"})),
        ),
        (
            "1",
            "update",
            Some(json!({"id": 1, "email": "ann@y", "tier": "gold", "note": "vip"})),
        ),
        (
            "5",
            "create",
            Some(json!({"id": 5, "email": "eve@x", "tier": "gold", "note": "new"})),
        ),
    ];
    let live = ws_records(&mut customers_ws, expected.len()).await;
    check_changes(&live, &expected, "customers over WebSocket");
    let live_sse = sse_records(&mut customers_sse, expected.len()).await;
    check_changes(&live_sse, &expected, "customers over SSE");
    // A new subscriber's snapshot is the table: deleted keys are gone.
    let table = pipe.rows("customers", "id").await;
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        vec!["1", "20", "4", "5"],
        "the database"
    );
    assert_eq!(
        snapshot_rows(node.addr, &pipe.topic("customers")).await,
        table
    );

    // A filter on a column, applied by the gateway: rows enter and leave it
    // as UPDATEs change that column (what the demo's status filter does).
    let gold = json!({"tier": "gold"});
    let (mut gold_ws, reply) = ws_subscribe(
        node.addr,
        json!({"topic": pipe.topic("customers"), "filter": gold}),
        WAIT,
    )
    .await;
    let snapshot = gold_ws
        .records(reply["snapshot"].as_u64().unwrap() as usize)
        .await;
    let mut keys: Vec<&str> = snapshot
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["1", "5"], "the gold rows");
    let (mut gold_sse, _) = sse_subscribe(
        node.addr,
        &format!(
            "topic={}&snapshot=false&filter=%7B%22tier%22%3A%22gold%22%7D",
            pipe.topic("customers")
        ),
        None,
        WAIT,
    )
    .await;
    for sql in [
        "UPDATE customers SET tier = 'gold' WHERE id = 4",
        "UPDATE customers SET tier = 'silver' WHERE id = 1",
        "UPDATE customers SET note = 'x' WHERE id = 4",
        "UPDATE customers SET tier = 'bronze' WHERE id = 4",
        "UPDATE customers SET email = 'zed@x' WHERE id = 20",
    ] {
        pipe.sql(sql).await;
    }
    let filtered = [
        ws_records(&mut gold_ws, 4).await,
        sse_records(&mut gold_sse, 4).await,
    ];
    for (records, who) in filtered.iter().zip(["WebSocket", "SSE"]) {
        let got: Vec<(&str, &str, &Value)> = records
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap(),
                    r["op"].as_str().unwrap(),
                    &r["data"],
                )
            })
            .collect();
        let gold4 = json!({"id": 4, "email": "dan@x", "tier": "gold", "note": null});
        let noted = json!({"id": 4, "email": "dan@x", "tier": "gold", "note": "x"});
        // Per key in commit order; keys 1 and 4 may sit in different partitions.
        let of = |key| {
            got.iter()
                .filter(|g| g.0 == key)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of("4"),
            vec![
                ("4", "enter", &gold4),
                ("4", "update", &noted),
                ("4", "leave", &Value::Null)
            ],
            "{who}: {records:?}"
        );
        assert_eq!(
            of("1"),
            vec![("1", "leave", &Value::Null)],
            "{who}: {records:?}"
        );
    }
    // The unfiltered clients got all five updates.
    let updates: Vec<Expected> = vec![
        (
            "4",
            "update",
            Some(json!({"id": 4, "email": "dan@x", "tier": "gold", "note": null})),
        ),
        (
            "1",
            "update",
            Some(json!({"id": 1, "email": "ann@y", "tier": "silver", "note": "vip"})),
        ),
        (
            "4",
            "update",
            Some(json!({"id": 4, "email": "dan@x", "tier": "gold", "note": "x"})),
        ),
        (
            "4",
            "update",
            Some(json!({"id": 4, "email": "dan@x", "tier": "bronze", "note": "x"})),
        ),
        (
            "20",
            "update",
            Some(json!({"id": 20, "email": "zed@x", "tier": "silver", "note": null})),
        ),
    ];
    let live = ws_records(&mut customers_ws, updates.len()).await;
    check_changes(&live, &updates, "customers over WebSocket, filter phase");
    let live_sse = sse_records(&mut customers_sse, updates.len()).await;
    check_changes(&live_sse, &updates, "customers over SSE, filter phase");

    // 3. A table created while everything runs is served without a restart.
    pipe.sql(
        "CREATE TABLE invoices (no text PRIMARY KEY, amount numeric(10, 2) NOT NULL);
         INSERT INTO invoices VALUES ('A-1', 12.50);",
    )
    .await;
    let (mut invoices_ws, reply) =
        ws_subscribe(node.addr, json!({"topic": pipe.topic("invoices")}), wait).await;
    let snapshot = first_row(&mut invoices_ws, &reply).await;
    assert_eq!(snapshot[0]["key"], "A-1");
    assert_eq!(snapshot[0]["op"], "create");
    // decimal.handling.mode=string: NUMERIC as a decimal string.
    assert_eq!(snapshot[0]["data"], json!({"no": "A-1", "amount": "12.50"}));
    pipe.sql("UPDATE invoices SET amount = 14.75 WHERE no = 'A-1'")
        .await;
    let update = ws_records(&mut invoices_ws, 1).await;
    assert_eq!(update[0]["op"], "update");
    assert_eq!(update[0]["data"], json!({"no": "A-1", "amount": "14.75"}));
    // A value PostgreSQL does not send: an update that leaves a TOASTed column
    // alone (REPLICA IDENTITY DEFAULT) reaches Kafka with Debezium's
    // `__debezium_unavailable_value` in its place; pushgate fills it from the
    // key's previous row, live and in snapshots.
    pipe.sql(
        "CREATE TABLE notes (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
         INSERT INTO notes SELECT 1, 'first', string_agg(md5(g::text), '') FROM generate_series(1, 300) g;",
    )
    .await;
    let body = pipe.sql("SELECT body FROM notes WHERE id = 1").await;
    let body = body.trim();
    assert_eq!(body.len(), 9600);
    let (mut notes_ws, reply) =
        ws_subscribe(node.addr, json!({"topic": pipe.topic("notes")}), wait).await;
    let snapshot = first_row(&mut notes_ws, &reply).await;
    assert_eq!(snapshot[0]["data"]["body"], body);
    pipe.sql("UPDATE notes SET title = 'second' WHERE id = 1")
        .await;
    let update = ws_records(&mut notes_ws, 1).await;
    assert_eq!(update[0]["op"], "update");
    assert_eq!(
        update[0]["data"],
        json!({"id": 1, "title": "second", "body": body}),
        "the unchanged TOASTed body, not Debezium's placeholder"
    );
    assert_eq!(
        snapshot_rows(node.addr, &pipe.topic("notes")).await,
        pipe.rows("notes", "id").await
    );

    let topics: Value = reqwest::get(format!("http://{}/topics", node.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: BTreeSet<&str> = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ready"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let want: BTreeSet<String> = ["counters", "customers", "invoices", "notes", "writer_stop"]
        .map(|t| pipe.topic(t))
        .into();
    assert_eq!(names, want.iter().map(String::as_str).collect(), "{topics}");

    // 4. An exact resume after a pushgate restart: what was committed while
    //    it was down, nothing more, nothing less, over WebSocket and SSE.
    let ws_cursor = live.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let sse_cursor = live_sse.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let counters_cursor = ws_seen.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    drop((
        customers_ws,
        customers_sse,
        counters_ws,
        counters_sse,
        replay,
        invoices_ws,
        notes_ws,
        gold_ws,
        gold_sse,
    ));
    let mut node = node;
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(10)).await, Some(0));
    drop(node_dir);
    for sql in [
        "UPDATE customers SET tier = 'platinum' WHERE id = 4",
        "DELETE FROM customers WHERE id = 5",
        "INSERT INTO customers VALUES (6, 'fay@x', 'gold', NULL)",
        "UPDATE counters SET n = n + 1 WHERE id IN (1, 2)",
    ] {
        pipe.sql(sql).await;
    }
    let missed: Vec<Expected> = vec![
        (
            "4",
            "update",
            Some(json!({"id": 4, "email": "dan@x", "tier": "platinum", "note": "x"})),
        ),
        (
            "5",
            "delete",
            Some(json!({"id": 5, "email": "eve@x", "tier": "gold", "note": "new"})),
        ),
        ("5", "delete", None),
        (
            "6",
            "create",
            Some(json!({"id": 6, "email": "fay@x", "tier": "gold", "note": null})),
        ),
    ];
    // Let Debezium write them before the node reads its warm start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (node, _node_dir) = pipe.pushgate().await;
    let (mut ws, reply) = ws_subscribe(
        node.addr,
        json!({"topic": pipe.topic("customers"), "cursor": ws_cursor}),
        wait,
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let resumed = ws_records(&mut ws, missed.len()).await;
    check_changes(&resumed, &missed, "customers, WebSocket resume");
    assert_eq!(ws.lives.last().unwrap()["replayed"], missed.len());
    let (mut sse, reply) = sse_subscribe(
        node.addr,
        &format!("topic={}", pipe.topic("customers")),
        Some(&sse_cursor),
        wait,
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let resumed = sse_records(&mut sse, missed.len()).await;
    check_changes(&resumed, &missed, "customers, SSE resume (Last-Event-ID)");
    let (mut counters_ws, reply) = ws_subscribe(
        node.addr,
        json!({"topic": pipe.topic("counters"), "cursor": counters_cursor}),
        wait,
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let resumed = ws_records(&mut counters_ws, 2).await;
    let bumped: BTreeMap<&str, i64> = resumed
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), r["data"]["n"].as_i64().unwrap()))
        .collect();
    let now = pipe.rows("counters", "id").await;
    assert_eq!(
        bumped,
        BTreeMap::from([
            ("1", now["1"]["n"].as_i64().unwrap()),
            ("2", now["2"]["n"].as_i64().unwrap())
        ])
    );
    assert_eq!(
        now["1"]["n"].as_i64().unwrap(),
        finals["1"]["n"].as_i64().unwrap() + 1
    );
    // And live again on the new node.
    pipe.sql("INSERT INTO customers VALUES (7, 'gus@x', NULL, NULL)")
        .await;
    let row = json!({"id": 7, "email": "gus@x", "tier": null, "note": null});
    check_changes(
        &ws_records(&mut ws, 1).await,
        &[("7", "create", Some(row.clone()))],
        "WS live",
    );
    check_changes(
        &sse_records(&mut sse, 1).await,
        &[("7", "create", Some(row))],
        "SSE live",
    );
    assert_eq!(
        snapshot_rows(node.addr, &pipe.topic("customers")).await,
        pipe.rows("customers", "id").await
    );
    eprintln!("[schemas={schemas}] done in {:.1?}", started.elapsed());
}

#[tokio::test]
async fn debezium_json_without_schemas() {
    if !tiers(&["kafka", "debezium"]) {
        return;
    }
    scenario(false).await;
}

#[tokio::test]
async fn debezium_json_with_schemas() {
    if !tiers(&["kafka", "debezium"]) {
        return;
    }
    scenario(true).await;
}
