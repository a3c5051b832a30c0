//! Kafka test harness: Apache Kafka 4.4 (scripts/kafka-broker), the independent kafka-python client, HAProxy.
//!
//! Every test broker is one KRaft node with four listeners: PLAINTEXT, SASL_SSL
//! (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), SSL with a required client
//! certificate, and OAUTH (SASL_SSL with OAUTHBEARER, checked by the broker's
//! unsecured JWS validator). `PUSHGATE_TEST_KAFKA_SECURITY` picks the one
//! pushgate and kafka-python use ([`Mode::from_env`]); topics and ACLs are
//! always administered over PLAINTEXT, whose principal is a super user.
//!
//! A JVM takes seconds to start, so tests that never stop the broker share
//! one per test binary ([`Broker::shared`], unique topic names per test);
//! tests that kill or restart it start their own ([`Broker::start`]). A
//! broker is stopped when its [`Broker`] drops, and in any case within a
//! second after the test binary exits (`--watch-pid`), so a failing or
//! aborted test leaves no JVM behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// scripts/kafka-broker (needs scripts/kafka-setup).
pub fn launcher() -> PathBuf {
    repo().join("scripts/kafka-broker")
}

pub fn tool_path() -> PathBuf {
    repo().join("tests/kafka_common/kafka_tool.py")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How pushgate and kafka-python reach the broker: which listener, which credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plaintext,
    /// SASL_SSL with SCRAM-SHA-512 ([`SCRAM_USER`]).
    Scram512,
    /// SASL_SSL with SCRAM-SHA-256 ([`SCRAM256_USER`]).
    Scram256,
    /// SASL_SSL with PLAIN ([`SCRAM_USER`]'s password).
    Plain,
    /// SSL with the test client certificate (mutual TLS).
    Mtls,
    /// SASL_SSL with OAUTHBEARER: pushgate gets unsecured tokens from the
    /// harness's OIDC token endpoint ([`token_endpoint`]).
    OauthBearer,
}

