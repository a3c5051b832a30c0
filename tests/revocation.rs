//! Live revocation and narrowed grants through the control topic, on the
//! embedded log: `POST /admin/revocations` ends the subject's (or one
//! token's) connections within a second on every transport and refuses its
//! tokens until `until` or a `DELETE`; `POST /admin/grants` ends only the
//! subscriptions the new grants no longer allow; a node started on the same
//! log refuses a revoked token from its first connection.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// How soon a revocation must reach an open connection.
const CUT_WITHIN: Duration = Duration::from_secs(1);

/// Admin on the main listener; clients need an HS256 JWT to subscribe,
/// publishing stays anonymous (the tests publish as a service would).
fn revocation_toml() -> String {
    format!(
        r#"
[admin]
enabled = true
token = "{ADMIN_TOKEN}"
[auth]
anonymous_subscribe = false
anonymous_publish = true
[[auth.keys]]
kind = "hmac"
secret = "{HMAC_SECRET}"
"#
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(subject: &str, jti: Option<&str>, subscribe: Value) -> String {
    let mut claims =
        json!({"sub": subject, "exp": now() + 300, "pushgate": {"subscribe": subscribe}});
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

fn token(subject: &str) -> String {
    jwt(subject, None, json!(["t", "one"]))
}

/// A WebSocket with `token`, or the HTTP status that refused the handshake.
async fn ws_with(addr: SocketAddr, token: &str) -> Result<WsClient, u16> {
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

async fn sse_with(server: &TestServer, query: &str, token: &str) -> SseClient {
    SseClient::connect(
        &server.http,
        server.addr,
        &format!("{query}&access_token={token}"),
        None,
    )
    .await
}

async fn admin(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = server
        .http
        .request(method, server.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn revoke(server: &TestServer, body: Value) -> Value {
    let (status, reply) = admin(
        server,
        reqwest::Method::POST,
        "/admin/revocations",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["applied"], true, "{reply}");
    reply
}

async fn in_force(server: &TestServer) -> Vec<Value> {
    let (status, body) = admin(server, reqwest::Method::GET, "/admin/revocations", None).await;
    assert_eq!(status, 200, "{body}");
    body["revocations"].as_array().unwrap().clone()
}

/// The WebSocket's close code, read within `wait`.
async fn closed_within(ws: &mut WsClient, wait: Duration) -> Option<u16> {
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
async fn a_revoked_subject_is_cut_off_on_every_transport_and_refused_until_lifted() {
    let server = TestServer::start_with(&revocation_toml()).await;
    let alice = token("alice");
    let bob = token("bob");
    let mut alice_ws = ws_with(server.addr, &alice).await.unwrap();
    alice_ws
        .subscribe(json!({"topic": "t", "snapshot": false}))
        .await;
    let mut alice_sse = sse_with(&server, "topic=one&snapshot=false", &alice).await;
    assert_eq!(alice_sse.status, 200);
    assert_eq!(alice_sse.next().await.event, "subscribed");
    let mut bob_ws = ws_with(server.addr, &bob).await.unwrap();
    bob_ws
        .subscribe(json!({"topic": "t", "snapshot": false}))
        .await;

    // A client's JWT never opens the admin API.
    let refused = server
        .http
        .post(server.url("/admin/revocations"))
        .bearer_auth(&alice)
        .json(&json!({"subject": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let asked = Instant::now();
    let reply = revoke(&server, json!({"subject": "alice"})).await;
    assert_eq!(reply["subject"], "alice");
    assert_eq!(reply["until"], Value::Null);
    assert_eq!(reply["in_force"], true);
    assert_eq!(closed_within(&mut alice_ws, CUT_WITHIN).await, Some(4003));
    let ev = alice_sse
        .next_within(CUT_WITHIN)
        .await
        .expect("an error event");
    assert_eq!(ev.event, "error", "{ev:?}");
    assert_eq!(ev.json()["code"], "revoked", "{ev:?}");
    assert!(alice_sse.wait_end(CUT_WITHIN).await, "the SSE stream ends");
    let took = asked.elapsed();
    eprintln!("revoked: WebSocket closed and SSE ended {took:?} after the POST was sent");
    assert!(took < CUT_WITHIN, "cut off after {took:?}");

    // Others go on.
    server.publish("t", "k", json!(1)).await;
    assert_eq!(bob_ws.records(1).await[0]["data"], 1);

    // The subject's tokens are refused, on every path.
    assert_eq!(ws_with(server.addr, &alice).await.err(), Some(401));
    let sse = sse_with(&server, "topic=one", &alice).await;
    assert_eq!(sse.status, 401);
    let fresh = jwt("alice", Some("another"), json!(["t"]));
    assert_eq!(ws_with(server.addr, &fresh).await.err(), Some(401));
    let listed = in_force(&server).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["subject"], "alice");
    assert!(listed[0]["revoked_at"].as_u64().unwrap() >= now() - 60);

    // DELETE lifts it, on this node and (through the log) every other.
    let (status, _) = admin(
        &server,
        reqwest::Method::DELETE,
        "/admin/revocations/subject:alice",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deadline = Instant::now() + CUT_WITHIN;
    while !in_force(&server).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the lift is applied within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = ws_with(server.addr, &alice).await.unwrap();
    again
        .subscribe(json!({"topic": "t", "snapshot": false}))
        .await;
    server.publish("t", "k", json!(2)).await;
    assert_eq!(again.records(1).await[0]["data"], 2);
    server.stop().await;
}

#[tokio::test]
async fn until_ends_a_revocation_and_one_already_past_is_not_in_force() {
    let server = TestServer::start_with(&revocation_toml()).await;
    let carol = token("carol");
    let past = revoke(&server, json!({"subject": "carol", "until": now() - 10})).await;
    assert_eq!(past["in_force"], false);
    assert!(in_force(&server).await.is_empty());
    let mut ws = ws_with(server.addr, &carol).await.unwrap();
    ws.subscribe(json!({"topic": "t", "snapshot": false})).await;

    let until = now() + 2;
    revoke(&server, json!({"subject": "carol", "until": until})).await;
    assert_eq!(closed_within(&mut ws, CUT_WITHIN).await, Some(4003));
    assert_eq!(ws_with(server.addr, &carol).await.err(), Some(401));
    assert_eq!(in_force(&server).await[0]["until"], until);
    // Once `until` has passed the token is accepted again and the entry is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match ws_with(server.addr, &carol).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status, 401);
                assert!(Instant::now() < deadline, "still refused after until");
            }
        }
    }
    assert!(now() >= until);
    assert!(in_force(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_jti_revocation_ends_only_that_token() {
    let server = TestServer::start_with(&revocation_toml()).await;
    let first = jwt("dave", Some("token-1"), json!(["t"]));
    let second = jwt("dave", Some("token-2"), json!(["t"]));
    let mut one = ws_with(server.addr, &first).await.unwrap();
    one.subscribe(json!({"topic": "t", "snapshot": false}))
        .await;
    let mut two = ws_with(server.addr, &second).await.unwrap();
    two.subscribe(json!({"topic": "t", "snapshot": false}))
        .await;

    let reply = revoke(&server, json!({"jti": "token-1"})).await;
    assert_eq!(reply["jti"], "token-1");
    assert_eq!(closed_within(&mut one, CUT_WITHIN).await, Some(4003));
    server.publish("t", "k", json!(7)).await;
    assert_eq!(two.records(1).await[0]["data"], 7);
    assert_eq!(ws_with(server.addr, &first).await.err(), Some(401));
    ws_with(server.addr, &second).await.unwrap();
    let listed = in_force(&server).await;
    assert_eq!(
        listed,
        [json!({"jti": "token-1", "until": null, "revoked_at": listed[0]["revoked_at"]})]
    );
    server.stop().await;
}

#[tokio::test]
async fn narrowed_grants_end_only_the_subscriptions_they_no_longer_allow() {
    let server = TestServer::start_with(&revocation_toml()).await;
    let erin = jwt("erin", None, json!(["t", "one", "small"]));
    let mut ws = ws_with(server.addr, &erin).await.unwrap();
    ws.subscribe(json!({"id": "keep", "topic": "t", "snapshot": false}))
        .await;
    ws.subscribe(json!({"id": "drop", "topic": "one", "snapshot": false}))
        .await;
    let mut sse_one = sse_with(&server, "topic=one&snapshot=false", &erin).await;
    assert_eq!(sse_one.next().await.event, "subscribed");
    let mut sse_t = sse_with(&server, "topic=t&snapshot=false", &erin).await;
    assert_eq!(sse_t.next().await.event, "subscribed");
    // Another subject with the same grants is not touched.
    let mut frank = ws_with(server.addr, &jwt("frank", None, json!(["one"])))
        .await
        .unwrap();
    frank
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;

    let (status, reply) = admin(
        &server,
        reqwest::Method::POST,
        "/admin/grants",
        Some(json!({"subject": "erin", "subscribe": ["t", "small:k*"]})),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["applied"], true);
    let ended = match ws.event_within(CUT_WITHIN).await {
        Some(WsEvent::Json(v)) => v,
        other => panic!("expected unsubscribed, got {other:?}"),
    };
    assert_eq!(
        ended,
        json!({"type": "unsubscribed", "id": "drop", "topic": "one", "reason": "revoked"})
    );
    let ev = sse_one.next_within(CUT_WITHIN).await.expect("an event");
    assert_eq!(ev.event, "unsubscribed");
    assert_eq!(ev.json()["reason"], "revoked");
    assert!(sse_one.wait_end(CUT_WITHIN).await);

    // What is still allowed goes on, on both transports; nothing of `one` arrives.
    server.publish("one", "k", json!("gone")).await;
    server.publish("t", "k", json!("kept")).await;
    assert_eq!(ws.records(1).await[0]["data"], "kept");
    let got = sse_t.records(1).await;
    assert_eq!(got[0].json()["data"], "kept");
    assert_eq!(frank.records(1).await[0]["data"], "gone");
    // New subscribes need both the token's grants and the narrowed ones.
    ws.send(json!({"type": "subscribe", "id": "back", "topic": "one"}))
        .await;
    let refused = ws.json().await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    ws.send(json!({"type": "subscribe", "id": "s", "topic": "small"}))
        .await;
    assert_eq!(ws.json().await["code"], "forbidden");
    ws.subscribe(json!({"id": "s", "topic": "small", "keys": ["k1"], "snapshot": false}))
        .await;
    // A refreshed token's grants take over again.
    ws.send(json!({"type": "refresh", "token": erin})).await;
    assert_eq!(ws.json().await["type"], "refreshed");
    ws.subscribe(json!({"id": "back", "topic": "one", "snapshot": false}))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn the_control_topic_is_not_a_client_topic() {
    let server = TestServer::start_with(&revocation_toml()).await;
    let root = jwt("root", None, json!(["*"]));
    let listed: Value = server
        .http
        .get(server.url(&format!("/topics?access_token={root}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"pushgate.control"), "{names:?}");
    let mut ws = ws_with(server.addr, &root).await.unwrap();
    ws.send(json!({"type": "subscribe", "topic": "pushgate.control"}))
        .await;
    assert_eq!(ws.json().await["code"], "unknown_topic");
    let sse = sse_with(&server, "topic=pushgate.control", &root).await;
    assert_eq!(sse.status, 404);
    let published = server
        .http
        .post(server.url("/topics/pushgate.control"))
        .json(&json!({"key": "subject:root", "data": {"lifted": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 404);
    // Bad admin requests get a clear 400.
    for body in [
        json!({}),
        json!({"subject": "a", "jti": "b"}),
        json!({"subject": ""}),
        json!({"subject": "a", "until": "tomorrow"}),
        json!({"subject": "a", "extra": 1}),
        json!({"subject": "a", "jti": null}),
        json!([{"subject": "a"}]),
    ] {
        let (status, reply) = admin(
            &server,
            reqwest::Method::POST,
            "/admin/revocations",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"], "bad_request");
    }
    let (status, _) = admin(
        &server,
        reqwest::Method::DELETE,
        "/admin/revocations/nobody",
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_node_started_afterwards_refuses_the_revoked_token_from_its_first_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_toml(&dir.path().join("data"), &revocation_toml());
    let http = reqwest::Client::new();
    let mut node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let reply = http
        .post(format!("http://{}/admin/revocations", node.addr))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"subject": "gina"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(15)).await, Some(0));

    // The next node on the same log: ready only once it has read the control
    // topic, so its first connection with the token is refused.
    let node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    assert_eq!(ws_with(node.addr, &token("gina")).await.err(), Some(401));
    ws_with(node.addr, &token("hal")).await.unwrap();
}
