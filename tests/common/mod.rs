//! Test harness: a real gateway on 127.0.0.1:0 and real WebSocket, SSE and HTTP clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use pushgate::{Config, Listeners, Shutdown};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);
/// How long a spawned binary may take to print its listening line.
pub const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// A config with test topics: `t` (3 partitions), `one` (1 partition),
/// `small` (tiny ring and retention, fast retention checks). `extra` is TOML
/// merged over it, key by key within each section.
pub fn config_toml(data_dir: &Path, extra: &str) -> String {
    let mut base: toml::Table = toml::from_str(&base_toml(data_dir)).unwrap();
    let extra: toml::Table = toml::from_str(extra).expect("extra config is TOML");
    for (section, value) in extra {
        match (base.get_mut(&section), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => into.extend(from),
            (_, value) => {
                base.insert(section, value);
            }
        }
    }
    toml::to_string(&base).unwrap()
}

fn base_toml(data_dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
static_dir = ""
shutdown_grace = "5s"
[embedded]
data_dir = "{dir}"
retention_check_interval = "50ms"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[[topics]]
name = "t"
partitions = 3
ring_records = 8
retention_records = 100000
[[topics]]
name = "one"
partitions = 1
ring_records = 64
[[topics]]
name = "small"
partitions = 1
ring_records = 5
retention_records = 10
"#,
        dir = data_dir.display(),
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub handle: JoinHandle<Result<(), pushgate::RunError>>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// `extra` is TOML inserted before the topics (e.g. a `[limits]` section).
    pub async fn start_with(extra: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), extra).await
    }

    /// Like [`start_with`](Self::start_with) on the log in `dir` (a node
    /// restarted on the data of a stopped one: take it back from `stop_keeping`).
    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        let config =
            Config::from_toml_str(&config_toml(dir.path(), extra), std::iter::empty()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(pushgate::run(
            config,
            Listeners { http: listener },
            shutdown.clone(),
        ));
        let server = Self {
            addr,
            shutdown,
            handle,
            dir,
            // A fresh connection per request: some tests run the server with a short
            // header timeout, which rightly closes keep-alive connections left idle.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        };
        server.wait_ready().await;
        server
    }

    /// Like [`start_with`](Self::start_with) for a server with `[server.tls]`: readiness is not checked (reqwest here speaks no TLS).
    pub async fn start_tls(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            Config::from_toml_str(&config_toml(dir.path(), extra), std::iter::empty()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(pushgate::run(
            config,
            Listeners { http: listener },
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            handle,
            dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "server never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn publish(&self, topic: &str, key: &str, data: Value) -> Value {
        publish(&self.http, self.addr, topic, key, data).await
    }

    pub async fn publish_batch(&self, topic: &str, records: &[(String, Value)]) -> Value {
        let body = json!({
            "records": records.iter().map(|(k, d)| json!({"key": k, "data": d})).collect::<Vec<_>>()
        });
        let r = self
            .http
            .post(self.url(&format!("/topics/{topic}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect(self.addr).await
    }

    pub async fn sse(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        SseClient::connect(&self.http, self.addr, query, last_event_id).await
    }

    pub async fn stop(self) {
        self.stop_keeping().await;
    }

    /// Stops the server and hands back its data directory.
    pub async fn stop_keeping(self) -> tempfile::TempDir {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("run returns within the grace period")
            .unwrap()
            .unwrap();
        self.dir
    }
}

/// Publishes `count` records with keys `k00000`.. (value `{"n": i, "even": i % 2 == 0, "name": "n{i}"}`), in batches of 500.
pub async fn publish_keys(server: &TestServer, topic: &str, count: usize) {
    let all: Vec<(String, Value)> = (0..count)
        .map(|i| {
            (
                format!("k{i:05}"),
                json!({"n": i, "even": i % 2 == 0, "name": format!("n{i}")}),
            )
        })
        .collect();
    for batch in all.chunks(500) {
        server.publish_batch(topic, batch).await;
    }
}

/// The secret of the HMAC key `hs` in [`HMAC_AUTH`].
pub const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// Config: subscribing needs a token (HS256, key id `hs`), publishing does not.
pub const HMAC_AUTH: &str = "[auth]\nanonymous_subscribe = false\nanonymous_publish = true\n\
     [[auth.keys]]\nkind = \"hmac\"\nkid = \"hs\"\nsecret = \"test-secret-that-is-at-least-32-bytes-long\"\n";

/// A token of `subject` for [`HMAC_AUTH`], valid 5 minutes, with these subscribe grants and none to publish.
pub fn subscribe_token(subject: &str, subscribe: Value) -> String {
    let claims = json!({
        "sub": subject,
        "exp": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300,
        "pushgate": {"subscribe": subscribe, "publish": []},
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs".to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

pub async fn publish(
    http: &reqwest::Client,
    addr: SocketAddr,
    topic: &str,
    key: &str,
    data: Value,
) -> Value {
    let r = http
        .post(format!("http://{addr}/topics/{topic}"))
        .json(&json!({"key": key, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "publish failed");
    r.json().await.unwrap()
}

/// POSTs `records` (`{"key", "data"}` objects) to `url` (a topic's publish URL); asserts 200.
pub async fn post_records(http: &reqwest::Client, url: &str, records: Vec<Value>) {
    let r = http
        .post(url)
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// `live` markers seen so far (set aside, not returned as messages).
    pub lives: Vec<Value>,
}

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Self {
            stream,
            lives: Vec::new(),
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next JSON message or close, skipping pings; panics after `WAIT`.
    pub async fn event(&mut self) -> WsEvent {
        self.event_within(WAIT)
            .await
            .expect("no websocket message in time")
    }

    pub async fn event_within(&mut self, wait: Duration) -> Option<WsEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let value: Value = serde_json::from_str(t.as_str()).unwrap();
                    check_server_message(&value);
                    if value["type"] == "live" {
                        self.lives.push(value);
                        continue;
                    }
                    return Some(WsEvent::Json(value));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(WsEvent::Closed(frame.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(WsEvent::Closed(None)),
            }
        }
    }

    pub async fn json(&mut self) -> Value {
        match self.event().await {
            WsEvent::Json(v) => v,
            WsEvent::Closed(code) => panic!("closed ({code:?}) while waiting for a message"),
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, request: Value) -> Value {
        let mut msg = request;
        msg["type"] = json!("subscribe");
        self.send(msg).await;
        let reply = self.json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// Reads `n` record messages (fails on anything else).
    pub async fn records(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.json().await;
            assert_eq!(v["type"], "record", "expected a record, got {v}");
            out.push(v);
        }
        out
    }

    /// Asserts nothing more arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(ev) = self.event_within(quiet).await {
            panic!("expected nothing, got {ev:?}");
        }
    }

    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.event().await {
                WsEvent::Closed(code) => return code,
                WsEvent::Json(_) => continue,
            }
        }
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

pub struct SseClient {
    pub status: u16,
    /// `live` events seen so far (set aside, not returned as events).
    pub lives: Vec<Value>,
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
    pub retry_lines: usize,
    pub ended: bool,
}

impl SseClient {
    pub async fn connect(
        http: &reqwest::Client,
        addr: SocketAddr,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut req = http.get(format!("http://{addr}/sse?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("sse connect");
        let status = resp.status().as_u16();
        Self {
            status,
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            lives: Vec::new(),
            retry_lines: 0,
            ended: false,
        }
    }

    /// The next event with data (comments and retry-only blocks are skipped);
    /// `None` when the stream ends or nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    ..Default::default()
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v);
                        has_data = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_owned();
                    } else if line.starts_with("retry: ") {
                        self.retry_lines += 1;
                    }
                }
                if has_data {
                    check_sse_event(&ev);
                }
                if has_data && ev.event == "live" {
                    self.lives.push(ev.json());
                } else if has_data {
                    return Some(ev);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(Some(Err(_)) | None) => self.ended = true,
            }
        }
    }

    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT).await.expect("no SSE event in time")
    }

    /// Reads `n` record events.
    pub async fn records(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let ev = self.next().await;
            assert_eq!(ev.event, "message", "expected a record, got {ev:?}");
            out.push(ev);
        }
        out
    }

    /// Waits until the server ends the stream; true if it did within `wait`.
    pub async fn wait_end(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(Some(Err(_)) | None) => self.ended = true,
            }
        }
        // Count retry lines in what was left.
        self.retry_lines += self.buf.matches("retry: ").count();
        true
    }
}

/// The protocol's message schemas (api/schemas/messages.json, the file the
/// AsyncAPI document references), compiled once per test process: one
/// validator per `$defs` entry.
fn message_validators() -> &'static HashMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let document: Value =
            serde_json::from_str(include_str!("../../api/schemas/messages.json")).unwrap();
        let defs = document["$defs"]
            .as_object()
            .expect("messages.json has $defs");
        defs.keys()
            .map(|name| {
                let mut schema = document.clone();
                schema["$ref"] = json!(format!("#/$defs/{name}"));
                let validator = jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("messages.json $defs/{name} does not compile: {e}"));
                (name.clone(), validator)
            })
            .collect()
    })
}

