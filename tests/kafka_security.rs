//! Kafka security end to end against Apache Kafka's own listeners: mutual TLS,
//! SASL_SSL (SCRAM-SHA-512/256), OAUTHBEARER, ACLs, transactions and
//! compaction, and start-up failures of the real binary.
//!
//! Records are produced and read back with kafka-python (no code shared with
//! librdkafka) over the same TLS/SASL, and received through pushgate's
//! WebSocket. Failure tests check the exit code, the time to exit and the one
//! error line naming the cause; every test checks the secrets never show in
//! stderr nor /metrics. Needs `scripts/kafka-setup`.

mod common;
mod kafka_common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kafka_common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The real binary with a config file and extra environment; stderr is kept.
struct Node {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pushgate.toml");
        std::fs::write(&file, config).unwrap();
        let started = Instant::now();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg("--config")
            .arg(&file)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pushgate");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let keep = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let line = strip_ansi(&line);
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let (Some(tx), Ok(addr)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
                let mut all = keep.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let addr = tokio::time::timeout(WAIT, rx)
            .await
            .expect("pushgate did not start listening")
            .expect("pushgate exited before listening");
        Self {
            child,
            addr,
            stderr,
            started,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
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
            assert!(Instant::now() < deadline, "never ready:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit; its code and how long it ran.
    async fn exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {within:?}:\n{}", self.stderr()))
            .unwrap();
        // Let the reader task take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.code(), self.started.elapsed())
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
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

/// A pushgate config for `broker` with the given `[kafka.tls]`/`[kafka.sasl]` TOML.
fn config(brokers: &str, topics: &[(&str, usize)], extra: &str, security: &str) -> String {
    format!(
        "{}{security}",
        kafka_config_as(Mode::Plaintext, brokers, topics, extra)
    )
}

fn tls_toml(ca: &std::path::Path) -> String {
    format!("[kafka.tls]\nca_file = \"{}\"\n", ca.display())
}

fn scram_toml(mechanism: &str, user: &str) -> String {
    format!("[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{user}\"\n")
}

fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(!text.contains(s), "a secret appears in {what}:\n{text}");
    }
}

/// The ERROR lines of a run; all must name the cause.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("Error:"))
        .collect()
}

/// A start-up that must fail: exits non-zero within `startup_timeout` (plus
/// process start and drain), with `cause` in every error line, no panic.
async fn assert_start_fails(config: &str, env: &[(&str, &str)], cause: &str, secrets: &[&str]) {
    let mut node = Node::start(config, env).await;
    let (code, took) = node.exit(Duration::from_secs(30)).await;
    let stderr = node.stderr();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}:\n{stderr}"
    );
    assert!(
        took < Duration::from_secs(4 + 3),
        "took {took:?} with startup_timeout 4s:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors = error_lines(&stderr);
    assert!(!errors.is_empty(), "{stderr}");
    for line in &errors {
        assert!(line.contains(cause), "`{cause}` not in: {line}\n{stderr}");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("Error: cannot start the Kafka source: ") && l.contains(cause)),
        "{stderr}"
    );
    assert_no_secret(&stderr, secrets, "stderr");
    eprintln!(
        "{cause}: exit {code:?} after {took:?}: {}",
        errors.last().unwrap()
    );
}

const STARTUP_4S: (&str, &str) = ("startup_timeout = \"10s\"", "startup_timeout = \"4s\"");

#[tokio::test]
async fn mutual_tls_end_to_end() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared().as_mode(Mode::Mtls);
    broker.create_topic("mtls", 2, &[]).await;
    let c = certs();
    let security = format!(
        "{}cert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls_toml(&c.ca),
        c.client_cert.display(),
        c.client_key.display()
    );
    let node = Node::start(&config(&broker.addr(), &[("mtls", 64)], "", &security), &[]).await;
    node.wait_ready().await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "mtls", "snapshot": false}))
        .await;

    // kafka-python over SSL with the client certificate, then pushgate's own producer.
    produce(&broker, "mtls", 0, 20).await;
    let http = reqwest::Client::new();
    for seq in 20..25u64 {
        publish(&http, node.addr, "mtls", "k1", json!({"seq": seq})).await;
    }
    let mut seqs: Vec<u64> = ws.records(25).await.iter().map(seq).collect();
    seqs.sort();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    let logged = dump(&broker, "mtls").await;
    assert_eq!(
        logged.len(),
        25,
        "kafka-python reads back what pushgate published"
    );

    // The broker requires a client certificate: without one there is no session.
    let without = config(&broker.addr(), &[("mtls", 64)], "", &tls_toml(&c.ca))
        .replace(STARTUP_4S.0, STARTUP_4S.1);
    assert_start_fails(&without, &[], "client certificate refused", &[]).await;

    // An expired certificate of the trusted CA, and a certificate of a CA the
    // broker does not trust: refused, with one line naming the cause.
    for (cert, key) in [
        (&c.expired_client_cert, &c.expired_client_key),
        (&c.untrusted_client_cert, &c.untrusted_client_key),
    ] {
        let security = format!(
            "{}cert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls_toml(&c.ca),
            cert.display(),
            key.display()
        );
        let cfg = config(&broker.addr(), &[("mtls", 64)], "", &security)
            .replace(STARTUP_4S.0, STARTUP_4S.1);
        assert_start_fails(&cfg, &[], "client certificate refused", &[]).await;
    }
}

