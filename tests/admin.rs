//! The admin API (`[admin]`): off by default, its own bearer token (never a
//! client's JWT), connections listed with their subscriptions and closed with
//! the drain's code, topics with positions that match what was published.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

/// Admin on, on the main listener; clients may be anonymous or carry an HS256 JWT.
fn admin_toml() -> String {
    format!(
        r#"
[admin]
enabled = true
token = "{ADMIN_TOKEN}"
[auth]
anonymous_subscribe = true
anonymous_publish = true
[[auth.keys]]
kind = "hmac"
secret = "{HMAC_SECRET}"
"#
    )
}

fn client_jwt(subject: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": subject, "exp": exp, "pushgate": {"subscribe": ["one", "t"]}}),
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn admin_get(server: &TestServer, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = server.http.get(server.url(path));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn ws_as(server: &TestServer, subject: &str) -> WsClient {
    let url = format!(
        "ws://{}/ws?access_token={}",
        server.addr,
        client_jwt(subject)
    );
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    WsClient {
        stream,
        lives: Vec::new(),
    }
}

/// The listed connections of a query, by subject.
async fn listed(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = admin_get(
        server,
        &format!("/admin/connections{query}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["connections"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admin_api_is_off_by_default() {
    let server = TestServer::start().await;
    for path in ["/admin/connections", "/admin/topics", "/admin"] {
        let (status, _) = admin_get(&server, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 404, "{path}");
    }
    let deleted = server
        .http
        .delete(server.url("/admin/connections/1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_short_admin_token_refuses_to_start_and_the_environment_sets_it() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), "[admin]\nenabled = true\ntoken = \"short\"\n");
    let err = pushgate::Config::from_toml_str(&toml, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.token"), "{err}");
    let no_token = config_toml(dir.path(), "[admin]\nenabled = true\n");
    assert!(pushgate::Config::from_toml_str(&no_token, std::iter::empty()).is_err());
    // A secret of digits stays a string.
    let env = [(
        "PUSHGATE__ADMIN__TOKEN".to_owned(),
        "12345678901234567890".to_owned(),
    )];
    let config = pushgate::Config::from_toml_str(&no_token, env.into_iter()).unwrap();
    assert!(config.admin.enabled);
    assert!(!format!("{config:?}").contains("12345678901234567890"));
}

#[tokio::test]
async fn wrong_missing_or_client_tokens_get_401() {
    let server = TestServer::start_with(&admin_toml()).await;
    let jwt = client_jwt("alice");
    for bearer in [
        None,
        Some("admin-token-012345678X"),
        Some("admin-token-0123456789-and-more"),
        Some(""),
        Some(jwt.as_str()),
    ] {
        for path in ["/admin/connections", "/admin/topics"] {
            let (status, body) = admin_get(&server, path, bearer).await;
            assert_eq!(status, 401, "{path} with {bearer:?}: {body}");
            assert_eq!(body["error"], "unauthorized");
        }
    }
    // The JWT as a query token does not open it either.
    let (status, _) = admin_get(
        &server,
        &format!("/admin/connections?access_token={jwt}"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = admin_get(&server, "/admin/topics", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn connections_are_listed_filtered_and_closed_with_the_drain_code() {
    let server = TestServer::start_with(&admin_toml()).await;
    let mut alice = ws_as(&server, "alice").await;
    alice
        .subscribe(json!({"id": "a1", "topic": "one", "snapshot": false}))
        .await;
    alice
        .subscribe(json!({"id": "a2", "topic": "t", "snapshot": false}))
        .await;
    let mut sse = server.sse("topic=t&snapshot=false", None).await;
    assert_eq!(sse.status, 200);
    sse.next().await; // subscribed
    server.publish("t", "k", json!(1)).await;
    alice.records(1).await;
    sse.records(1).await;

    let all = listed(&server, "").await;
    assert_eq!(all.len(), 2, "{all:?}");
    let ws = all.iter().find(|c| c["transport"] == "ws").unwrap();
    assert_eq!(ws["subject"], "alice");
    assert_eq!(ws["peer"], "127.0.0.1");
    assert!(ws["age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(ws["queue_bytes"], 0);
    let mut topics: Vec<&str> = ws["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    topics.sort();
    assert_eq!(topics, ["one", "t"]);
    for sub in ws["subscriptions"].as_array().unwrap() {
        assert!(sub["id"].is_u64(), "{sub}");
        // Live: the topic's current position, a cursor a client could resume from.
        let cursor = sub["cursor"].as_str().unwrap();
        pushgate::cursor::Cursor::decode(cursor).unwrap();
    }
    let sse_entry = all.iter().find(|c| c["transport"] == "sse").unwrap();
    assert_eq!(sse_entry["subject"], Value::Null);
    assert_eq!(sse_entry["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(sse_entry["subscriptions"][0]["topic"], "t");

    let by_subject = listed(&server, "?subject=alice").await;
    assert_eq!(by_subject.len(), 1);
    assert_eq!(by_subject[0]["id"], ws["id"]);
    assert!(listed(&server, "?subject=bob").await.is_empty());
    let on_one = listed(&server, "?topic=one").await;
    assert_eq!(on_one.len(), 1);
    assert_eq!(on_one[0]["transport"], "ws");
    assert_eq!(listed(&server, "?topic=t").await.len(), 2);
    assert_eq!(listed(&server, "?topic=t&subject=alice").await.len(), 1);
    assert!(listed(&server, "?topic=small").await.is_empty());

    // Closed with the drain's code, 1012: the client reconnects and resumes.
    let id = ws["id"].as_u64().unwrap();
    let url = server.url(&format!("/admin/connections/{id}"));
    let deleted = server
        .http
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(alice.close_code().await, Some(1012));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = listed(&server, "").await;
        if left.iter().all(|c| c["id"] != id) {
            assert_eq!(left.len(), 1, "the SSE stream stays: {left:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = server
        .http
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let unauthorized = server.http.delete(&url).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);

    // The SSE stream is closed the same way: it ends.
    let sse_id = sse_entry["id"].as_u64().unwrap();
    let deleted = server
        .http
        .delete(server.url(&format!("/admin/connections/{sse_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(sse.wait_end(WAIT).await, "the SSE stream ends");
    server.stop().await;
}

#[tokio::test]
async fn topics_list_positions_ring_view_and_lag_as_published() {
    let server = TestServer::start_with(&admin_toml()).await;
    // `one`: 1 partition, ring of 64. Five records over three keys.
    for (key, v) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5)] {
        server.publish("one", key, json!(v)).await;
    }
    // `small`: ring of 5; twelve records of one key.
    for v in 0..12 {
        server.publish("small", "k", json!(v)).await;
    }
    let (status, body) = admin_get(&server, "/admin/topics", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let topic = |name: &str| {
        body["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {body}"))
            .clone()
    };
    let mut one = topic("one");
    assert_eq!(one["ready"], true);
    // Seconds since the newest record's timestamp: just published, so fresh.
    let age = one["partitions"][0]
        .as_object_mut()
        .unwrap()
        .remove("newest_record_age_seconds")
        .unwrap();
    assert!(
        age.as_f64().is_some_and(|a| (0.0..60.0).contains(&a)),
        "{age}"
    );
    assert_eq!(
        one["partitions"],
        json!([{
            "partition": 0, "next_offset": 5, "high_watermark": 5, "lag": 0,
            "ring": {"first": 0, "last": 4}, "view_keys": 3,
        }])
    );
    let mut small = topic("small");
    small["partitions"][0]
        .as_object_mut()
        .unwrap()
        .remove("newest_record_age_seconds");
    assert_eq!(
        small["partitions"][0],
        json!({
            "partition": 0, "next_offset": 12, "high_watermark": 12, "lag": 0,
            "ring": {"first": 7, "last": 11}, "view_keys": 1,
        })
    );
    let t = topic("t");
    assert_eq!(t["partitions"].as_array().unwrap().len(), 3);
    for p in t["partitions"].as_array().unwrap() {
        assert_eq!(p["next_offset"], 0);
        assert_eq!(p["ring"], Value::Null);
        assert_eq!(p["view_keys"], 0);
        assert_eq!(p["newest_record_age_seconds"], Value::Null);
    }
    server.stop().await;
}

/// With `admin.listen`, the routes are served there and nowhere else.
#[tokio::test]
async fn a_separate_admin_listener_serves_the_routes_and_the_main_one_does_not() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let server = TestServer::start_with(&format!(
        "{}\n[admin]\nenabled = true\ntoken = \"{ADMIN_TOKEN}\"\nlisten = \"127.0.0.1:{port}\"\n",
        "[auth]\nanonymous_subscribe = true\nanonymous_publish = true\n"
    ))
    .await;
    let (status, _) = admin_get(&server, "/admin/topics", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "not on the main listener");
    let resp = server
        .http
        .get(format!("http://127.0.0.1:{port}/admin/topics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["topics"].as_array().is_some_and(|t| !t.is_empty()));
    let resp = server
        .http
        .get(format!("http://127.0.0.1:{port}/admin/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    server.stop().await;
}