impl Mode {
    /// `PUSHGATE_TEST_KAFKA_SECURITY`: `plaintext` (the default), `scram-sha-512`
    /// (or `sasl_ssl`), `scram-sha-256`, `plain`, `mtls`, `oauthbearer`.
    pub fn from_env() -> Mode {
        let v = std::env::var("PUSHGATE_TEST_KAFKA_SECURITY").unwrap_or_default();
        match v.to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "plaintext" => Mode::Plaintext,
            "sasl-ssl" | "scram-sha-512" => Mode::Scram512,
            "scram-sha-256" => Mode::Scram256,
            "plain" => Mode::Plain,
            "mtls" => Mode::Mtls,
            "oauthbearer" => Mode::OauthBearer,
            other => panic!(
                "PUSHGATE_TEST_KAFKA_SECURITY={other}: use plaintext, scram-sha-512, scram-sha-256, plain, mtls or oauthbearer"
            ),
        }
    }

    /// The broker listener of this mode (see scripts/kafka-broker).
    pub fn listener(self) -> &'static str {
        match self {
            Mode::Plaintext => "PLAINTEXT",
            Mode::Scram512 | Mode::Scram256 | Mode::Plain => "SASL_SSL",
            Mode::Mtls => "SSL",
            Mode::OauthBearer => "OAUTH",
        }
    }

    pub fn protocol(self) -> &'static str {
        match self {
            Mode::Plaintext => "PLAINTEXT",
            Mode::Mtls => "SSL",
            _ => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        self != Mode::Plaintext
    }

    /// The SASL mechanism and user, if any.
    pub fn sasl(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Mode::Scram512 => Some(("SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD)),
            Mode::Scram256 => Some(("SCRAM-SHA-256", SCRAM256_USER, SCRAM256_PASSWORD)),
            Mode::Plain => Some(("PLAIN", SCRAM_USER, SCRAM_PASSWORD)),
            Mode::OauthBearer => Some(("OAUTHBEARER", OAUTH_SUBJECT, "")),
            _ => None,
        }
    }

    /// The principal the broker sees for pushgate in this mode (for ACLs).
    pub fn principal(self) -> String {
        match self {
            Mode::Plaintext => "User:ANONYMOUS".into(),
            Mode::Mtls => format!("User:CN={CLIENT_CN}"),
            _ => format!("User:{}", self.sasl().unwrap().1),
        }
    }

    /// kafka_tool.py options for this mode.
    pub fn tool_args(self) -> Vec<String> {
        let mut out = vec!["--security-protocol".into(), self.protocol().into()];
        let c = certs();
        let path = |p: &Path| p.display().to_string();
        if self.tls() {
            out.extend(["--ssl-cafile".into(), path(&c.ca)]);
        }
        if self == Mode::Mtls {
            out.extend(["--ssl-certfile".into(), path(&c.client_cert)]);
            out.extend(["--ssl-keyfile".into(), path(&c.client_key)]);
        }
        if let Some((mechanism, user, password)) = self.sasl() {
            out.extend(["--sasl-mechanism".into(), mechanism.into()]);
            out.extend(["--sasl-username".into(), user.into()]);
            out.extend(["--sasl-password".into(), password.into()]);
        }
        out
    }

    /// librdkafka client settings for this mode, for a test's own producer.
    pub fn rdkafka(self, config: &mut rdkafka::ClientConfig) {
        let c = certs();
        config.set("security.protocol", self.protocol());
        if self.tls() {
            config.set("ssl.ca.location", c.ca.display().to_string());
        }
        if self == Mode::Mtls {
            config.set(
                "ssl.certificate.location",
                c.client_cert.display().to_string(),
            );
            config.set("ssl.key.location", c.client_key.display().to_string());
        }
        match self.sasl() {
            Some(("OAUTHBEARER", _, _)) => {
                config
                    .set("sasl.mechanisms", "OAUTHBEARER")
                    .set("sasl.oauthbearer.method", "oidc")
                    .set(
                        "sasl.oauthbearer.token.endpoint.url",
                        format!("http://{}/token", token_endpoint()),
                    )
                    .set("sasl.oauthbearer.client.id", OAUTH_SUBJECT)
                    .set("sasl.oauthbearer.client.secret", "oauth-test-secret");
            }
            Some((mechanism, user, password)) => {
                config
                    .set("sasl.mechanisms", mechanism)
                    .set("sasl.username", user)
                    .set("sasl.password", password);
            }
            None => {}
        }
    }

    /// pushgate's `[kafka.tls]`/`[kafka.sasl]` for this mode (TOML, after `[kafka]`).
    pub fn pushgate_toml(self) -> String {
        let c = certs();
        let mut out = String::new();
        if self.tls() {
            out.push_str(&format!("[kafka.tls]\nca_file = \"{}\"\n", c.ca.display()));
        }
        if self == Mode::Mtls {
            out.push_str(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                c.client_cert.display(),
                c.client_key.display()
            ));
        }
        match self.sasl() {
            Some(("OAUTHBEARER", _, _)) => out.push_str(&format!(
                "[kafka.sasl]\nmechanism = \"OAUTHBEARER\"\noauth_token_endpoint = \"http://{}/token\"\noauth_client_id = \"{OAUTH_SUBJECT}\"\noauth_client_secret = \"oauth-test-secret\"\n",
                token_endpoint()
            )),
            Some((mechanism, user, password)) => out.push_str(&format!(
                "[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{user}\"\npassword = \"{password}\"\n"
            )),
            None => {}
        }
        out
    }
}

/// The SASL users of every test broker: SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN each.
pub const SCRAM_USER: &str = "pushgate-test";
pub const SCRAM_PASSWORD: &str = "Scram-512-test-pa55word";
pub const SCRAM256_USER: &str = "pushgate-test-256";
pub const SCRAM256_PASSWORD: &str = "Scram-256-test-pa55word";
/// The `sub` of the OAUTHBEARER tokens: the broker's principal `User:pushgate-oauth`.
pub const OAUTH_SUBJECT: &str = "pushgate-oauth";
/// The client certificate's CN: the broker's principal `User:CN=pushgate-client`.
pub const CLIENT_CN: &str = "pushgate-client";