#[tokio::test]
async fn sasl_ssl_scram_for_every_client_with_the_password_from_the_environment() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared().as_mode(Mode::Scram512);
    broker.create_topic("scram", 2, &[]).await;
    let c = certs();
    let env = [("PUSHGATE__KAFKA__SASL__PASSWORD", SCRAM_PASSWORD)];
    // Tiny rings and warm start: a resume must be read from Kafka (catch-up
    // readers); small records limit: a dead-letter record (second producer path).
    let extra_kafka = "max_record_bytes = 200\ndead_letter_topic = \"scram-dlq\"\n";
    let cfg = || {
        config(&broker.addr(), &[("scram", 4)], "", "")
            .replace("warm_start_records = 1000", "warm_start_records = 2")
            .replace(
                "startup_timeout = \"10s\"\n",
                &format!("startup_timeout = \"10s\"\n{extra_kafka}"),
            )
            + &tls_toml(&c.ca)
            + &scram_toml("SCRAM-SHA-512", SCRAM_USER)
    };
    broker.create_topic("scram-dlq", 1, &[]).await;
    let a = Node::start(&cfg(), &env).await;
    a.wait_ready().await;
    let mut ws = WsClient::connect(a.addr).await;
    ws.subscribe(json!({"topic": "scram", "snapshot": false}))
        .await;
    produce(&broker, "scram", 0, 10).await;
    let seen = ws.records(10).await;
    let cursor = seen[9]["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    let http = reqwest::Client::new();
    for seq in 10..30u64 {
        publish(
            &http,
            a.addr,
            "scram",
            &format!("k{}", seq % 5),
            json!({"seq": seq}),
        )
        .await;
    }
    // Too large for max_record_bytes: skipped and copied to the dead-letter topic.
    let big = "x".repeat(400);
    publish(
        &http,
        a.addr,
        "scram",
        "big",
        json!({"seq": 30, "pad": big}),
    )
    .await;

    // A second node resumes the old cursor from Kafka itself (catch-up reader).
    let b = Node::start(&cfg(), &env).await;
    b.wait_ready().await;
    let mut ws = WsClient::connect(b.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "scram", "cursor": cursor}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut seqs: Vec<u64> = ws.records(20).await.iter().map(seq).collect();
    seqs.sort();
    assert_eq!(seqs, (10..30).collect::<Vec<_>>(), "0 lost, 0 duplicated");
    assert!(metric(b.addr, "pushgate_kafka_catchup_reads_total").await >= 1.0);

    // kafka-python over SASL_SSL sees pushgate's records and the dead letter.
    assert_eq!(dump(&broker, "scram").await.len(), 31);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dump(&broker, "scram-dlq").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no dead-letter record:\n{}\n{}",
            a.stderr(),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SCRAM-SHA-256 too, and TLS with no ca_file: OpenSSL's default verify
    // paths (Debian's ca-certificates), pointed at the test CA here through
    // OpenSSL's own SSL_CERT_FILE rather than by changing the machine's trust store.
    let sha256 = config(&broker.addr(), &[("scram", 64)], "", "")
        + "[kafka.tls]\nenabled = true\n"
        + &scram_toml("SCRAM-SHA-256", SCRAM256_USER);
    let ca = c.ca.display().to_string();
    let n256 = Node::start(
        &sha256,
        &[
            ("PUSHGATE__KAFKA__SASL__PASSWORD", SCRAM256_PASSWORD),
            ("SSL_CERT_FILE", &ca),
        ],
    )
    .await;
    n256.wait_ready().await;

    for node in [&a, &b, &n256] {
        assert_no_secret(
            &node.metrics().await,
            &[SCRAM_PASSWORD, SCRAM256_PASSWORD],
            "/metrics",
        );
        assert_no_secret(
            &node.stderr(),
            &[SCRAM_PASSWORD, SCRAM256_PASSWORD],
            "stderr",
        );
        assert!(error_lines(&node.stderr()).is_empty(), "{}", node.stderr());
    }
}

