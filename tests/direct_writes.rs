//! `websocket.direct_writes`: the fan-out loop writes live records to idle
//! cleartext WebSocket sockets itself. Seen from outside: every record still
//! arrives once and in order beside the connection's own replies, and
//! `pushgate_ws_direct_writes_total` counts the frames it wrote, never for a
//! connection over TLS or with the switch off.
//!
//! One test function: the counter is process-wide, so nothing else may run
//! beside it in this binary.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn direct_writes(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_ws_direct_writes_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Subscribes `ws` to `topic`, publishes `n` records over four keys while
/// the client sends a bad message now and then, and checks that every record
/// arrives once, in offset order per partition, and every error reply whole.
async fn deliver_beside_replies(server: &TestServer, ws: &mut WsClient, topic: &str, n: u64) {
    ws.subscribe(json!({"topic": topic, "snapshot": false}))
        .await;
    let publisher = {
        let http = reqwest::Client::new();
        let url = server.url(&format!("/topics/{topic}"));
        tokio::spawn(async move {
            for from in (0..n).step_by(5) {
                let records: Vec<Value> = (from..(from + 5).min(n))
                    .map(|seq| json!({"key": format!("k{}", seq % 4), "data": {"seq": seq}}))
                    .collect();
                post_records(&http, &url, records).await;
                // Spaced, so the connection is often idle when a record comes.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut last = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let (mut asked, mut answered) = (0, 0);
    while seen.len() < n as usize {
        if seen.len() / 50 >= asked && asked == answered {
            ws.send_raw("not json").await;
            asked += 1;
        }
        let v = ws.json().await;
        match v["type"].as_str() {
            Some("record") => {
                let (p, o) = (
                    v["partition"].as_u64().unwrap(),
                    v["offset"].as_u64().unwrap(),
                );
                if let Some(prev) = last.insert(p, o) {
                    assert!(o > prev, "partition {p}: offset {o} after {prev}");
                }
                assert!(
                    seen.insert(v["data"]["seq"].as_u64().unwrap()),
                    "twice: {v}"
                );
            }
            Some("error") => answered += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    publisher.await.unwrap();
    while answered < asked {
        let v = ws.json().await;
        assert_eq!(v["type"], "error", "{v}");
        answered += 1;
    }
    ws.expect_silence(Duration::from_millis(200)).await;
}

/// A CA (`ca.pem`) and a server certificate for localhost it signed
/// (`cert.pem`, `key.pem`): rustls takes no self-signed end certificate.
fn make_cert(dir: &Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=test-ca -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=localhost -keyout key.pem -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
  -extfile san.ext -out cert.pem
"#;
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
}

/// A `wss://` client trusting `ca`, and what it reads until `n` records came.
async fn wss_records(addr: std::net::SocketAddr, ca: &Path, n: usize) -> Vec<Value> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    // Another crate in the tree enables aws-lc-rs too: choose, as the server does.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    let subscribe = json!({"type": "subscribe", "topic": "one", "snapshot": false});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    let mut records = Vec::new();
    let mut subscribed = false;
    while records.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let text = match next {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("after {} records over TLS: {other:?}", records.len()),
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        match v["type"].as_str() {
            Some("subscribed") => {
                subscribed = true;
                // Published only once the subscription is in place.
                let ca = ca.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    for i in 0..n {
                        let out = std::process::Command::new("curl")
                            .args(["-sf", "--cacert"])
                            .arg(&ca)
                            .args(["-H", "content-type: application/json", "-d"])
                            .arg(json!({"key": "k", "data": {"i": i}}).to_string())
                            .arg(format!("https://127.0.0.1:{}/topics/one", addr.port()))
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{out:?}");
                    }
                });
            }
            Some("record") => {
                assert!(subscribed);
                records.push(v);
            }
            _ => {}
        }
    }
    records
}

#[tokio::test]
async fn the_fan_out_loop_writes_idle_cleartext_sockets_only() {
    // Off: records go through each connection's task, and nothing is counted.
    let off = TestServer::start_with("[websocket]\ndirect_writes = false\n").await;
    let before = direct_writes(&off.metrics_text().await);
    let mut ws = off.ws().await;
    deliver_beside_replies(&off, &mut ws, "t", 400).await;
    assert_eq!(
        direct_writes(&off.metrics_text().await),
        before,
        "switched off"
    );
    off.stop().await;

    // TLS: the socket carries TLS records, so the task writes through the session.
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path());
    let tls = TestServer::start_tls(&format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n",
        certs.path().display()
    ))
    .await;
    let records = wss_records(tls.addr, &certs.path().join("ca.pem"), 20).await;
    let order: Vec<u64> = records
        .iter()
        .map(|r| r["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    // The TLS server's counter is this process's: read it from a plain one below.
    tls.stop().await;

    // On (the default): the same traffic, and the loop wrote most frames itself.
    let on = TestServer::start().await;
    assert_eq!(
        direct_writes(&on.metrics_text().await),
        before,
        "nothing written directly over TLS"
    );
    let mut ws = on.ws().await;
    deliver_beside_replies(&on, &mut ws, "t", 1000).await;
    let written = direct_writes(&on.metrics_text().await) - before;
    assert!(written > 0.0, "no frame was written by the fan-out loop");
    assert!(written <= 1000.0, "{written}");
    eprintln!("{written} of 1000 records written by the fan-out loop");
    on.stop().await;
}