/// What is wrong with `message` as a `$defs/{def}` of api/schemas/messages.json (empty: nothing).
pub fn message_errors(def: &str, message: &Value) -> Vec<String> {
    let validator = message_validators()
        .get(def)
        .unwrap_or_else(|| panic!("api/schemas/messages.json has no $defs/{def}"));
    validator
        .iter_errors(message)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect()
}

/// Panics unless `message` matches `$defs/{def}` of api/schemas/messages.json.
pub fn check_message(def: &str, message: &Value) {
    let errors = message_errors(def, message);
    assert!(
        errors.is_empty(),
        "message does not match api/schemas/messages.json#/$defs/{def}:\n  {message}\n  {}",
        errors.join("\n  ")
    );
}

/// Checks a message the server sent over the WebSocket against the schema its `type` names.
pub fn check_server_message(message: &Value) {
    let def = match message["type"].as_str() {
        Some("subscribed") => "Subscribed",
        Some("record") => "Record",
        Some("live") => "Live",
        Some("gap") => "Gap",
        Some("error") => "Error",
        Some("unsubscribed") => "Unsubscribed",
        Some("pong") => "Pong",
        Some("token_expiring") => "TokenExpiring",
        Some("refreshed") => "Refreshed",
        _ => panic!(
            "a server message of a type api/schemas/messages.json does not define: {message}"
        ),
    };
    check_message(def, message);
}