#[tokio::test]
async fn a_wrong_password_stops_start_up_with_authentication_failed() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared().as_mode(Mode::Scram512);
    broker.create_topic("wrong-password", 1, &[]).await;
    let wrong = "Wrong-pa55word-for-the-test";
    let cfg = config(&broker.addr(), &[("wrong-password", 64)], "", "")
        .replace(STARTUP_4S.0, STARTUP_4S.1)
        + &tls_toml(&certs().ca)
        + &scram_toml("SCRAM-SHA-512", SCRAM_USER);
    assert_start_fails(
        &cfg,
        &[("PUSHGATE__KAFKA__SASL__PASSWORD", wrong)],
        "authentication failed",
        &[wrong, SCRAM_PASSWORD],
    )
    .await;
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_broker_stops_start_up_with_certificate_not_trusted() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared().as_mode(Mode::Scram512);
    let cfg = config(&broker.addr(), &[("t", 64)], "", "").replace(STARTUP_4S.0, STARTUP_4S.1)
        + &tls_toml(&certs().other_ca)
        + &scram_toml("SCRAM-SHA-512", SCRAM_USER);
    assert_start_fails(
        &cfg,
        &[("PUSHGATE__KAFKA__SASL__PASSWORD", SCRAM_PASSWORD)],
        "certificate not trusted",
        &[SCRAM_PASSWORD],
    )
    .await;
}

#[tokio::test]
async fn nothing_listening_stops_start_up_with_no_broker_reachable() {
    if !tiers(&["kafka"]) {
        return;
    }
    let port = free_port();
    let cfg = config(&format!("127.0.0.1:{port}"), &[("t", 64)], "", "")
        .replace(STARTUP_4S.0, STARTUP_4S.1)
        + &tls_toml(&certs().ca)
        + &scram_toml("SCRAM-SHA-512", SCRAM_USER);
    assert_start_fails(
        &cfg,
        &[("PUSHGATE__KAFKA__SASL__PASSWORD", SCRAM_PASSWORD)],
        "no broker reachable",
        &[SCRAM_PASSWORD],
    )
    .await;
}

/// One HTTP request as a tiny OIDC token endpoint saw it.
#[derive(Debug, Default, Clone)]
struct TokenRequest {
    head: String,
    body: String,
}

/// A token endpoint on 127.0.0.1 that records each request and answers with
/// an unsecured JWS (`alg: none`, empty signature) for `sub` "pushgate".
async fn recording_token_endpoint() -> (SocketAddr, Arc<Mutex<Vec<TokenRequest>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = Arc::clone(&keep);
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600;
            let jwt = format!(
                "{}.{}.",
                b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(json!({"sub": "pushgate", "exp": exp, "iat": exp - 3600}).to_string()),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body (bounded).
                let req = loop {
                    let n =
                        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len || buf.len() > 65536 {
                            break TokenRequest {
                                head,
                                body: text[end + 4..].to_owned(),
                            };
                        }
                    }
                };
                keep.lock().unwrap().push(req);
                let body = json!({"access_token": jwt, "token_type": "bearer", "expires_in": 3600})
                    .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

/// OAUTHBEARER/OIDC end to end: pushgate asks the token endpoint for a token
/// with the client credentials, and the broker's OAUTH listener (its unsecured
/// JWS validator: `alg: none`, no signature, a `sub` and an `exp`) accepts it.
#[tokio::test]
async fn oauthbearer_fetches_a_token_from_the_oidc_endpoint_and_the_broker_accepts_it() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared().as_mode(Mode::OauthBearer);
    broker.create_topic("oauth", 1, &[]).await;
    let (endpoint, seen) = recording_token_endpoint().await;
    let secret = "oidc-client-secret-for-the-test";
    let cfg = config(&broker.addr(), &[("oauth", 64)], "", "")
        + &tls_toml(&certs().ca)
        + &format!(
            "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\noauth_token_endpoint = \"http://{endpoint}/token\"\noauth_client_id = \"pushgate-client\"\noauth_scope = \"kafka.read kafka.write\"\n"
        );
    let node = Node::start(
        &cfg,
        &[("PUSHGATE__KAFKA__SASL__OAUTH_CLIENT_SECRET", secret)],
    )
    .await;
    node.wait_ready().await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "oauth", "snapshot": false}))
        .await;
    produce(&broker, "oauth", 0, 5).await;
    let seqs: Vec<u64> = ws.records(5).await.iter().map(seq).collect();
    assert_eq!(seqs, (0..5).collect::<Vec<_>>());

    let stderr = node.stderr();
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no token request:\n{stderr}");
    let r = &requests[0];
    assert!(r.head.starts_with("POST /token "), "{r:?}");
    assert!(r.body.contains("grant_type=client_credentials"), "{r:?}");
    assert!(r.body.contains("scope=kafka.read"), "{r:?}");
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("pushgate-client:{secret}"));
    assert!(
        r.head.lines().any(
            |l| l.to_ascii_lowercase().starts_with("authorization: basic") && l.ends_with(&basic)
        ),
        "client credentials as HTTP Basic: {r:?}"
    );
    assert_no_secret(&stderr, &[secret, &basic], "stderr");
    assert_no_secret(&node.metrics().await, &[secret, &basic], "/metrics");
    assert!(error_lines(&stderr).is_empty(), "{stderr}");
}
