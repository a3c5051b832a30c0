//! Subscriptions from the token (`pushgate.subscribe_on_connect`): opened on a
//! WebSocket with no client message, by `GET /sse` without `topic`, `{sub}`
//! replaced by the token's subject, grants still enforced.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "token-subscriptions-secret-of-32-bytes!!";

/// Subscribing needs a token; publishing (the test's own writes) does not.
fn auth_toml() -> String {
    format!(
        r#"
[auth]
anonymous_subscribe = false
anonymous_publish = true
[[auth.keys]]
kind = "hmac"
secret = "{SECRET}"
"#
    )
}

/// A token for `sub` (none if `None`) with these grants and `subscribe_on_connect` (left out if `None`).
fn token(sub: Option<&str>, subscribe: Value, on_connect: Option<Value>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut grants = json!({ "subscribe": subscribe });
    if let Some(list) = on_connect {
        grants["subscribe_on_connect"] = list;
    }
    let mut claims = json!({ "exp": exp, "pushgate": grants });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A per-user feed on `one` plus the whole of `t` (live only).
fn feed_token(user: &str) -> String {
    token(
        Some(user),
        json!(["one:{sub}".replace("{sub}", user), "t"]),
        Some(json!([
            {"topic": "one", "keys": ["{sub}"]},
            {"topic": "t", "snapshot": false},
        ])),
    )
}

async fn ws_with(server: &TestServer, token: &str, extra: &[(&str, &str)]) -> WsClient {
    let mut params = vec![("access_token", token)];
    params.extend_from_slice(extra);
    let url = reqwest::Url::parse_with_params(&format!("ws://{}/ws", server.addr), &params)
        .unwrap()
        .to_string();
    let (stream, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    WsClient {
        stream,
        lives: Vec::new(),
    }
}

async fn sse_status_and_body(server: &TestServer, query: &str) -> (u16, Value) {
    let resp = server
        .http
        .get(server.url(&format!("/sse?{query}")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn ws_opens_the_tokens_subscriptions_without_a_message() {
    let server = TestServer::start_with(&auth_toml()).await;
    server.publish("one", "alice", json!({"n": 1})).await;
    server.publish("one", "bob", json!({"n": 1})).await;
    let mut ws = ws_with(&server, &feed_token("alice"), &[]).await;

    // No message sent: the server subscribes, in the token's order, under its own ids.
    let first = ws.json().await;
    assert_eq!(first["type"], "subscribed", "{first}");
    assert_eq!(first["id"], "token-0");
    assert_eq!(first["topic"], "one");
    assert_eq!(
        first["snapshot"], 1,
        "only alice's key is in her snapshot: {first}"
    );
    let snap = ws.records(1).await;
    assert_eq!(snap[0]["key"], "alice");
    let second = ws.json().await;
    assert_eq!(second["type"], "subscribed", "{second}");
    assert_eq!(second["id"], "token-1");
    assert_eq!(second["topic"], "t");
    assert_eq!(second["snapshot"], 0);

    server.publish("one", "bob", json!({"n": 2})).await;
    server.publish("one", "alice", json!({"n": 2})).await;
    server.publish("t", "x", json!({"n": 1})).await;
    let got: BTreeSet<(String, String)> = ws
        .records(2)
        .await
        .iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [("one", "alice"), ("t", "x")]
        .into_iter()
        .map(|(t, k)| (t.to_owned(), k.to_owned()))
        .collect();
    assert_eq!(got, want);
    ws.expect_silence(Duration::from_millis(300)).await;

    // Bob's token, same claim: his feed has only his key.
    let mut bob = ws_with(&server, &feed_token("bob"), &[]).await;
    let sub = bob.json().await;
    assert_eq!(
        (sub["id"].as_str(), sub["snapshot"].as_u64()),
        (Some("token-0"), Some(1))
    );
    let snap = bob.records(1).await;
    assert_eq!(
        (snap[0]["key"].as_str(), snap[0]["data"]["n"].as_u64()),
        (Some("bob"), Some(2))
    );
    server.stop().await;
}

#[tokio::test]
async fn grants_still_decide_and_bad_entries_are_reported() {
    let server = TestServer::start_with(&auth_toml()).await;
    // Entry 0 asks for a key outside the grants; entry 1 is the user's own;
    // entry 2 repeats the topic; entry 3 carries a member an entry may not have.
    let token = token(
        Some("bob"),
        json!(["one:bob"]),
        Some(json!([
            {"topic": "one", "keys": ["alice"]},
            {"topic": "one", "keys": ["{sub}"], "snapshot": false},
            {"topic": "one", "keys": ["{sub}"]},
            {"topic": "one", "cursor": "0"},
        ])),
    );
    let mut ws = ws_with(&server, &token, &[]).await;
    let refused = ws.json().await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["id"].as_str(),
            refused["code"].as_str()
        ),
        (Some("error"), Some("token-0"), Some("forbidden")),
        "{refused}"
    );
    let opened = ws.json().await;
    assert_eq!(
        (opened["type"].as_str(), opened["id"].as_str()),
        (Some("subscribed"), Some("token-1"))
    );
    let twice = ws.json().await;
    assert_eq!(
        (twice["id"].as_str(), twice["code"].as_str()),
        (Some("token-2"), Some("already_subscribed")),
        "{twice}"
    );
    let bad = ws.json().await;
    assert_eq!(
        (bad["id"].as_str(), bad["code"].as_str()),
        (Some("token-3"), Some("bad_message")),
        "{bad}"
    );
    server.publish("one", "alice", json!({})).await;
    server.publish("one", "bob", json!({})).await;
    assert_eq!(ws.records(1).await[0]["key"], "bob");
    ws.expect_silence(Duration::from_millis(300)).await;

    // `{sub}` in a token without `sub` is an error for that entry alone.
    let anon = token_without_sub();
    let mut ws = ws_with(&server, &anon, &[]).await;
    let err = ws.json().await;
    assert_eq!(
        (err["id"].as_str(), err["code"].as_str()),
        (Some("token-0"), Some("bad_message")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("sub"), "{err}");
    let ok = ws.json().await;
    assert_eq!(
        (ok["type"].as_str(), ok["id"].as_str()),
        (Some("subscribed"), Some("token-1"))
    );
    server.stop().await;
}

fn token_without_sub() -> String {
    token(
        None,
        json!(["*"]),
        Some(json!([
            {"topic": "one", "keys": ["{sub}"]},
            {"topic": "t", "snapshot": false},
        ])),
    )
}

#[tokio::test]
async fn a_client_id_taken_by_the_token_is_in_use() {
    let server = TestServer::start_with(&auth_toml()).await;
    let mut ws = ws_with(&server, &feed_token("alice"), &[]).await;
    assert_eq!(ws.json().await["id"], "token-0");
    assert_eq!(ws.json().await["id"], "token-1");
    // Same id, another topic: refused as a duplicate id.
    ws.send(json!({"type": "subscribe", "id": "token-0", "topic": "small"}))
        .await;
    let dup = ws.json().await;
    assert_eq!(
        (
            dup["type"].as_str(),
            dup["id"].as_str(),
            dup["code"].as_str()
        ),
        (Some("error"), Some("token-0"), Some("already_subscribed")),
        "{dup}"
    );
    // The client may unsubscribe a token subscription by its id, like its own.
    ws.send(json!({"type": "unsubscribe", "id": "token-1"}))
        .await;
    let gone = ws.json().await;
    assert_eq!(
        (gone["type"].as_str(), gone["id"].as_str()),
        (Some("unsubscribed"), Some("token-1")),
        "{gone}"
    );
    server.publish("t", "x", json!({})).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_without_the_list_changes_nothing() {
    let server = TestServer::start_with(&auth_toml()).await;
    let plain = token(Some("carol"), json!(["t"]), None);
    let mut ws = ws_with(&server, &plain, &[]).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    let sub = ws.subscribe(json!({"id": "mine", "topic": "t"})).await;
    assert_eq!(sub["id"], "mine");
    // And SSE without a topic keeps its error.
    let (status, body) = sse_status_and_body(&server, &format!("access_token={plain}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`topic` is required"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_websocket_resumes_token_subscriptions_by_cursor() {
    let server = TestServer::start_with(&auth_toml()).await;
    let alice = feed_token("alice");
    let mut ws = ws_with(&server, &alice, &[]).await;
    assert_eq!(ws.json().await["id"], "token-0");
    assert_eq!(ws.json().await["id"], "token-1");
    server.publish("one", "alice", json!({"n": 1})).await;
    let seen = ws.records(1).await;
    let cursor = seen[0]["cursor"].as_str().unwrap().to_owned();
    drop(ws);

    server.publish("one", "alice", json!({"n": 2})).await;
    server.publish("one", "bob", json!({"n": 2})).await;
    server.publish("one", "alice", json!({"n": 3})).await;
    let mut ws = ws_with(&server, &alice, &[("cursor.token-0", &cursor)]).await;
    let resumed = ws.json().await;
    assert_eq!(
        (
            resumed["id"].as_str(),
            resumed["recovered"].as_bool(),
            resumed["snapshot"].as_u64()
        ),
        (Some("token-0"), Some(true), Some(0)),
        "{resumed}"
    );
    let missed: Vec<u64> = ws
        .records(2)
        .await
        .iter()
        .map(|r| r["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        missed,
        [2, 3],
        "exactly the missed records of alice's key, no snapshot again"
    );
    assert_eq!(ws.json().await["id"], "token-1");
    ws.expect_silence(Duration::from_millis(300)).await;

    // A cursor that does not parse is that entry's error; the others open.
    let mut ws = ws_with(&server, &alice, &[("cursor.token-0", "garbage")]).await;
    let err = ws.json().await;
    assert_eq!(
        (err["id"].as_str(), err["code"].as_str()),
        (Some("token-0"), Some("bad_cursor")),
        "{err}"
    );
    assert_eq!(ws.json().await["id"], "token-1");
    server.stop().await;
}

#[tokio::test]
async fn sse_without_a_topic_opens_the_tokens_one_subscription() {
    let server = TestServer::start_with(&auth_toml()).await;
    let one = token(
        Some("alice"),
        json!(["one:alice"]),
        Some(json!([{"topic": "one", "keys": ["{sub}"], "snapshot": false}])),
    );
    let mut sse = server.sse(&format!("access_token={one}"), None).await;
    assert_eq!(sse.status, 200);
    let subscribed = sse.next().await;
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(subscribed.json()["id"], "token-0");
    assert_eq!(subscribed.json()["topic"], "one");
    server.publish("one", "bob", json!({"n": 1})).await;
    server.publish("one", "alice", json!({"n": 1})).await;
    let first = sse.records(1).await;
    assert_eq!(first[0].json()["key"], "alice");
    let last_id = first[0]
        .id
        .clone()
        .expect("records carry their cursor as id");
    drop(sse);

    // Last-Event-ID resumes it like any stream.
    server.publish("one", "alice", json!({"n": 2})).await;
    let mut sse = server
        .sse(&format!("access_token={one}"), Some(&last_id))
        .await;
    let resumed = sse.next().await.json();
    assert_eq!(
        (resumed["id"].as_str(), resumed["recovered"].as_bool()),
        (Some("token-0"), Some(true))
    );
    let missed = sse.records(1).await;
    assert_eq!(missed[0].json()["data"]["n"], 2);
    drop(sse);

    // Shaping needs a topic; several entries need a WebSocket; the grants still decide.
    let (status, body) = sse_status_and_body(&server, &format!("access_token={one}&key=bob")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_message")),
        "{body}"
    );
    let two = feed_token("alice");
    let (status, body) = sse_status_and_body(&server, &format!("access_token={two}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("GET /ws"),
        "{body}"
    );
    let outside = token(
        Some("bob"),
        json!(["one:bob"]),
        Some(json!([{"topic": "one"}])),
    );
    let (status, body) = sse_status_and_body(&server, &format!("access_token={outside}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // With a topic, the token's list plays no part.
    let mut sse = server
        .sse(&format!("topic=one&key=alice&access_token={two}"), None)
        .await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.next().await.json()["id"],
        "one",
        "a stream with a topic is the usual one"
    );
    server.stop().await;
}