/// Checks an SSE event: its name picks the schema (`message` is a record),
/// and only records (and `live` with a value filter) carry an `id:`, which is
/// their cursor (snapshot records other than the last carry none).
pub fn check_sse_event(ev: &SseEvent) {
    let def = match ev.event.as_str() {
        "subscribed" => "Subscribed",
        "gap" => "Gap",
        "live" => "Live",
        "message" => "Record",
        // The last event of a stream an operator ended (revoked token, narrowed grants).
        "error" => "Error",
        "unsubscribed" => "Unsubscribed",
        other => panic!("an SSE event api/asyncapi.yaml does not define: `{other}` {ev:?}"),
    };
    let data: Value = serde_json::from_str(&ev.data)
        .unwrap_or_else(|e| panic!("SSE event data is not JSON ({e}): {ev:?}"));
    check_message(def, &data);
    match (&ev.id, def) {
        (Some(id), "Record") => assert_eq!(id, &data["cursor"], "an SSE record's id is its cursor"),
        // With a value filter, `live` carries the position catch-up reached.
        (Some(id), "Live") => assert_eq!(id, &data["cursor"], "a live event's id is its cursor"),
        (None, "Record") => assert_eq!(
            data["snapshot"], true,
            "an SSE record without an id: {ev:?}"
        ),
        (Some(_), _) => panic!("only records carry an SSE id: {ev:?}"),
        (None, _) => {}
    }
}

/// The `data.seq` field of record JSON.
pub fn seq(record: &Value) -> u64 {
    record["data"]["seq"].as_u64().expect("seq")
}