/// Test PKI made once per test binary with the openssl CLI: a CA, a server
/// certificate for 127.0.0.1/localhost, a client certificate, a second CA that
/// signed nothing the brokers trust and a client certificate of its, and an
/// expired client certificate of the test CA.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    /// Signed by `other_ca`: the broker does not trust it.
    pub untrusted_client_cert: PathBuf,
    pub untrusted_client_key: PathBuf,
    /// Signed by the test CA, valid from 2020-01-01 to 2020-01-02.
    pub expired_client_cert: PathBuf,
    pub expired_client_key: PathBuf,
}

pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(make_certs)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found: run scripts/kafka-setup");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (name, cn) in [("ca", "pushgate test CA"), ("other-ca", "untrusted CA")] {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "3", "-subj", &subj]);
        openssl(d, &args);
    }
    let client_cn = format!("/CN={CLIENT_CN}");
    let leaves = [
        (
            "server",
            "/CN=localhost",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", &client_cn, "ca", "extendedKeyUsage=clientAuth\n"),
        (
            "untrusted-client",
            &client_cn,
            "other-ca",
            "extendedKeyUsage=clientAuth\n",
        ),
    ];
    for (name, subj, ca, ext) in leaves {
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            d.join(&extfile),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
        openssl(d, &args);
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "3",
                "-extfile",
                &extfile,
            ],
        );
    }
    // An expired certificate: `openssl x509` (3.0) cannot back-date, `openssl ca` can.
    std::fs::create_dir_all(d.join("ca-db")).unwrap();
    std::fs::write(d.join("ca-db/index.txt"), "").unwrap();
    std::fs::write(d.join("ca-db/serial"), "1000\n").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndir = ca-db\ndatabase = ca-db/index.txt\nserial = ca-db/serial\n\
         new_certs_dir = ca-db\ncertificate = ca.pem\nprivate_key = ca.key\ndefault_md = sha256\n\
         policy = any\ncopy_extensions = none\nunique_subject = no\n[any]\ncommonName = supplied\n\
         [client]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature,keyEncipherment\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "expired-client.key",
        "-out",
        "expired-client.csr",
        "-subj",
        &client_cn,
    ]);
    openssl(d, &args);
    openssl(
        d,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-extensions",
            "client",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-in",
            "expired-client.csr",
            "-out",
            "expired-client.pem",
            "-notext",
        ],
    );
    Certs {
        ca: d.join("ca.pem"),
        server_cert: d.join("server.pem"),
        server_key: d.join("server.key"),
        client_cert: d.join("client.pem"),
        client_key: d.join("client.key"),
        other_ca: d.join("other-ca.pem"),
        untrusted_client_cert: d.join("untrusted-client.pem"),
        untrusted_client_key: d.join("untrusted-client.key"),
        expired_client_cert: d.join("expired-client.pem"),
        expired_client_key: d.join("expired-client.key"),
        dir,
    }
}

/// An OIDC token endpoint on 127.0.0.1 (one thread, for the whole test binary)
/// that answers every POST with an unsecured JWS (`alg: none`, no signature)
/// whose `sub` is [`OAUTH_SUBJECT`]: what the test brokers' unsecured
/// validator accepts. Returns its address.
pub fn token_endpoint() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut sock in listener.incoming().flatten() {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                // Reads the request head and body (small; bounded by the timeout).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match sock.read(&mut chunk) {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = serde_json::json!({
                    "access_token": unsecured_jws(OAUTH_SUBJECT, 3600),
                    "token_type": "bearer",
                    "expires_in": 3600
                })
                .to_string();
                let _ = write!(
                    sock,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    })
}

/// An unsecured JWS (RFC 7515 with `alg: none`, empty signature) for `sub`, valid `secs`.
pub fn unsecured_jws(sub: &str, secs: u64) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(serde_json::json!({"sub": sub, "iat": now, "exp": now + secs}).to_string())
    )
}

