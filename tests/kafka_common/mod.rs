//! Kafka test harness: a real tansu broker, the independent kafka-python client, HAProxy.
//!
//! `PUSHGATE_TEST_KAFKA_SECURITY=sasl_ssl` runs every broker with SCRAM behind
//! a TLS terminator (HAProxy) and makes pushgate and kafka-python use SASL_SSL.
//!
//! Everything is started on free 127.0.0.1 ports and stopped on drop
//! (`kill_on_drop`), so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The tansu binary: `$TANSU`, then PATH, then ~/.cargo/bin (scripts/kafka-setup installs it).
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("tansu"))
        .chain(std::env::var("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu")))
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("tansu not found: run scripts/kafka-setup")
}

pub fn tool_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_common/kafka_tool.py")
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

/// How a test broker is reached. `PUSHGATE_TEST_KAFKA_SECURITY=sasl_ssl`
/// makes every [`Broker::memory`]/[`Broker::sqlite`] a SCRAM broker behind a
/// TLS terminator, and [`kafka_config`] and the tool use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// A TLS terminator (HAProxy) in front of the broker; clients use TLS.
    pub tls: bool,
    /// The terminator requires a client certificate signed by the test CA.
    pub mtls: bool,
    /// tansu requires SASL/SCRAM (`--authentication`).
    pub sasl: bool,
}

impl Mode {
    pub const PLAINTEXT: Mode = Mode {
        tls: false,
        mtls: false,
        sasl: false,
    };
    pub const SASL_SSL: Mode = Mode {
        tls: true,
        mtls: false,
        sasl: true,
    };
    /// SSL with a client certificate, no SASL.
    pub const MTLS: Mode = Mode {
        tls: true,
        mtls: true,
        sasl: false,
    };

    /// The mode chosen by `PUSHGATE_TEST_KAFKA_SECURITY` (`plaintext`, the default, or `sasl_ssl`).
    pub fn from_env() -> Mode {
        match std::env::var("PUSHGATE_TEST_KAFKA_SECURITY")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "plaintext" => Mode::PLAINTEXT,
            "sasl_ssl" => Mode::SASL_SSL,
            other => panic!("PUSHGATE_TEST_KAFKA_SECURITY={other}: use plaintext or sasl_ssl"),
        }
    }

    pub fn protocol(self) -> &'static str {
        match (self.tls, self.sasl) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// kafka_tool.py options for this mode.
    pub fn tool_args(self) -> Vec<String> {
        let mut out = vec!["--security-protocol".into(), self.protocol().into()];
        let c = certs();
        let path = |p: &Path| p.display().to_string();
        if self.tls {
            out.extend(["--ssl-cafile".into(), path(&c.ca)]);
        }
        if self.mtls {
            out.extend(["--ssl-certfile".into(), path(&c.client_cert)]);
            out.extend(["--ssl-keyfile".into(), path(&c.client_key)]);
        }
        if self.sasl {
            out.extend([
                "--sasl-mechanism".into(),
                "SCRAM-SHA-512".into(),
                "--sasl-username".into(),
                SCRAM_USER.into(),
                "--sasl-password".into(),
                SCRAM_PASSWORD.into(),
            ]);
        }
        out
    }

    /// pushgate's `[kafka.tls]`/`[kafka.sasl]` for this mode (TOML, after `[kafka]`).
    pub fn pushgate_toml(self) -> String {
        let c = certs();
        let mut out = String::new();
        if self.tls {
            out.push_str(&format!("[kafka.tls]\nca_file = \"{}\"\n", c.ca.display()));
        }
        if self.mtls {
            out.push_str(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                c.client_cert.display(),
                c.client_key.display()
            ));
        }
        if self.sasl {
            out.push_str(&format!(
                "[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{SCRAM_USER}\"\npassword = \"{SCRAM_PASSWORD}\"\n"
            ));
        }
        out
    }
}

/// The SCRAM-SHA-512 user every SASL test broker has.
pub const SCRAM_USER: &str = "pushgate-test";
pub const SCRAM_PASSWORD: &str = "Scram-512-test-pa55word";
/// A SCRAM-SHA-256 user on the same brokers.
pub const SCRAM256_USER: &str = "pushgate-test-256";
pub const SCRAM256_PASSWORD: &str = "Scram-256-test-pa55word";

/// Test PKI made once per test binary with the openssl CLI: a CA, a server
/// certificate for 127.0.0.1/localhost, a client certificate, and a second CA
/// that signed nothing the brokers use.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// Server certificate + key in one PEM, as HAProxy's `crt` wants it.
    pub server_bundle: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

