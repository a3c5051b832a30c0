//! Revocations and grant changes across Kafka nodes: written by one node's
//! admin API to a compacted control topic, read by every node. Three nodes
//! (real binaries) on one broker: a revocation posted on node A cuts off the
//! subject's connection on node C within a second, and a node D started
//! afterwards refuses the token from its first connection. Needs
//! `scripts/kafka-setup`.

mod common;
mod kafka_common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use kafka_common::*;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(subject: &str, subscribe: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": subject, "exp": now() + 300, "pushgate": {"subscribe": subscribe}}),
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start_node(broker: &Broker, topic: &str, control: &str) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[[auth.keys]]
kind = "hmac"
secret = "{HMAC_SECRET}"
[admin]
enabled = true
token = "{ADMIN_TOKEN}"
control_topic = "{control}"
"#
    );
    let config = kafka_config(&broker.addr(), &[(topic, 64)], &extra)
        .replace("anonymous_subscribe = true", "anonymous_subscribe = false");
    let process = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    (process, dir)
}

async fn ws_with(addr: std::net::SocketAddr, token: &str) -> Result<WsClient, u16> {
    let url = format!("ws://{addr}/ws?access_token={token}");
    match tokio_tungstenite::connect_async(url).await {
        Ok((stream, _)) => Ok(WsClient {
            stream,
            lives: Vec::new(),
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("ws connect: {e}"),
    }
}

async fn close_code_within(ws: &mut WsClient, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.event_within(left).await {
            Some(WsEvent::Closed(code)) => return code,
            Some(WsEvent::Json(_)) => continue,
            None => return None,
        }
    }
}

#[tokio::test]
async fn a_revocation_on_one_node_cuts_the_client_off_on_another_and_a_later_node_refuses_it() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("rev", 1, &[]).await;
    broker
        .create_topic("rev.control", 1, &["cleanup.policy=compact"])
        .await;
    let (a, _da) = start_node(&broker, "rev", "rev.control").await;
    let (b, _db) = start_node(&broker, "rev", "rev.control").await;
    let (c, _dc) = start_node(&broker, "rev", "rev.control").await;
    let http = reqwest::Client::new();

    let ivan = jwt("ivan", json!(["rev"]));
    let judy = jwt("judy", json!(["rev"]));
    let mut on_c = ws_with(c.addr, &ivan).await.unwrap();
    on_c.subscribe(json!({"topic": "rev", "snapshot": false}))
        .await;
    let mut on_b = ws_with(b.addr, &ivan).await.unwrap();
    on_b.subscribe(json!({"topic": "rev", "snapshot": false}))
        .await;
    let mut other = ws_with(c.addr, &judy).await.unwrap();
    other
        .subscribe(json!({"topic": "rev", "snapshot": false}))
        .await;

    let asked = Instant::now();
    let reply = http
        .post(format!("http://{}/admin/revocations", a.addr))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"subject": "ivan"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["applied"], true, "{body}");
    assert_eq!(
        close_code_within(&mut on_c, Duration::from_secs(1)).await,
        Some(4003),
        "node C cuts the client off within a second"
    );
    let took = asked.elapsed();
    assert_eq!(
        close_code_within(&mut on_b, Duration::from_secs(1)).await,
        Some(4003)
    );
    eprintln!(
        "revoked on node A: the client on node C was closed {took:?} after the POST was sent"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    for node in [&a, &b, &c] {
        assert_eq!(ws_with(node.addr, &ivan).await.err(), Some(401));
    }
    // Judy is untouched.
    publish(&http, c.addr, "rev", "k", json!(1)).await;
    assert_eq!(other.records(1).await[0]["data"], 1);

    // A node started afterwards has read the control topic before it is ready.
    let (d, _dd) = start_node(&broker, "rev", "rev.control").await;
    assert_eq!(ws_with(d.addr, &ivan).await.err(), Some(401));
    let listed: Value = http
        .get(format!("http://{}/admin/revocations", d.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["revocations"][0]["subject"], "ivan", "{listed}");
    ws_with(d.addr, &judy).await.unwrap();

    // Lifted on node D: every node lets the token in again.
    let lifted = http
        .delete(format!("http://{}/admin/revocations/subject:ivan", d.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 204);
    for node in [&a, &b, &c, &d] {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match ws_with(node.addr, &ivan).await {
                Ok(_) => break,
                Err(status) => {
                    assert_eq!(status, 401);
                    assert!(Instant::now() < deadline, "still refused on {}", node.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn narrowed_grants_reach_a_connection_on_another_node() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("narrow.a", 1, &[]).await;
    broker
        .create_topic("narrow.control", 1, &["cleanup.policy=compact"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[[auth.keys]]
kind = "hmac"
secret = "{HMAC_SECRET}"
[admin]
enabled = true
token = "{ADMIN_TOKEN}"
control_topic = "narrow.control"
"#
    );
    let config = kafka_config(
        &broker.addr(),
        &[("narrow.a", 64), ("narrow.b", 64)],
        &extra,
    );
    broker.create_topic("narrow.b", 1, &[]).await;
    let a = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let dir_b = tempfile::tempdir().unwrap();
    let b = Process::start(dir_b.path(), &config, "127.0.0.1:0").await;
    let http = reqwest::Client::new();
    let token = jwt("kim", json!(["narrow.a", "narrow.b"]));
    let mut ws = ws_with(b.addr, &token).await.unwrap();
    ws.subscribe(json!({"id": 1, "topic": "narrow.a", "snapshot": false}))
        .await;
    ws.subscribe(json!({"id": 2, "topic": "narrow.b", "snapshot": false}))
        .await;
    let reply = http
        .post(format!("http://{}/admin/grants", a.addr))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"subject": "kim", "subscribe": ["narrow.a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let ended = match ws.event_within(Duration::from_secs(1)).await {
        Some(WsEvent::Json(v)) => v,
        other => panic!("expected unsubscribed within a second, got {other:?}"),
    };
    assert_eq!(
        ended,
        json!({"type": "unsubscribed", "id": 2, "topic": "narrow.b", "reason": "revoked"})
    );
    publish(&http, a.addr, "narrow.a", "k", json!("still")).await;
    assert_eq!(ws.records(1).await[0]["data"], "still");
}