/// One Apache Kafka node started by scripts/kafka-broker in a temporary
/// directory: its listeners, its storage (kept across [`Broker::restart`]).
/// Clones ([`Broker::as_mode`]) are the same node reached another way; it
/// stops when the last one drops.
#[derive(Clone)]
pub struct Broker {
    node: std::sync::Arc<Node>,
    /// How [`Broker::addr`], [`produce`], [`dump`]... reach it.
    pub mode: Mode,
}

struct Node {
    dir: tempfile::TempDir,
    listeners: BTreeMap<String, String>,
}

/// Options of every test broker: all listeners, the SASL users.
fn base_args() -> Vec<String> {
    let c = certs();
    let mut args: Vec<String> = vec![
        "--listeners".into(),
        "sasl_ssl,ssl,oauth".into(),
        "--tls-dir".into(),
        c.dir.path().display().to_string(),
        "--watch-pid".into(),
        std::process::id().to_string(),
    ];
    for (user, password) in [
        (SCRAM_USER, SCRAM_PASSWORD),
        (SCRAM256_USER, SCRAM256_PASSWORD),
    ] {
        args.extend(["--user".into(), format!("{user}:{password}")]);
    }
    args
}

fn parse_listeners(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let (name, addr) = l.split_once(' ')?;
            Some((name.to_owned(), addr.trim().to_owned()))
        })
        .collect()
}

