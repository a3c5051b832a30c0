//! gRPC (`pushgate.v1.Gateway`) against an independent client: Python grpcio with stubs generated from the committed proto, plus HTTP/2 on the shared port.
//!
//! Needs `scripts/grpc-setup` (the venv in tests/grpc/.venv). Each test runs
//! the real server on 127.0.0.1 and drives `tests/grpc/client.py`, which
//! prints one JSON line per event.

mod common;
#[cfg(feature = "kafka")]
mod kafka_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pushgate::{Config, Listeners, Shutdown};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc")
}

fn python() -> PathBuf {
    let python = here().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/grpc-setup",
        python.display()
    );
    python
}

/// A running `client.py subscribe`, read line by line.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    async fn start(addr: impl ToString, request: Value, extra: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(here().join("client.py"))
            .arg("subscribe")
            .arg(addr.to_string())
            .arg(request.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn client.py");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next event (or `{"end": ...}`).
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("client.py ended without an end line");
        serde_json::from_str(&line).unwrap()
    }

    /// Events until the stream ends; returns them and the end.
    async fn until_end(&mut self) -> (Vec<Value>, Value) {
        let mut events = Vec::new();
        loop {
            let v = self.next().await;
            if let Some(end) = v.get("end") {
                let end = end.clone();
                let _ = self.child.wait().await;
                return (events, end);
            }
            events.push(v);
        }
    }

    /// The next `n` records (other events are returned too, in order).
    async fn records(&mut self, n: usize) -> (Vec<Value>, Vec<Value>) {
        let mut records = Vec::new();
        let mut all = Vec::new();
        while records.len() < n {
            let v = self.next().await;
            assert!(v.get("end").is_none(), "ended early: {v} after {all:?}");
            if v["type"] == "record" {
                records.push(v.clone());
            }
            all.push(v);
        }
        (records, all)
    }
}