pub fn certs() -> &'static Certs {
    static CERTS: std::sync::OnceLock<Certs> = std::sync::OnceLock::new();
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
    let leaves = [
        (
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "pushgate-client", "extendedKeyUsage=clientAuth\n"),
    ];
    for (name, cn, ext) in leaves {
        let (key, csr, pem, extfile, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN={cn}"),
        );
        std::fs::write(
            d.join(&extfile),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(d, &args);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
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
    let bundle = [
        std::fs::read_to_string(d.join("server.pem")).unwrap(),
        std::fs::read_to_string(d.join("server.key")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("server-bundle.pem"), bundle).unwrap();
    Certs {
        ca: d.join("ca.pem"),
        server_bundle: d.join("server-bundle.pem"),
        client_cert: d.join("client.pem"),
        client_key: d.join("client.key"),
        other_ca: d.join("other-ca.pem"),
        _dir: dir,
    }
}

/// A tansu broker on its own port; `sqlite` storage survives a restart. With
/// TLS, HAProxy terminates it in front of the broker and stays up when the
/// broker is killed or restarted; with SASL, tansu requires SCRAM.
pub struct Broker {
    child: Option<Child>,
    /// The port clients use: the terminator's with TLS, else tansu's.
    pub port: u16,
    tansu_port: u16,
    storage: String,
    pub dir: tempfile::TempDir,
    pub mode: Mode,
    authentication: bool,
    terminator: Option<Child>,
}

impl Broker {
    /// An in-memory broker (sqlite when the mode has SASL: its users must survive restarts).
    pub async fn memory() -> Self {
        Self::with_mode(Mode::from_env()).await
    }

    pub async fn sqlite() -> Self {
        Self::sqlite_with(Mode::from_env()).await
    }

    /// A broker reached as `mode` says.
    pub async fn with_mode(mode: Mode) -> Self {
        if mode.sasl {
            return Self::sqlite_with(mode).await;
        }
        Self::start("memory://tansu/".into(), tempfile::tempdir().unwrap(), mode).await
    }

    pub async fn sqlite_with(mode: Mode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // tansu reads the sqlite URL's path relative to its working directory.
        Self::start("sqlite://tansu.db".into(), dir, mode).await
    }

    async fn start(storage: String, dir: tempfile::TempDir, mode: Mode) -> Self {
        let tansu_port = free_port();
        let mut broker = Self {
            child: None,
            port: if mode.tls { free_port() } else { tansu_port },
            tansu_port,
            storage,
            dir,
            mode,
            authentication: false,
            terminator: None,
        };
        broker.spawn().await;
        if mode.sasl {
            // tansu's CLI cannot log in once --authentication is on, so the
            // users are made first and the broker restarted on the same storage.
            for (user, password, mechanism) in [
                (SCRAM_USER, SCRAM_PASSWORD, "scram512"),
                (SCRAM256_USER, SCRAM256_PASSWORD, "scram256"),
            ] {
                let out = Command::new(tansu_bin())
                    .args(["user", "create", user, password, "--mechanism", mechanism])
                    .args([
                        "--broker",
                        &format!("tcp://127.0.0.1:{}", broker.tansu_port),
                    ])
                    .output()
                    .await
                    .unwrap();
                assert!(out.status.success(), "user create: {out:?}");
            }
            broker.authentication = true;
            broker.restart().await;
        }
        if mode.tls {
            broker.terminator = Some(broker.start_terminator().await);
        }
        broker
    }

    async fn start_terminator(&self) -> Child {
        let c = certs();
        let verify = if self.mode.mtls {
            format!(" ca-file {} verify required", c.ca.display())
        } else {
            String::new()
        };
        let cfg = format!(
            "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n\
             frontend kafka_tls\n    bind 127.0.0.1:{port} ssl crt {crt}{verify}\n    default_backend broker\n\
             backend broker\n    server tansu 127.0.0.1:{tansu}\n",
            port = self.port,
            crt = c.server_bundle.display(),
            tansu = self.tansu_port,
        );
        let path = self.dir.path().join("terminator.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy not found: run scripts/kafka-setup");
        wait_port(self.port).await;
        child
    }

    async fn spawn(&mut self) {
        let listen = format!("tcp://127.0.0.1:{}", self.tansu_port);
        // Clients are sent to the terminator when there is one.
        let advertised = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "broker",
            "--listener-url",
            &listen,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", &self.storage]);
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.tansu_port).await;
    }

    /// The address clients use (the TLS terminator's when there is one).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, config: &[&str]) {
        if self.authentication {
            // tansu's CLI cannot authenticate: create it through kafka-python.
            let (partitions, addr) = (partitions.to_string(), self.addr());
            // Bounded: kafka-python waits long on a broker that refuses its login.
            let mut args = vec![
                "create",
                "--brokers",
                &addr,
                "--topic",
                name,
                "--timeout",
                "60",
            ];
            args.extend(["--partitions", &partitions]);
            for c in config {
                args.extend(["--config", c]);
            }
            let out = tool_as(self.mode, &args).await;
            assert!(out.contains("created"), "{out}");
            return;
        }
        let mut cmd = Command::new(tansu_bin());
        cmd.args([
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://127.0.0.1:{}", self.tansu_port)]);
        for c in config {
            cmd.args(["--config", c]);
        }
        let out = cmd.output().await.unwrap();
        assert!(out.status.success(), "topic create: {out:?}");
    }

    pub async fn delete_topic(&self, name: &str) {
        if self.authentication {
            let out = tool_as(
                self.mode,
                &[
                    "delete",
                    "--brokers",
                    &self.addr(),
                    "--topic",
                    name,
                    "--timeout",
                    "60",
                ],
            )
            .await;
            assert!(out.contains("deleted"), "{out}");
            return;
        }
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "delete",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.tansu_port),
            ])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "topic delete: {out:?}");
    }

    /// SIGKILL: the broker vanishes mid-request (the TLS terminator stays).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// Runs the kafka-python tool against brokers of the `PUSHGATE_TEST_KAFKA_SECURITY` mode.