/// A gateway running as a separate process (the real binary).
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr so far (ANSI colours removed).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Process {
    /// Starts `pushgate --config <file>` with `config` written into `dir`.
    pub async fn start(dir: &Path, config: &str, listen: &str) -> Self {
        let file: PathBuf = dir.join("pushgate.toml");
        std::fs::write(&file, config).unwrap();
        let file = file.display().to_string();
        Self::spawn(&["--config", &file, "--listen", listen]).await
    }

    /// Starts the binary with `args` and waits until it is ready.
    pub async fn spawn(args: &[&str]) -> Self {
        let process = Self::spawn_listening(args).await;
        process.wait_ready(WAIT).await;
        process
    }

    /// Starts `pushgate --config <file>` and returns once it listens (it may still be warming up).
    pub async fn start_listening(dir: &Path, config: &str, listen: &str) -> Self {
        let file: PathBuf = dir.join("pushgate.toml");
        std::fs::write(&file, config).unwrap();
        let file = file.display().to_string();
        Self::spawn_listening(&["--config", &file, "--listen", listen]).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(r) = http
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the binary with `args` and returns once it listens.
    pub async fn spawn_listening(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pushgate");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        // Generous: a loaded CI machine (two cores, a JVM broker beside) can take long to start.
        let addr = tokio::time::timeout(LISTEN_WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    return strip_ansi(&addr).parse::<SocketAddr>().unwrap();
                }
            }
            panic!("pushgate exited before listening");
        })
        .await
        .expect("pushgate did not start listening");
        // Keep draining stderr so the child never blocks on a full pipe; keep it for stderr().
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut all = keep.lock().unwrap();
                all.push_str(&strip_ansi(&line));
                all.push('\n');
            }
        });
        Self { child, addr, log }
    }

    /// What the process wrote to stderr after its "listening" line.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    /// SIGKILL: no drain, no clean close.
    pub fn sigkill(&mut self) {
        self.child.start_kill().expect("kill pushgate");
    }

    /// Waits for exit; returns the exit status code.
    pub async fn wait(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("process did not exit in time")
            .unwrap()
            .code()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Test tiers: a bare `cargo test` runs only what needs nothing but Rust; the
/// tests that need an outside tool run when `PUSHGATE_TEST_TIERS` names their
/// tier (comma-separated) or says `all`, as `scripts/test` does. A tier that
/// is off skips its tests with a line on stderr; a tier that is on and whose
/// tool is missing fails with the harness's message.
pub const TIERS: &[(&str, &str)] = &[
    (
        "kafka",
        "Apache Kafka 4.4, kafka-python, HAProxy and openssl (scripts/kafka-setup)",
    ),
    (
        "debezium",
        "PostgreSQL and Kafka Connect with Debezium, besides the kafka tier (scripts/cdc-setup)",
    ),
    ("kinesis", "kinesalite on Node (scripts/kinesis-setup)"),
    (
        "registry",
        "Apicurio Registry and confluent-kafka in tests/registry/.venv (scripts/registry-setup)",
    ),
    (
        "grpc",
        "Python grpcio in tests/grpc/.venv, curl and openssl (scripts/grpc-setup)",
    ),
    (
        "node",
        "Node.js 20 (the toolchain of the machine; scripts/setup checks it)",
    ),
    ("haproxy", "HAProxy (scripts/kafka-setup)"),
];

/// Whether every tier in `needs` is on; if not, says on stderr (past the
/// test harness's capture, so it is seen) which test was skipped and why.
pub fn tiers(needs: &[&str]) -> bool {
    use std::io::Write;
    let wanted = std::env::var("PUSHGATE_TEST_TIERS").unwrap_or_default();
    let on = |tier: &str| {
        wanted
            .split(',')
            .map(str::trim)
            .any(|w| w == "all" || w == tier)
    };
    for tier in needs {
        assert!(
            TIERS.iter().any(|(name, _)| name == tier),
            "unknown test tier `{tier}`"
        );
    }
    let Some(off) = needs.iter().find(|tier| !on(tier)) else {
        return true;
    };
    let what = TIERS.iter().find(|(name, _)| name == off).unwrap().1;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs the `{off}` test tier ({what}); run with PUSHGATE_TEST_TIERS={off} or all"
    );
    false
}