/// Runs `client.py ARGS` to completion and parses its one line.
async fn client(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(here().join("client.py"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().expect("a line")).unwrap()
}

/// Subscribes and returns every event until the end (for calls that end by themselves).
async fn subscribe_all(addr: impl ToString, request: Value, extra: &[&str]) -> (Vec<Value>, Value) {
    Subscriber::start(addr, request, extra)
        .await
        .until_end()
        .await
}

async fn topic_cursor(server: &TestServer, topic: &str) -> String {
    cursor_at(&server.http, server.addr, topic).await
}

fn assert_partition_order(records: &[Value]) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    for r in records {
        let (p, o) = (
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        );
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

fn seqs(records: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = records
        .iter()
        .map(|r| r["data"]["seq"].as_u64().unwrap())
        .collect();
    s.sort();
    s
}

#[tokio::test]
async fn key_filtered_subscribe_replays_in_partition_order_then_goes_live() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start().await;
    let start = topic_cursor(&server, "t").await;
    let batch: Vec<(String, Value)> = (0..60u64)
        .map(|seq| (format!("k{}", seq % 10), json!({"seq": seq})))
        .collect();
    server.publish_batch("t", &batch).await;

    let mut sub = Subscriber::start(
        server.addr,
        json!({"topic": "t", "keys": ["k1", "k2"], "cursor": start}),
        &[],
    )
    .await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["cursor"], start.as_str());
    let (replayed, all) = sub.records(12).await;
    assert!(replayed
        .iter()
        .all(|r| r["key"] == "k1" || r["key"] == "k2"));
    assert_partition_order(&replayed);
    let mut want: Vec<u64> = (0..60).filter(|s| s % 10 == 1 || s % 10 == 2).collect();
    want.sort();
    assert_eq!(seqs(&replayed), want, "0 lost, 0 duplicated");
    assert!(all.iter().all(|e| e["type"] == "record"), "{all:?}");
    let live = sub.next().await;
    assert_eq!(live["type"], "live", "{live}");
    assert_eq!(live["replayed"], 12);
    // The data is the JSON text the other transports carry; the cursor resumes after the record.
    assert_eq!(replayed[0]["topic"], "t");
    assert!(replayed[0]["timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(!replayed[0]["cursor"].as_str().unwrap().is_empty());

    for (seq, key) in [(60u64, "k3"), (61, "k1"), (62, "k9"), (63, "k2")] {
        server.publish("t", key, json!({"seq": seq})).await;
    }
    let (live_records, _) = sub.records(2).await;
    assert_eq!(seqs(&live_records), vec![61, 63], "only k1 and k2, live");

    // A prefix subscription with a snapshot: the latest value of each matching key.
    let mut sub = Subscriber::start(server.addr, json!({"topic": "t", "prefix": "k9"}), &[]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["snapshot"], 1, "{subscribed}");
    let (snap, _) = sub.records(1).await;
    assert_eq!(snap[0]["snapshot"], true);
    assert_eq!(snap[0]["data"]["seq"], 62);
    assert_eq!(sub.next().await["type"], "live");
    server.stop().await;
}

/// A snapshot cut by `limits.max_snapshot_records` says so in `Subscribed`
/// and how many keys it left out in `Live` (issue 30).
#[tokio::test]
async fn a_partial_snapshot_is_told() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with("[limits]\nmax_snapshot_records = 4\n").await;
    let batch: Vec<(String, Value)> = (0..10u64)
        .map(|seq| (format!("k{seq}"), json!({"seq": seq})))
        .collect();
    server.publish_batch("t", &batch).await;
    let mut sub = Subscriber::start(server.addr, json!({"topic": "t"}), &[]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["snapshot"], 4, "{subscribed}");
    assert_eq!(subscribed["snapshot_partial"], true);
    assert_eq!(
        subscribed["snapshot_partial_reason"],
        "max_snapshot_records"
    );
    sub.records(4).await;
    let live = sub.next().await;
    assert_eq!(live["type"], "live", "{live}");
    assert_eq!(live["snapshot_skipped"], 6);
    // Complete snapshots say nothing.
    let mut sub = Subscriber::start(server.addr, json!({"topic": "t", "keys": ["k1"]}), &[]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["snapshot_partial"], false, "{subscribed}");
    assert_eq!(subscribed["snapshot_partial_reason"], "");
    sub.records(1).await;
    assert_eq!(sub.next().await["snapshot_skipped"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn an_evicted_cursor_gets_a_gap_then_a_fresh_snapshot() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start().await;
    let old = topic_cursor(&server, "small").await;
    let batch: Vec<(String, Value)> = (0..30u64)
        .map(|seq| (format!("k{}", seq % 3), json!({"seq": seq})))
        .collect();
    server.publish_batch("small", &batch).await;
    // Retention (10 records, checked every 50 ms) drops the start of the log.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut sub =
        Subscriber::start(server.addr, json!({"topic": "small", "cursor": old}), &[]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    let gap = sub.next().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "retention");
    assert!(!gap["earliest"].as_str().unwrap().is_empty());
    assert_ne!(gap["earliest"], old.as_str());
    let (snapshot, _) = sub.records(3).await;
    assert!(snapshot.iter().all(|r| r["snapshot"] == true));
    assert_eq!(seqs(&snapshot), vec![27, 28, 29]);
    assert_eq!(sub.next().await["type"], "live");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with("[limits]\nmax_message_bytes = 4096\n").await;
    let addr = server.addr.to_string();
    let end = |request: Value| {
        let addr = addr.clone();
        async move { subscribe_all(addr, request, &[]).await.1 }
    };
    let e = end(json!({"topic": "t", "cursor": "not-a-cursor"})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(e["trailers"]["pushgate-error"], "bad_cursor");
    let e = end(json!({"topic": "t", "filter_json": "{nope"})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(e["trailers"]["pushgate-error"], "bad_filter");
    let e = end(json!({"topic": "t", "filter_json": "[1, 2]"})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = end(json!({"topic": "t", "delta": "xml"})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = end(json!({"topic": "t", "max_rate": -1.0})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = end(json!({"topic": "nope"})).await;
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    assert_eq!(e["trailers"]["pushgate-error"], "unknown_topic");
    let e = end(json!({"topic": "t", "keys": vec!["a"; 2000]})).await;
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    // Malformed protobuf, and a request larger than the limit.
    let (_, e) = subscribe_all(&addr, json!(null), &["--raw", "ffffffff"]).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let big = format!("0a{}", "ff".repeat(10));
    let huge = {
        // Field 1 (topic), length 5000.
        let mut hex = String::from("0a8827");
        hex.push_str(&"61".repeat(5000));
        hex
    };
    let (_, e) = subscribe_all(&addr, json!(null), &["--raw", &big]).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let (_, e) = subscribe_all(&addr, json!(null), &["--raw", &huge]).await;
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED", "{e}");
    let e = client(&["call", &addr, "/pushgate.v1.Gateway/Nope", "00"]).await;
    assert_eq!(e["code"], "UNIMPLEMENTED", "{e}");

    // Publish: the answers of POST /topics/{topic}.
    let ok = client(&[
        "publish",
        &addr,
        &json!({"topic": "one", "records": [{"key": "A", "data": {"x": 1}}, {"data": [1, 2]}]})
            .to_string(),
    ])
    .await;
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["response"]["topic"], "one");
    let appended = ok["response"]["records"].as_array().unwrap();
    assert_eq!(appended.len(), 2);
    assert_eq!(
        appended[1]["offset"].as_u64(),
        Some(appended[0]["offset"].as_u64().unwrap() + 1)
    );
    assert!(!appended[1]["cursor"].as_str().unwrap().is_empty());
    let bad = |records: Value| {
        let addr = addr.clone();
        async move {
            client(&[
                "publish",
                &addr,
                &json!({"topic": "one", "records": records}).to_string(),
            ])
            .await
        }
    };
    let e = bad(json!([{"key": "A", "data_json": "{not json"}])).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert!(e["details"].as_str().unwrap().contains("records[0]"), "{e}");
    let e = bad(json!([])).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = client(&[
        "publish",
        &addr,
        &json!({"topic": "nope", "records": [{"data": 1}]}).to_string(),
    ])
    .await;
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    let e = client(&["publish", &addr, "{}", "--raw", "12ff"]).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    // The record published over gRPC reaches a gRPC subscriber with the same JSON.
    let (events, _) = subscribe_all(
        &addr,
        json!({"topic": "one", "keys": ["A"]}),
        &["--records", "1"],
    )
    .await;
    let record = events.iter().find(|e| e["type"] == "record").unwrap();
    assert_eq!(record["data"], json!({"x": 1}));
    server.stop().await;
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(exp_in: i64, subscribe: &[&str], publish: &[&str]) -> String {
    let claims = json!({
        "sub": "user-1",
        "exp": now() + exp_in,
        "pushgate": {"subscribe": subscribe, "publish": publish},
    });
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".into());
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

const AUTH: &str = r#"
[auth]
anonymous_subscribe = false
anonymous_publish = false
leeway = "0s"
expiry_grace = "700ms"
[[auth.keys]]
kind = "hmac"
kid = "hs"
secret = "test-secret-that-is-at-least-32-bytes-long"
"#;

#[tokio::test]
async fn tokens_grants_and_expiry() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with(AUTH).await;
    let addr = server.addr.to_string();
    let good = token(3600, &["t", "one:k*"], &["one:k1"]);

    let (_, e) = subscribe_all(&addr, json!({"topic": "t"}), &[]).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let (_, e) = subscribe_all(&addr, json!({"topic": "t"}), &["--token", "x.y.z"]).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let expired = token(-60, &["t"], &[]);
    let (_, e) = subscribe_all(&addr, json!({"topic": "t"}), &["--token", &expired]).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    // Granted one:k*, asking for the whole topic or another key.
    let (_, e) = subscribe_all(&addr, json!({"topic": "one"}), &["--token", &good]).await;
    assert_eq!(e["code"], "PERMISSION_DENIED", "{e}");
    let (_, e) = subscribe_all(
        &addr,
        json!({"topic": "one", "keys": ["x"]}),
        &["--token", &good],
    )
    .await;
    assert_eq!(e["code"], "PERMISSION_DENIED", "{e}");
    // Publish: no token, a key outside the grant, then allowed.
    let body = json!({"topic": "one", "records": [{"key": "k1", "data": 1}]}).to_string();
    let e = client(&["publish", &addr, &body]).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let other = json!({"topic": "one", "records": [{"key": "k2", "data": 1}]}).to_string();
    let e = client(&["publish", &addr, &other, "--token", &good]).await;
    assert_eq!(e["code"], "PERMISSION_DENIED", "{e}");
    let ok = client(&["publish", &addr, &body, "--token", &good]).await;
    assert_eq!(ok["code"], "OK", "{ok}");

    // A token that expires mid-stream: TokenExpiring, then UNAUTHENTICATED
    // after the grace, with the cursor to resume from. Its 6 s leave room for
    // the subscribe and a publish by a Python process on a loaded machine
    // (with 2 s, CI once saw TokenExpiring go by before the record was read).
    let short = token(6, &["one:k*"], &[]);
    let mut sub = Subscriber::start(
        &addr,
        json!({"topic": "one", "keys": ["k1"], "snapshot": false}),
        &["--token", &short],
    )
    .await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    let published = client(&["publish", &addr, &body, "--token", &good]).await;
    let (records, _) = sub.records(1).await;
    assert_eq!(
        records[0]["cursor"],
        published["response"]["records"][0]["cursor"]
    );
    let warned = Instant::now();
    let expiring = sub.next().await;
    assert_eq!(expiring["type"], "token_expiring", "{expiring}");
    assert_eq!(expiring["grace_ms"], 700);
    let (_, end) = sub.until_end().await;
    assert!(warned.elapsed() >= Duration::from_millis(500));
    assert_eq!(end["code"], "UNAUTHENTICATED", "{end}");
    assert_eq!(end["trailers"]["pushgate-error"], "token_expired");
    assert_eq!(end["trailers"]["pushgate-cursor"], records[0]["cursor"]);
    // The client resumes with a fresh token and that cursor: nothing missed, nothing repeated.
    let missed = client(&["publish", &addr, &body, "--token", &good]).await;
    let (events, _) = subscribe_all(
        &addr,
        json!({"topic": "one", "keys": ["k1"], "cursor": end["trailers"]["pushgate-cursor"]}),
        &["--token", &good, "--records", "1"],
    )
    .await;
    let got: Vec<&Value> = events.iter().filter(|e| e["type"] == "record").collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["offset"], missed["response"]["records"][0]["offset"]);
    server.stop().await;
}

/// A server on `dir`'s embedded log (so a second one can take it over).
/// A token of `subject` granted `subscribe`, valid for an hour.
fn token_of(subject: &str, subscribe: &[&str]) -> String {
    let claims = json!({"sub": subject, "exp": now() + 3600, "pushgate": {"subscribe": subscribe}});
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".into());
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_revoked_subject_s_stream_ends_unauthenticated_and_narrowed_grants_permission_denied() {
    if !tiers(&["grpc"]) {
        return;
    }
    const ADMIN_TOKEN: &str = "admin-token-0123456789";
    let server = TestServer::start_with(&format!(
        "{AUTH}\n[admin]\nenabled = true\ntoken = \"{ADMIN_TOKEN}\"\n"
    ))
    .await;
    let addr = server.addr.to_string();
    let admin = |path: &str, body: Value| {
        server
            .http
            .post(server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let revoked = token_of("mallory", &["t"]);
    let narrowed = token_of("nina", &["t", "one"]);
    let mut cut = Subscriber::start(
        &addr,
        json!({"topic": "t", "snapshot": false}),
        &["--token", &revoked],
    )
    .await;
    assert_eq!(cut.next().await["type"], "subscribed");
    assert_eq!(cut.next().await["type"], "live");
    let mut ended = Subscriber::start(
        &addr,
        json!({"topic": "t", "snapshot": false}),
        &["--token", &narrowed],
    )
    .await;
    assert_eq!(ended.next().await["type"], "subscribed");
    assert_eq!(ended.next().await["type"], "live");
    let mut kept = Subscriber::start(
        &addr,
        json!({"topic": "one", "snapshot": false}),
        &["--token", &narrowed],
    )
    .await;
    assert_eq!(kept.next().await["type"], "subscribed");
    assert_eq!(kept.next().await["type"], "live");

    let asked = Instant::now();
    let reply = admin("/admin/revocations", json!({"subject": "mallory"}))
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let (_, end) = cut.until_end().await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(end["code"], "UNAUTHENTICATED", "{end}");
    assert_eq!(end["trailers"]["pushgate-error"], "revoked", "{end}");
    let (_, again) = subscribe_all(&addr, json!({"topic": "t"}), &["--token", &revoked]).await;
    assert_eq!(again["code"], "UNAUTHENTICATED", "{again}");

    let reply = admin(
        "/admin/grants",
        json!({"subject": "nina", "subscribe": ["one"]}),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), 202);
    let (_, end) = ended.until_end().await;
    assert_eq!(end["code"], "PERMISSION_DENIED", "{end}");
    assert_eq!(end["trailers"]["pushgate-error"], "revoked", "{end}");
    // The stream the new grants still allow goes on.
    let body = json!({"key": "k", "data": "still"});
    let published = server
        .http
        .post(server.url("/topics/one"))
        .bearer_auth(token(60, &[], &["one"]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let (records, _) = kept.records(1).await;
    assert_eq!(records[0]["data"], "still");
    server.stop().await;
}

async fn start_on(
    dir: &Path,
) -> (
    std::net::SocketAddr,
    Shutdown,
    tokio::task::JoinHandle<Result<(), pushgate::RunError>>,
) {
    let config = Config::from_toml_str(&config_toml(dir, ""), std::iter::empty()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(pushgate::run(
        config,
        Listeners { http: listener },
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    while !http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, shutdown, handle)
}

#[tokio::test]
async fn a_drain_ends_streams_with_unavailable_and_the_cursor_then_the_client_resumes() {
    if !tiers(&["grpc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (addr, shutdown, handle) = start_on(dir.path()).await;
    let http = reqwest::Client::new();
    let mut sub = Subscriber::start(addr, json!({"topic": "t", "snapshot": false}), &[]).await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    for seq in 0..20u64 {
        publish(
            &http,
            addr,
            "t",
            &format!("k{}", seq % 7),
            json!({"seq": seq}),
        )
        .await;
    }
    let (first, _) = sub.records(20).await;
    let started = Instant::now();
    shutdown.trigger();
    let (_, end) = sub.until_end().await;
    assert_eq!(end["code"], "UNAVAILABLE", "{end}");
    let cursor = end["trailers"]["pushgate-cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain was not held up"
    );

    // The next node (here: the same log, restarted) serves the resume.
    let (addr, shutdown, handle) = start_on(dir.path()).await;
    for seq in 20..35u64 {
        publish(
            &http,
            addr,
            "t",
            &format!("k{}", seq % 7),
            json!({"seq": seq}),
        )
        .await;
    }
    let mut sub = Subscriber::start(addr, json!({"topic": "t", "cursor": cursor}), &[]).await;
    assert_eq!(sub.next().await["recovered"], true);
    let (missed, _) = sub.records(15).await;
    assert_partition_order(&missed);
    assert_eq!(
        seqs(&missed),
        (20..35).collect::<Vec<_>>(),
        "0 lost, 0 duplicated"
    );
    assert_eq!(seqs(&first), (0..20).collect::<Vec<_>>());
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn resume_with_a_cursor_on_a_second_kafka_node_loses_and_repeats_nothing() {
    if !tiers(&["grpc", "kafka"]) {
        return;
    }
    use kafka_common::*;
    let broker = Broker::shared();
    broker.create_topic("t", 3, &[]).await;
    let node = |_: ()| async {
        let dir = tempfile::tempdir().unwrap();
        // Tiny rings and warm start: node B cannot serve the resume from memory.
        let config = kafka_config(&broker.addr(), &[("t", 4)], "")
            .replace("warm_start_records = 1000", "warm_start_records = 2");
        (
            Process::start(dir.path(), &config, "127.0.0.1:0").await,
            dir,
        )
    };
    let (a, _da) = node(()).await;
    let (b, _db) = node(()).await;
    let mut sub = Subscriber::start(a.addr, json!({"topic": "t", "snapshot": false}), &[]).await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    produce(&broker, "t", 0, 10).await;
    let (seen, _) = sub.records(10).await;
    let cursor = seen[9]["cursor"].as_str().unwrap().to_owned();
    drop(sub);
    let http = reqwest::Client::new();
    for seq in 10..40u64 {
        publish(
            &http,
            a.addr,
            "t",
            &format!("k{}", seq % 5),
            json!({"seq": seq}),
        )
        .await;
    }
    let mut sub = Subscriber::start(b.addr, json!({"topic": "t", "cursor": cursor}), &[]).await;
    assert_eq!(sub.next().await["recovered"], true);
    let (got, _) = sub.records(30).await;
    assert_partition_order(&got);
    assert_eq!(
        seqs(&got),
        (10..40).collect::<Vec<_>>(),
        "0 lost, 0 duplicated"
    );
    let live = sub.next().await;
    assert_eq!(live["type"], "live", "nothing more before live: {live}");
    assert_eq!(live["replayed"], 30);
}

#[tokio::test]
async fn half_sent_http2_requests_are_cut_off_while_grpc_clients_are_served() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with("[server]\nheader_read_timeout = \"1s\"\n").await;
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        // The preface, an empty SETTINGS frame, then the first bytes of a HEADERS frame.
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        if i % 2 == 0 {
            bytes.extend_from_slice(&[0, 0, 40, 1, 4, 0, 0, 0, 1, 0x82]);
        }
        s.write_all(&bytes).await.unwrap();
        slow.push((Instant::now(), s));
    }
    // Connections that send only part of the preface, too.
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2").await.unwrap();
        slow.push((Instant::now(), s));
    }
    let ok = client(&[
        "publish",
        &server.addr.to_string(),
        &json!({"topic": "one", "records": [{"data": 1}]}).to_string(),
    ])
    .await;
    assert_eq!(ok["code"], "OK", "served while the others hang: {ok}");
    let mut closed = 0;
    let mut latest = Duration::ZERO;
    for (opened, mut s) in slow {
        let deadline = opened + Duration::from_secs(6);
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                // The server's SETTINGS and the like; keep reading until it closes.
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => {
                    closed += 1;
                    latest = latest.max(opened.elapsed());
                }
                Err(_) => {}
            }
            break;
        }
    }
    assert_eq!(closed, 400, "all half-sent HTTP/2 connections closed");
    assert!(
        latest >= Duration::from_millis(900),
        "closed by the timeout, not at once"
    );
    server.stop().await;
}

#[tokio::test]
async fn curl_receives_sse_over_h2c_with_prior_knowledge() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start().await;
    server.publish("one", "k", json!({"hello": "h2"})).await;
    let out = Command::new("curl")
        .args([
            "--http2-prior-knowledge",
            "-sN",
            "-m",
            "2",
            "-w",
            "\nversion=%{http_version}\n",
        ])
        .arg(server.url("/sse?topic=one"))
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("event: subscribed"), "{text}");
    assert!(text.contains(r#""data":{"hello":"h2"}"#), "{text}");
    assert!(text.contains("event: live"), "{text}");
    assert!(text.contains("version=2"), "served over HTTP/2: {text}");
    server.stop().await;
}

#[tokio::test]
async fn value_aware_options_filter_project_delta_conflate_and_compact() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let mut sub = Subscriber::start(
        &addr,
        json!({
            "topic": "one", "keys": ["k1"], "snapshot": false,
            "filter_json": "{\"v\": {\"gt\": 10}}", "fields": ["v"], "delta": "json-patch"
        }),
        &[],
    )
    .await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    for v in [5, 20, 30, 1] {
        server.publish("one", "k1", json!({"v": v, "w": v})).await;
    }
    let (got, _) = sub.records(3).await;
    // 5 is left out; 20 enters with whole (projected) data; 30 is a patch; 1 leaves.
    assert_eq!(got[0]["op"], "enter", "{got:?}");
    assert_eq!(got[0]["data"], json!({"v": 20}));
    assert_eq!(got[1]["data"], Value::Null, "{got:?}");
    assert_eq!(
        got[1]["patch"],
        json!([{"op": "replace", "path": "/v", "value": 30}])
    );
    assert_eq!(got[2]["op"], "leave", "{got:?}");
    assert_eq!(got[2]["has_data"], false);
    drop(sub);

    // max_rate: a burst to one key is conflated, and the latest value arrives.
    let mut sub = Subscriber::start(
        &addr,
        json!({"topic": "one", "keys": ["k2"], "snapshot": false, "max_rate": 2.0}),
        &["--timeout", "3"],
    )
    .await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    let batch: Vec<(String, Value)> = (0..50u64)
        .map(|s| ("k2".to_owned(), json!({"seq": s})))
        .collect();
    server.publish_batch("one", &batch).await;
    let (events, end) = sub.until_end().await;
    assert_eq!(end["code"], "TIMEOUT");
    let records: Vec<&Value> = events.iter().filter(|e| e["type"] == "record").collect();
    assert!(
        !records.is_empty() && records.len() < 10,
        "conflated: {}",
        records.len()
    );
    assert_eq!(records.last().unwrap()["data"]["seq"], 49);

    // resume "latest": only the last missed record of each key, and how many were left out.
    let cursor = topic_cursor(&server, "one").await;
    let batch: Vec<(String, Value)> = (0..12u64)
        .map(|s| (format!("r{}", s % 3), json!({"seq": s})))
        .collect();
    server.publish_batch("one", &batch).await;
    let mut sub = Subscriber::start(
        &addr,
        json!({"topic": "one", "prefix": "r", "cursor": cursor, "resume": "latest"}),
        &[],
    )
    .await;
    assert_eq!(sub.next().await["recovered"], true);
    let (got, _) = sub.records(3).await;
    assert_eq!(seqs(&got), vec![9, 10, 11]);
    let live = sub.next().await;
    assert_eq!(live["type"], "live", "{live}");
    assert_eq!(live["compacted"], 9);
    server.stop().await;
}

/// A self-signed certificate for `localhost` and 127.0.0.1 with common name `cn`, made with the openssl CLI.
fn make_cert(dir: &Path, cn: &str) {
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem.new"))
        .arg("-out")
        .arg(dir.join("cert.pem.new"))
        .args([
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    // Key first, then the certificate: the reloader sees a matching pair last.
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
}

/// The subject of the certificate the server at `addr` presents.
async fn served_subject(addr: std::net::SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn tls_serves_h2_and_http1_by_alpn_grpc_over_tls_and_reloads_the_certificate() {
    if !tiers(&["grpc"]) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path(), "first");
    let server = TestServer::start_tls(&format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\nreload_interval = \"100ms\"\n",
        certs.path().display()
    ))
    .await;
    let https = format!("https://localhost:{}/healthz", server.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    let ca = certs.path().join("cert.pem").display().to_string();
    let deadline = Instant::now() + WAIT;
    while curl(&[
        "-s",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &https.replace("healthz", "readyz"),
    ])
    .await
        != "{\"ready\":true}"
    {
        assert!(Instant::now() < deadline, "never ready over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = curl(&[
        "-s",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http2",
        "-w",
        "%{http_version}",
        &https,
    ])
    .await;
    assert_eq!(v, "ok\n2", "ALPN h2");
    let v = curl(&[
        "-s",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--http1.1",
        "-w",
        "%{http_version}",
        &https,
    ])
    .await;
    assert_eq!(v, "ok\n1.1", "ALPN http/1.1");
    // Cleartext on a TLS port gets nothing.
    let v = curl(&["-s", "-m", "3", &server.url("/healthz")]).await;
    assert_eq!(v, "");

    // gRPC over TLS (grpcio with the certificate as its root).
    let addr = format!("localhost:{}", server.addr.port());
    let ok = client(&[
        "publish",
        &addr,
        &json!({"topic": "one", "records": [{"key": "A", "data": 7}]}).to_string(),
        "--tls-ca",
        &ca,
    ])
    .await;
    assert_eq!(ok["code"], "OK", "{ok}");
    let (events, _) = subscribe_all(
        &addr,
        json!({"topic": "one", "keys": ["A"]}),
        &["--records", "1", "--tls-ca", &ca],
    )
    .await;
    assert_eq!(
        events.iter().find(|e| e["type"] == "record").unwrap()["data"],
        7
    );

    // A new certificate on disk is served to new connections without a restart.
    assert!(
        served_subject(server.addr).await.contains("first"),
        "{}",
        served_subject(server.addr).await
    );
    make_cert(certs.path(), "second");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served_subject(server.addr).await.contains("second") {
        assert!(
            Instant::now() < deadline,
            "never reloaded: {}",
            served_subject(server.addr).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken pair is not taken; the last good one stays.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(served_subject(server.addr).await.contains("second"));
    server.stop().await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_gets_resource_exhausted_and_resumes_with_nothing_lost() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with(
        "[limits]\nqueue_bytes = 8192\npublish_rate = 100000.0\npublish_burst = 100000.0\n",
    )
    .await;
    let addr = server.addr.to_string();
    let mut sub = Subscriber::start(
        &addr,
        json!({"topic": "one", "snapshot": false}),
        &["--pause", "3"],
    )
    .await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    // ~1.5 MB while the client reads nothing: more than the HTTP/2 windows and buffers hold.
    let pad = "x".repeat(250);
    let total = 6000u64;
    for chunk in 0..(total / 1000) {
        let batch: Vec<(String, Value)> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|s| (format!("k{}", s % 10), json!({"seq": s, "pad": pad})))
            .collect();
        server.publish_batch("one", &batch).await;
    }
    let (events, end) = sub.until_end().await;
    assert_eq!(end["code"], "RESOURCE_EXHAUSTED", "{end}");
    assert_eq!(end["trailers"]["pushgate-error"], "slow_consumer");
    let first: Vec<Value> = events
        .into_iter()
        .filter(|e| e["type"] == "record")
        .collect();
    assert!(
        (first.len() as u64) < total,
        "cut off early: {}",
        first.len()
    );
    let cursor = end["trailers"]["pushgate-cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    if let Some(last) = first.last() {
        assert_eq!(
            last["cursor"],
            cursor.as_str(),
            "the trailer resumes after the last record received"
        );
    }
    // Resuming from the trailer's cursor: together exactly every record, once.
    let rest = total as usize - first.len();
    let mut sub = Subscriber::start(&addr, json!({"topic": "one", "cursor": cursor}), &[]).await;
    assert_eq!(sub.next().await["recovered"], true);
    let (second, _) = sub.records(rest).await;
    let mut all = first;
    all.extend(second);
    assert_eq!(
        seqs(&all),
        (0..total).collect::<Vec<_>>(),
        "0 lost, 0 duplicated"
    );
    server.stop().await;
}

/// The admin API lists a gRPC stream and closes it like a drain
/// (`UNAVAILABLE`, `pushgate-error: unavailable`, the cursor); its records'
/// first writes count in `pushgate_record_age_seconds{transport="grpc"}`.
#[tokio::test]
async fn an_operator_closes_a_grpc_stream_like_a_drain_and_its_record_age_is_measured() {
    if !tiers(&["grpc"]) {
        return;
    }
    const TOKEN: &str = "admin-token-0123456789";
    let server =
        TestServer::start_with(&format!("[admin]\nenabled = true\ntoken = \"{TOKEN}\"\n")).await;
    let mut sub =
        Subscriber::start(server.addr, json!({"topic": "one", "snapshot": false}), &[]).await;
    assert_eq!(sub.next().await["type"], "subscribed");
    assert_eq!(sub.next().await["type"], "live");
    server.publish("one", "k", json!(1)).await;
    sub.records(1).await;
    let metrics = server.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pushgate_record_age_seconds_count{transport=\"grpc\"}")),
        "{metrics}"
    );
    let listed: Value = server
        .http
        .get(server.url("/admin/connections?topic=one"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grpc: Vec<&Value> = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["transport"] == "grpc")
        .collect();
    assert_eq!(grpc.len(), 1, "{listed}");
    let id = grpc[0]["id"].as_u64().unwrap();
    let deleted = server
        .http
        .delete(server.url(&format!("/admin/connections/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (_, end) = sub.until_end().await;
    assert_eq!(end["code"], "UNAVAILABLE", "{end}");
    assert_eq!(end["trailers"]["pushgate-error"], "unavailable", "{end}");
    assert!(end["trailers"]["pushgate-cursor"].is_string(), "{end}");
    server.stop().await;
}

/// Reads until `live`; returns the records before it.
async fn until_live(sub: &mut Subscriber) -> Vec<Value> {
    let mut records = Vec::new();
    loop {
        let v = sub.next().await;
        assert!(v.get("end").is_none(), "ended before live: {v}");
        match v["type"].as_str() {
            Some("record") => records.push(v),
            Some("live") => return records,
            _ => {}
        }
    }
}

/// Issue 30: a gRPC reader that stops reading mid-snapshot is flow-controlled
/// (not ended), and a new call with the cursor of the last snapshot record it
/// got (which carries the snapshot position) continues the snapshot: every
/// key ends at its latest value, and no key before that position is sent
/// again unless it changed.
#[tokio::test]
async fn a_grpc_reader_paused_mid_snapshot_is_not_ended_and_resumes_where_it_stopped() {
    if !tiers(&["grpc"]) {
        return;
    }
    let server = TestServer::start_with(
        "[limits]\npublish_rate = 1000000.0\npublish_burst = 1000000.0\nqueue_bytes = 65536\n",
    )
    .await;
    const KEYS: usize = 12_000;
    publish_keys(&server, "t", KEYS).await;
    let mut latest: HashMap<String, Value> = (0..KEYS)
        .map(|i| (format!("k{i:05}"), json!({"n": i})))
        .collect();
    let mut sub =
        Subscriber::start(server.addr, json!({"topic": "t"}), &["--timeout", "120"]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["snapshot"], KEYS as u64, "{subscribed}");
    assert_eq!(subscribed["snapshot_partial"], false);
    let (first, _) = sub.records(1_000).await;
    // Paused: nothing read for 2 s while keys on both sides of the reader's
    // position change (the pipe to client.py and HTTP/2 windows fill).
    let changed: Vec<(String, Value)> = (0..KEYS)
        .step_by(97)
        .map(|i| (format!("k{i:05}"), json!({"n": i, "changed": true})))
        .collect();
    server.publish_batch("t", &changed).await;
    for (k, v) in &changed {
        latest.insert(k.clone(), v.clone());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (more, _) = sub.records(1_000).await;
    assert!(
        more.iter().all(|r| r["snapshot"] == true),
        "still in the snapshot after the pause"
    );
    let mut seen: Vec<Value> = first.into_iter().chain(more).collect();
    let last = seen.last().unwrap().clone();
    let position = last["key"].as_str().unwrap().to_owned();
    drop(sub);

    let mut resumed = Subscriber::start(
        server.addr,
        json!({"topic": "t", "cursor": last["cursor"]}),
        &["--timeout", "120"],
    )
    .await;
    let rest = until_live(&mut resumed).await;
    let changed_keys: std::collections::HashSet<&str> =
        changed.iter().map(|(k, _)| k.as_str()).collect();
    for r in &rest {
        let k = r["key"].as_str().unwrap();
        assert!(
            k > position.as_str() || changed_keys.contains(k),
            "{k} (at or before {position}, unchanged) was sent again"
        );
    }
    let snapshot_rest: Vec<&str> = rest
        .iter()
        .filter(|r| r["key"].as_str().unwrap() > position.as_str())
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<&str> = snapshot_rest.iter().copied().collect();
    assert_eq!(
        unique.len(),
        snapshot_rest.len(),
        "no key after the position twice"
    );
    seen.extend(rest);
    let mut state: HashMap<String, Value> = HashMap::new();
    for r in &seen {
        state.insert(r["key"].as_str().unwrap().to_owned(), r["data"].clone());
    }
    assert_eq!(state.len(), KEYS, "0 missing");
    for (k, v) in &latest {
        assert_eq!(state[k]["n"], v["n"], "{k}");
        assert_eq!(
            state[k].get("changed"),
            v.get("changed"),
            "{k} is at its latest value"
        );
    }
    server.stop().await;
}

/// The `cursor` of `topic` in `GET /topics` of the node at `addr`.
async fn cursor_at(http: &reqwest::Client, addr: std::net::SocketAddr, topic: &str) -> String {
    let list: Value = http
        .get(format!("http://{addr}/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == topic)
        .unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Issue 30: a snapshot cut on node A continues on node B reading the same
/// Kafka topic: the snapshot position in the cursor means the same keys on
/// both nodes, so nothing is missing and no unchanged key is sent twice.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_snapshot_cut_on_one_kafka_node_continues_on_another() {
    if !tiers(&["grpc", "kafka"]) {
        return;
    }
    use kafka_common::*;
    let broker = Broker::shared();
    broker.create_topic("snap", 3, &[]).await;
    let node = |_: ()| async {
        let dir = tempfile::tempdir().unwrap();
        let config = kafka_config(
            &broker.addr(),
            &[("snap", 4096)],
            "[limits]\npublish_rate = 1000000.0\npublish_burst = 1000000.0\n",
        );
        (
            Process::start(dir.path(), &config, "127.0.0.1:0").await,
            dir,
        )
    };
    let (a, _da) = node(()).await;
    let (b, _db) = node(()).await;
    let http = reqwest::Client::new();
    const KEYS: usize = 3_000;
    let a_addr = a.addr;
    let post = |records: Vec<(String, Value)>| {
        let http = http.clone();
        async move {
            let body = json!({
                "records": records.iter().map(|(k, d)| json!({"key": k, "data": d})).collect::<Vec<_>>()
            });
            let r = http
                .post(format!("http://{a_addr}/topics/snap"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let mut latest: HashMap<String, Value> = HashMap::new();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let records: Vec<(String, Value)> = chunk
            .iter()
            .map(|i| (format!("k{i:05}"), json!({"n": i})))
            .collect();
        latest.extend(records.iter().cloned());
        post(records).await;
    }
    let mut sub = Subscriber::start(a.addr, json!({"topic": "snap"}), &["--timeout", "60"]).await;
    let subscribed = sub.next().await;
    assert_eq!(subscribed["snapshot"], KEYS as u64, "{subscribed}");
    let (first, _) = sub.records(1_000).await;
    drop(sub);
    let last = first.last().unwrap().clone();
    let position = last["key"].as_str().unwrap().to_owned();
    let changed: Vec<(String, Value)> = (0..KEYS)
        .step_by(31)
        .map(|i| (format!("k{i:05}"), json!({"n": i, "changed": true})))
        .collect();
    latest.extend(changed.iter().cloned());
    post(changed.clone()).await;
    // B has read the log as far as A before the resume is asked of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cursor_at(&http, b.addr, "snap").await != cursor_at(&http, a.addr, "snap").await {
        assert!(Instant::now() < deadline, "node B never caught up with A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut resumed = Subscriber::start(
        b.addr,
        json!({"topic": "snap", "cursor": last["cursor"]}),
        &["--timeout", "60"],
    )
    .await;
    let rest = until_live(&mut resumed).await;
    let changed_keys: std::collections::HashSet<&str> =
        changed.iter().map(|(k, _)| k.as_str()).collect();
    for r in &rest {
        let k = r["key"].as_str().unwrap();
        assert!(
            k > position.as_str() || changed_keys.contains(k),
            "{k} (at or before {position}, unchanged) was sent again by node B"
        );
    }
    let mut state: HashMap<String, Value> = HashMap::new();
    for r in first.iter().chain(&rest) {
        state.insert(r["key"].as_str().unwrap().to_owned(), r["data"].clone());
    }
    assert_eq!(state.len(), KEYS, "0 missing");
    for (k, v) in &latest {
        assert_eq!(&state[k], v, "{k} is at its latest value");
    }
}