pub async fn tool(args: &[&str]) -> String {
    tool_as(Mode::from_env(), args).await
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

/// Waits (bounded) for a `spawn_tool` child to exit, and checks it succeeded.
pub async fn wait_exit(child: &mut Child, within: Duration) {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("load generator finished in time")
        .unwrap();
    assert!(status.success(), "load generator failed");
}

/// Starts the tool in the background (a load generator).
pub fn spawn_tool(args: &[&str]) -> Child {
    Command::new("python3")
        .arg(tool_path())
        .args(args)
        .args(Mode::from_env().tool_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3")
}

/// Produces `count` records (seq `start..`) with kafka-python, waiting for each ack.
pub async fn produce(broker: &Broker, topic: &str, start: u64, count: u64) {
    let out = tool_as(
        broker.mode,
        &[
            "produce",
            "--brokers",
            &broker.addr(),
            "--topic",
            topic,
            "--start",
            &start.to_string(),
            "--count",
            &count.to_string(),
            "--wait",
        ],
    )
    .await;
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

/// Every record of `topic` as kafka-python reads it, in (partition, offset)
/// order: `{"p","o","key","value","headers"}` (value as text, null for a tombstone).
/// With `expect`, reads until that many records arrived (at most 30 s) rather
/// than up to the end offsets: tansu reports the end of a batch of several
/// records (librdkafka's) as its first offset + 1.
pub async fn dump_raw(
    broker: &Broker,
    topic: &str,
    expect: Option<usize>,
) -> Vec<serde_json::Value> {
    let expect = expect.unwrap_or(0).to_string();
    let out = tool(&[
        "dump",
        "--brokers",
        &broker.addr(),
        "--topic",
        topic,
        "--expect",
        &expect,
    ])
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
            cfg.push_str("    default-server inter 200ms fall 2 rise 2\n");
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
    let out = tool_as(
        broker.mode,
        &[
            "produce",
            "--brokers",
            &broker.addr(),
            "--topic",
            topic,
            "--start",
            &start.to_string(),
            "--count",
            &count.to_string(),
            "--keys",
            &keys.to_string(),
            "--wait",
        ],
    )
    .await;
    assert!(out.contains(&format!("acked {count}")), "{out}");
}

/// Grows `topic` to `partitions` while the broker runs; returns how (tansu 0.6
/// lacks CreatePartitions: its sqlite storage is written instead, so the
/// broker must be `Broker::sqlite`).
pub async fn add_partitions(broker: &Broker, topic: &str, partitions: u32) -> String {
    let db = broker.dir.path().join("tansu.db");
    let out = tool_as(
        broker.mode,
        &[
            "add-partitions",
            "--brokers",
            &broker.addr(),
            "--topic",
            topic,
            "--count",
            &partitions.to_string(),
            "--sqlite",
            &db.display().to_string(),
        ],
    )
    .await;
    assert!(out.contains("added via"), "{out}");
    out.trim().to_owned()
}