impl Broker {
    /// This test binary's broker, started by the first test that asks; never
    /// killed nor restarted (tests that do so [`Broker::start`] their own).
    /// Tests sharing it use topic names of their own.
    pub fn shared() -> Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| Broker::shared_with(&[])).clone()
    }

    /// Starts a broker with more scripts/kafka-broker options, blocking (for a
    /// binary's own `OnceLock`, like [`Broker::shared`]): it is never dropped,
    /// and stops when the test binary exits.
    pub fn shared_with(extra: &[&str]) -> Broker {
        // Blocking: the first caller's runtime has nothing else to do yet.
        let dir = tempfile::Builder::new()
            .prefix("kafka-shared-")
            .tempdir()
            .unwrap();
        let t = std::time::Instant::now();
        let out = std::process::Command::new(launcher())
            .arg("start")
            .arg(dir.path())
            .args(base_args())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/kafka-broker");
        assert!(
            out.status.success(),
            "kafka-broker start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("shared Kafka broker started in {:?}", t.elapsed());
        Broker::new(dir, &out.stdout)
    }

    /// A broker of this test's own (killable, restartable), reached as
    /// `PUSHGATE_TEST_KAFKA_SECURITY` says.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Broker::start`] with more scripts/kafka-broker options
    /// (`--authorizer`, `--prop k=v`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("kafka-").tempdir().unwrap();
        let out = Command::new(launcher())
            .arg("start")
            .arg(dir.path())
            .args(base_args())
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("scripts/kafka-broker");
        assert!(
            out.status.success(),
            "kafka-broker start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Broker::new(dir, &out.stdout)
    }

    fn new(dir: tempfile::TempDir, stdout: &[u8]) -> Self {
        Broker {
            node: std::sync::Arc::new(Node {
                dir,
                listeners: parse_listeners(stdout),
            }),
            mode: Mode::from_env(),
        }
    }

    /// The same node, reached as `mode` says by [`Broker::addr`], [`produce`], [`dump`]...
    pub fn as_mode(&self, mode: Mode) -> Broker {
        Broker {
            node: self.node.clone(),
            mode,
        }
    }

    /// The broker's directory (server.properties, broker.log, data/).
    pub fn dir(&self) -> &Path {
        self.node.dir.path()
    }

    /// The address clients of [`Broker::mode`] use.
    pub fn addr(&self) -> String {
        self.addr_for(self.mode)
    }

    pub fn addr_for(&self, mode: Mode) -> String {
        self.node
            .listeners
            .get(mode.listener())
            .unwrap_or_else(|| panic!("no {} listener", mode.listener()))
            .clone()
    }

    /// The PLAINTEXT address: the admin's (a super user where an authorizer runs).
    pub fn admin_addr(&self) -> String {
        self.addr_for(Mode::Plaintext)
    }

    /// The broker's own log (server.log lines), for tests that check what it refused.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("broker.log")).unwrap_or_default()
    }

    async fn launch(&self, what: &str) {
        let out = Command::new(launcher())
            .arg(what)
            .arg(self.dir())
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("scripts/kafka-broker");
        assert!(
            out.status.success(),
            "kafka-broker {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: the broker vanishes mid-request.
    pub async fn kill(&mut self) {
        self.launch("kill").await;
    }

    /// Starts again on the same ports and storage (after [`Broker::kill`], or kills first).
    pub async fn restart(&mut self) {
        self.launch("kill").await;
        self.launch("start").await;
    }

    /// Runs the kafka-python tool over PLAINTEXT (topics, partitions, ACLs).
    pub async fn admin(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        let addr = self.admin_addr();
        all.extend(["--brokers", &addr, "--timeout", "60"]);
        tool_as(Mode::Plaintext, &all).await
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, config: &[&str]) {
        let partitions = partitions.to_string();
        let mut args = vec!["create", "--topic", name, "--partitions", &partitions];
        for c in config {
            args.extend(["--config", c]);
        }
        let out = self.admin(&args).await;
        assert!(out.contains("created"), "{out}");
    }

    /// Sets a topic's configs; the ones not given return to the broker's defaults.
    pub async fn alter_topic(&self, name: &str, config: &[&str]) {
        let mut args = vec!["alter", "--topic", name];
        for c in config {
            args.extend(["--config", c]);
        }
        let out = self.admin(&args).await;
        assert!(out.contains("altered"), "{out}");
    }

    pub async fn delete_topic(&self, name: &str) {
        let out = self.admin(&["delete", "--topic", name]).await;
        assert!(out.contains("deleted"), "{out}");
    }

    /// `allow`, `deny` or `remove` one ACL of `principal` for `operation` on topic `topic`.
    pub async fn acl(&self, what: &str, principal: &str, operation: &str, topic: &str) {
        let out = self
            .admin(&[
                "acl",
                "--acl",
                what,
                "--principal",
                principal,
                "--operation",
                operation,
                "--topic",
                topic,
            ])
            .await;
        assert!(out.contains(&format!("acl {what}")), "{out}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Before the directory goes: SIGKILL and wait (the shared broker is never dropped,
        // its --watch-pid watchdog stops it when the test binary exits).
        let _ = std::process::Command::new(launcher())
            .arg("kill")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the kafka-python tool against brokers of the `PUSHGATE_TEST_KAFKA_SECURITY` mode.
pub async fn tool(args: &[&str]) -> String {
    tool_as(Mode::from_env(), args).await
}

/// Runs `scripts/<args[0]> args[1..]` and returns its stdout; fails the test with its stderr.
pub async fn script(args: &[&str], within: Duration) -> String {
    let out = tokio::time::timeout(
        within,
        Command::new(repo().join("scripts").join(args[0]))
            .args(&args[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{args:?} took more than {within:?}"))
    .expect("spawn a script");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the kafka-python tool with `mode`'s security options and returns its stdout.
pub async fn tool_as(mode: Mode, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(tool_path())
        .args(args)
        .args(mode.tool_args())
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "kafka_tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The last lines each `spawn_tool` child wrote to stderr, by process id, for
/// `wait_exit` to show when the tool fails.
fn tool_stderr() -> &'static std::sync::Mutex<std::collections::HashMap<u32, String>> {
    static LOGS: OnceLock<std::sync::Mutex<std::collections::HashMap<u32, String>>> =
        OnceLock::new();
    LOGS.get_or_init(Default::default)
}

/// Waits (bounded) for a `spawn_tool` child to exit, and checks it succeeded.
pub async fn wait_exit(child: &mut Child, within: Duration) {
    let id = child.id().unwrap_or_default();
    let stderr = || {
        tool_stderr()
            .lock()
            .unwrap()
            .remove(&id)
            .unwrap_or_default()
    };
    let Ok(status) = tokio::time::timeout(within, child.wait()).await else {
        panic!(
            "load generator not finished in {within:?}; its last lines: {}",
            stderr()
        );
    };
    let status = status.unwrap();
    // Let the drain task take the last lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stderr = stderr();
    assert!(
        status.success(),
        "load generator failed ({status}): {stderr}"
    );
}

/// Starts the tool in the background (a load generator).
pub fn spawn_tool(args: &[&str]) -> Child {
    let mut child = Command::new("python3")
        .arg(tool_path())
        .args(args)
        .args(Mode::from_env().tool_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let id = child.id().unwrap_or_default();
    let stderr = child.stderr.take().unwrap();
    // Drained as it comes (a broker outage makes many retry lines); the last 4 KiB kept.
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut logs = tool_stderr().lock().unwrap();
            let kept = logs.entry(id).or_default();
            kept.push_str(&line);
            kept.push('\n');
            if kept.len() > 4096 {
                let cut = kept.len() - 4096;
                let cut = (cut..kept.len())
                    .find(|i| kept.is_char_boundary(*i))
                    .unwrap_or(0);
                kept.drain(..cut);
            }
        }
    });
    child
}

/// Produces `count` records (seq `start..`) with kafka-python, waiting for each ack.
pub async fn produce(broker: &Broker, topic: &str, start: u64, count: u64) {
    produce_with(broker, topic, start, count, None).await;
}

/// `produce`, with `keys` spreading the records over keys k0..k{keys-1}
/// (kafka_tool's default keys otherwise).
async fn produce_with(broker: &Broker, topic: &str, start: u64, count: u64, keys: Option<u32>) {
    let (start, count_text) = (start.to_string(), count.to_string());
    let addr = broker.addr();
    let mut args = vec![
        "produce",
        "--brokers",
        &addr,
        "--topic",
        topic,
        "--start",
        &start,
        "--count",
        &count_text,
        "--wait",
    ];
    let keys = keys.map(|k| k.to_string());
    if let Some(keys) = &keys {
        args.extend(["--keys", keys]);
    }
    let out = tool_as(broker.mode, &args).await;
    assert!(out.contains(&format!("acked {count}")), "{out}");
}

/// One record as the independent client sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Logged {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<String>,
    pub seq: Option<u64>,
}

/// Every record of `topic`, read back by kafka-python.
pub async fn dump(broker: &Broker, topic: &str) -> Vec<Logged> {
    let out = tool_as(
        broker.mode,
        &["dump", "--brokers", &broker.addr(), "--topic", topic],
    )
    .await;
    assert!(out.trim_end().ends_with("end"), "{out}");
    let mut all: Vec<Logged> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Logged {
                partition: v["p"].as_u64().unwrap() as u32,
                offset: v["o"].as_u64().unwrap(),
                key: v["key"].as_str().map(str::to_owned),
                seq: v["seq"].as_u64(),
            }
        })
        .collect();
    all.sort();
    all
}

/// Produces `records` with kafka-python's `raw` subcommand (one JSON object per
/// record: `key`/`value` sent as JSON text, `key_raw`/`value_raw` as exact
/// bytes, a null value as a tombstone, `headers`), waiting for each ack.
/// Returns where each record landed, in order.
pub async fn produce_raw(
    broker: &Broker,
    topic: &str,
    records: &[serde_json::Value],
) -> Vec<(u32, u64)> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("python3")
        .arg(tool_path())
        .args(["raw", "--brokers", &broker.addr(), "--topic", topic])
        .args(broker.mode.tool_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = String::new();
    for r in records {
        lines.push_str(&r.to_string());
        lines.push('\n');
    }
    stdin.write_all(lines.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kafka_tool raw did not finish in time")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && stdout.contains(&format!("acked {}", records.len())),
        "kafka_tool raw failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["p"].as_u64().unwrap() as u32, v["o"].as_u64().unwrap())
        })
        .collect()
}

/// Every record of `topic` as kafka-python reads it (up to the end offsets),
/// in (partition, offset) order: `{"p","o","key","value","headers"}` (value as
/// text, null for a tombstone).
pub async fn dump_raw(broker: &Broker, topic: &str) -> Vec<serde_json::Value> {
    let out = tool_as(
        broker.mode,
        &["dump", "--brokers", &broker.addr(), "--topic", topic],
    )
    .await;
    assert!(out.trim_end().ends_with("end"), "{out}");
    let mut all: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    all.sort_by_key(|v| (v["p"].as_u64(), v["o"].as_u64()));
    all
}

pub async fn low_watermarks(broker: &Broker, topic: &str) -> Vec<u64> {
    let out = tool_as(
        broker.mode,
        &["low", "--brokers", &broker.addr(), "--topic", topic],
    )
    .await;
    serde_json::from_str(out.trim()).unwrap()
}

/// A pushgate config for the Kafka source, secured as `PUSHGATE_TEST_KAFKA_SECURITY`
/// says. `topics`: (name, ring_records).
pub fn kafka_config(brokers: &str, topics: &[(&str, usize)], extra: &str) -> String {
    kafka_config_as(Mode::from_env(), brokers, topics, extra)
}

/// [`kafka_config`] for brokers reached as `mode` says.
pub fn kafka_config_as(mode: Mode, brokers: &str, topics: &[(&str, usize)], extra: &str) -> String {
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:0"
static_dir = ""
shutdown_grace = "3s"
[source]
kind = "kafka"
warm_start_records = 1000
[auth]
anonymous_subscribe = true
anonymous_publish = true
{extra}
[kafka]
brokers = "{brokers}"
metadata_refresh_interval = "500ms"
catchup_timeout = "5s"
startup_timeout = "10s"
{security}"#,
        security = mode.pushgate_toml(),
    );
    for (name, ring) in topics {
        out.push_str(&format!(
            "[[topics]]\nname = \"{name}\"\nring_records = {ring}\n"
        ));
    }
    out
}

/// HAProxy in front of `backends`, long idle timeouts, health checks on /readyz.
pub struct HaProxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    pub async fn start(backends: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = haproxy_config(port, backends);
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy not found: run scripts/kafka-setup");
        wait_port(port).await;
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

/// The shipped deploy/haproxy.cfg itself, on test ports: its frontend bound to
/// 127.0.0.1:`port`, its servers replaced by `backends`, health checks every 200 ms.
pub fn haproxy_config(port: u16, backends: &[SocketAddr]) -> String {
    let shipped = include_str!("../../deploy/haproxy.cfg");
    let mut cfg = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("bind ") {
            cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if trimmed.starts_with("server ") {
            continue;
        } else if trimmed.starts_with("default-server ") {
            cfg.push_str(&line.replace("inter 1s", "inter 200ms"));
            cfg.push('\n');
        } else if trimmed.starts_with("maxconn ") {
            cfg.push_str("    maxconn 4096\n");
        } else {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    assert!(
        cfg.contains("backend nodes\n"),
        "deploy/haproxy.cfg has a `nodes` backend"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server n{i} {b} check\n"));
    }
    cfg
}

/// (partition, offset) -> count: what a client received, for 0-lost/0-dup checks.
pub fn tally(positions: &[(u32, u64)]) -> BTreeMap<(u32, u64), usize> {
    let mut out = BTreeMap::new();
    for p in positions {
        *out.entry(*p).or_insert(0) += 1;
    }
    out
}

/// Reads one metric's value (sum over its label sets) from a node's /metrics.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Produces `count` records (seq `start..`) over keys k0..k{keys-1}, waiting for each ack.
pub async fn produce_keys(broker: &Broker, topic: &str, start: u64, count: u64, keys: u32) {
    produce_with(broker, topic, start, count, Some(keys)).await;
}

/// Grows `topic` to `partitions` while the broker runs (CreatePartitions).
pub async fn add_partitions(broker: &Broker, topic: &str, partitions: u32) {
    let out = broker
        .admin(&[
            "add-partitions",
            "--topic",
            topic,
            "--count",
            &partitions.to_string(),
        ])
        .await;
    assert!(out.contains("added"), "{out}");
}
