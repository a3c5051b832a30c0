//! Hostile clients: bad tokens, grants, expiry, key rotation, origins, limits, slowloris.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const HMAC_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(KEYS).join(name)).unwrap()
}

/// Auth config: anonymous off, HMAC + RSA + EC + Ed25519 keys, iss/aud checked, a JWKS file.
fn auth_toml(jwks: &Path, per_ip: usize) -> String {
    format!(
        r#"
[auth]
anonymous_subscribe = false
anonymous_publish = false
issuer = ["https://issuer.test"]
audience = ["pushgate"]
leeway = "0s"
expiry_grace = "1s"
jwks_file = "{jwks}"
jwks_refresh = "100ms"
cookie = "pg_token"
[[auth.keys]]
kind = "hmac"
kid = "hs"
secret = "{HMAC_SECRET}"
[[auth.keys]]
kind = "rsa"
kid = "rs"
pem_file = "{keys}/rsa.pub"
[[auth.keys]]
kind = "ec"
kid = "ec"
pem_file = "{keys}/ec.pub"
[[auth.keys]]
kind = "ed25519"
kid = "ed"
pem_file = "{keys}/ed25519.pub"
[limits]
publish_rate = 5.0
publish_burst = 5.0
max_connections_per_ip = {per_ip}
[websocket]
subscribe_timeout = "1500ms"
[server]
header_read_timeout = "1s"
"#,
        jwks = jwks.display(),
        keys = KEYS,
    )
}

fn claims(exp_in: i64) -> Value {
    json!({
        "sub": "user-1",
        "iss": "https://issuer.test",
        "aud": "pushgate",
        "exp": (now() as i64 + exp_in),
        "pushgate": {"subscribe": ["t", "one:k*"], "publish": ["one:k1"]},
    })
}

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&key_file("rsa.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_file("ec.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key_file("ed25519.key")).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &key).unwrap()
}

/// A token with a hand-made header, signed with HMAC over `secret`.
fn forge_hs256(header: Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{c}").as_bytes());
    format!(
        "{h}.{c}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

async fn start(dir: &tempfile::TempDir, per_ip: usize) -> TestServer {
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    TestServer::start_with(&auth_toml(&jwks, per_ip)).await
}

/// The WebSocket handshake status for `token` (101 = accepted).
async fn ws_status(server: &TestServer, token: Option<&str>) -> u16 {
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed oddly: {e}"),
    }
}

async fn sse_status(server: &TestServer, token: &str) -> u16 {
    server
        .http
        .get(server.url(&format!("/sse?topic=t&access_token={token}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn publish_status(server: &TestServer, token: &str, key: &str) -> u16 {
    server
        .http
        .post(server.url("/topics/one"))
        .bearer_auth(token)
        .json(&json!({"key": key, "data": 1}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn ws_with_token(server: &TestServer, token: &str) -> WsClient {
    let mut req = format!("ws://{}/ws?access_token={token}", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().remove("authorization");
    let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    WsClient {
        stream,
        lives: Vec::new(),
    }
}

#[tokio::test]
async fn every_bad_token_is_refused_and_valid_ones_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;
    let good = claims(300);

    // Valid tokens of each key type are accepted.
    for (alg, kid) in [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let token = sign(alg, kid, &good);
        assert_eq!(ws_status(&server, Some(&token)).await, 101, "{alg:?}");
        assert_eq!(sse_status(&server, &token).await, 200, "{alg:?}");
    }
    // Cookie works too.
    let token = sign(Algorithm::HS256, "hs", &good);
    let r = server
        .http
        .get(server.url("/sse?topic=t"))
        .header("cookie", format!("other=1; pg_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Change one character inside the signature (not the last one, whose low
    // bits are base64 padding), always to a different character.
    let mut bad_sig = sign(Algorithm::HS256, "hs", &good).into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let rsa_public_pem = key_file("rsa.pub");
    let confused = forge_hs256(json!({"alg": "HS256", "kid": "rs"}), &good, &rsa_public_pem);
    let confused_no_kid = forge_hs256(json!({"alg": "HS256"}), &good, &rsa_public_pem);
    let expired = sign(Algorithm::HS256, "hs", &claims(-120));
    let mut future = claims(300);
    future["nbf"] = json!(now() + 3600);
    let not_yet = sign(Algorithm::RS256, "rs", &future);
    let mut wrong_iss = claims(300);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims(300);
    wrong_aud["aud"] = json!("someone-else");
    let mut no_exp = claims(300);
    no_exp.as_object_mut().unwrap().remove("exp");
    // With `auth.issuer` and `auth.audience` configured, the claims are required.
    let mut no_iss = claims(300);
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = claims(300);
    no_aud.as_object_mut().unwrap().remove("aud");
    let unknown_kid = sign(Algorithm::HS256, "nope", &good);
    // Signed by an attacker's key, pointing at the attacker's key set: never followed.
    let attacker = EncodingKey::from_rsa_pem(&key_file("attacker_rsa.key")).unwrap();
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("rs".into());
    jku.jku = Some("http://127.0.0.1:9/jwks.json".into());
    let jku_token = encode(&jku, &good, &attacker).unwrap();
    let attacker_jwk: Value =
        json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode("attacker-secret-attacker-secret-xx")});
    let jwk_token = forge_hs256(
        json!({"alg": "HS256", "jwk": attacker_jwk}),
        &good,
        b"attacker-secret-attacker-secret-xx",
    );

    let cases = [
        ("bad signature", bad_sig),
        ("alg none", none),
        ("HS256 with RSA public key as secret", confused),
        ("HS256 with RSA public key, no kid", confused_no_kid),
        ("expired", expired),
        ("nbf in the future", not_yet),
        ("wrong iss", sign(Algorithm::HS256, "hs", &wrong_iss)),
        ("wrong aud", sign(Algorithm::HS256, "hs", &wrong_aud)),
        ("missing exp", sign(Algorithm::HS256, "hs", &no_exp)),
        ("missing iss", sign(Algorithm::HS256, "hs", &no_iss)),
        ("missing aud", sign(Algorithm::RS256, "rs", &no_aud)),
        ("unknown kid", unknown_kid),
        ("jku to elsewhere", jku_token),
        ("embedded jwk", jwk_token),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in &cases {
        assert_eq!(ws_status(&server, Some(token)).await, 401, "ws: {what}");
        assert_eq!(sse_status(&server, token).await, 401, "sse: {what}");
        assert_eq!(
            publish_status(&server, token, "k1").await,
            401,
            "publish: {what}"
        );
        let body: Value = server
            .http
            .get(server.url(&format!("/sse?topic=t&access_token={token}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["message"], "authentication required",
            "one generic message"
        );
    }
    // No token at all, with anonymous access off.
    assert_eq!(ws_status(&server, None).await, 401);
    server.stop().await;
}

#[tokio::test]
async fn grants_limit_subscriptions_and_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;
    let token = sign(Algorithm::HS256, "hs", &claims(300));
    let mut ws = ws_with_token(&server, &token).await;
    for refused in [
        json!({"type": "subscribe", "id": 1, "topic": "one"}),
        json!({"type": "subscribe", "id": 2, "topic": "one", "keys": ["k1", "x"]}),
        json!({"type": "subscribe", "id": 3, "topic": "posts"}),
    ] {
        ws.send(refused).await;
        let err = ws.json().await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "forbidden", "{err}");
    }
    // The connection still works for what is granted.
    ws.subscribe(json!({"id": 4, "topic": "one", "keys": ["k1", "k2"], "snapshot": false}))
        .await;
    ws.subscribe(json!({"id": 5, "topic": "t", "snapshot": false}))
        .await;
    assert_eq!(publish_status(&server, &token, "k1").await, 200);
    assert_eq!(
        publish_status(&server, &token, "k2").await,
        403,
        "publish grant is k1 only"
    );
    let rec = ws.json().await;
    assert_eq!(rec["key"], "k1");
    let r = server
        .http
        .post(server.url("/topics/t"))
        .bearer_auth(&token)
        .json(&json!({"key": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // SSE outside the grants: 403.
    let r = server
        .http
        .get(server.url(&format!("/sse?topic=one&access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Publish rate: burst 5 records, then 429.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(publish_status(&server, &token, "k1").await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    server.stop().await;
}

#[tokio::test]
async fn expired_token_closes_the_connection_unless_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;

    let short = sign(Algorithm::HS256, "hs", &claims(2));
    let mut ws = ws_with_token(&server, &short).await;
    ws.subscribe(json!({"topic": "t", "snapshot": false})).await;
    let started = Instant::now();
    let warning = ws.json().await;
    assert_eq!(warning["type"], "token_expiring", "{warning}");
    assert_eq!(ws.close_code().await, Some(4010));
    assert!(started.elapsed() < Duration::from_secs(6));

    // The same, but a fresh token arrives in time: the connection stays.
    let short = sign(Algorithm::HS256, "hs", &claims(2));
    let mut ws = ws_with_token(&server, &short).await;
    ws.subscribe(json!({"topic": "t", "snapshot": false})).await;
    assert_eq!(ws.json().await["type"], "token_expiring");
    let fresh = sign(Algorithm::HS256, "hs", &claims(300));
    ws.send(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(ws.json().await["type"], "refreshed");
    ws.expect_silence(Duration::from_millis(2500)).await;
    // A refresh with a bad token is refused, the connection stays.
    ws.send(json!({"type": "refresh", "token": "junk"})).await;
    assert_eq!(ws.json().await["code"], "unauthorized");

    // SSE ends at expiry.
    let short = sign(Algorithm::HS256, "hs", &claims(2));
    let mut sse = server
        .sse(
            &format!("topic=t&snapshot=false&access_token={short}"),
            None,
        )
        .await;
    assert_eq!(sse.status, 200);
    assert!(
        sse.wait_end(Duration::from_secs(6)).await,
        "SSE stream ends at expiry"
    );
    server.stop().await;
}

#[tokio::test]
async fn rotated_jwks_key_is_accepted_after_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;
    let secret = "rotated-secret-rotated-secret-rotated-!!";
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("next".into());
    let token = encode(
        &header,
        &claims(300),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        ws_status(&server, Some(&token)).await,
        401,
        "not yet published"
    );
    let jwks =
        json!({"keys": [{"kty": "oct", "kid": "next", "k": URL_SAFE_NO_PAD.encode(secret)}]});
    // Make sure the modification time moves even on coarse clocks.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ws_status(&server, Some(&token)).await == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn foreign_origin_per_ip_limit_and_idle_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 5).await;
    let token = sign(Algorithm::HS256, "hs", &claims(300));

    let handshake = |origin: &'static str| {
        let token = token.clone();
        let addr = server.addr;
        async move {
            let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            req.headers_mut().insert("origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(req).await {
                Ok((_, resp)) => resp.status().as_u16(),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(handshake("https://evil.example").await, 403);
    let same = Box::leak(format!("http://{}", server.addr).into_boxed_str());
    assert_eq!(handshake(same).await, 101);

    // Five connections from 127.0.0.1 are allowed, the sixth is refused.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(ws_with_token(&server, &token).await);
    }
    assert_eq!(ws_status(&server, Some(&token)).await, 429);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A WebSocket that never subscribes is closed with 4008.
    let mut idle = ws_with_token(&server, &token).await;
    let started = Instant::now();
    assert_eq!(idle.close_code().await, Some(4008));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    server.stop().await;
}

#[tokio::test]
async fn half_sent_headers_are_cut_off_while_normal_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push((Instant::now(), s));
    }
    // A normal client is still served while they hang. It uses a fresh
    // connection each time: a pooled one would sit idle past the 1 s header
    // timeout below and be closed by the server, rightly.
    let normal = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = normal.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Each half-sent request is closed by the server: 1 s header timeout, plus
    // slack for a shared, loaded machine; never left open forever.
    let mut closed = 0;
    let mut latest = Duration::ZERO;
    for (opened, mut s) in slow {
        let mut buf = [0u8; 256];
        let deadline = opened + Duration::from_secs(6);
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed += 1;
                latest = latest.max(opened.elapsed());
            }
            Ok(Ok(_)) => panic!("the server answered a request it never fully got"),
            Err(_) => {}
        }
    }
    assert_eq!(closed, 1000, "all slowloris connections closed");
    assert!(
        latest >= Duration::from_millis(900),
        "closed by the timeout, not at once"
    );
    let r = normal.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// `POST /topics/one` with `headers` and `body` as raw text; returns the status and JSON body.
async fn raw_publish(server: &TestServer, headers: &[(&str, String)], body: &str) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url("/topics/one"))
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn cookie_publish_needs_an_allowed_origin_and_every_publish_needs_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 2000).await;
    let token = sign(Algorithm::HS256, "hs", &claims(300));
    // Reads back what is appended to `one` (publish grant: key k1).
    let mut ws = ws_with_token(&server, &token).await;
    ws.subscribe(json!({"topic": "one", "keys": ["k1"], "snapshot": false}))
        .await;

    let cookie = ("cookie", format!("pg_token={token}"));
    let json_type = ("content-type", "application/json".to_owned());
    let text_type = ("content-type", "text/plain".to_owned());
    let evil = ("origin", "http://evil.example".to_owned());
    let body = |n: u32| json!({"key": "k1", "data": {"n": n}}).to_string();
    let forbidden_origin = |(status, body): (u16, Value), what: &str| {
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["error"], "forbidden_origin", "{what}");
        assert!(body["message"].is_string(), "{what}");
    };

    // The attack as seen: a page on another site posts text/plain with the user's cookie.
    forbidden_origin(
        raw_publish(
            &server,
            &[cookie.clone(), evil.clone(), text_type.clone()],
            &body(1),
        )
        .await,
        "cookie, evil Origin, text/plain",
    );
    forbidden_origin(
        raw_publish(
            &server,
            &[cookie.clone(), evil.clone(), json_type.clone()],
            &body(2),
        )
        .await,
        "cookie, evil Origin, JSON",
    );
    forbidden_origin(
        raw_publish(
            &server,
            &[
                cookie.clone(),
                json_type.clone(),
                ("referer", "http://evil.example/page".to_owned()),
            ],
            &body(3),
        )
        .await,
        "cookie, no Origin, evil Referer",
    );
    forbidden_origin(
        raw_publish(&server, &[cookie.clone(), json_type.clone()], &body(4)).await,
        "cookie, neither Origin nor Referer",
    );
    // A foreign Origin wins over a same-origin Referer.
    forbidden_origin(
        raw_publish(
            &server,
            &[
                cookie.clone(),
                json_type.clone(),
                evil.clone(),
                ("referer", format!("http://{}/app", server.addr)),
            ],
            &body(5),
        )
        .await,
        "cookie, evil Origin, same-origin Referer",
    );

    // Nothing of the above was appended: the first record the subscriber sees
    // is the allowed one below, at offset 0 of the topic's only partition.
    let (status, reply) = raw_publish(
        &server,
        &[
            cookie.clone(),
            json_type.clone(),
            ("origin", format!("http://{}", server.addr)),
        ],
        &body(10),
    )
    .await;
    assert_eq!(status, 200, "cookie, same Origin: {reply}");
    assert_eq!(reply["offset"], 0, "nothing was appended before: {reply}");
    let rec = ws.json().await;
    assert_eq!(rec["type"], "record", "{rec}");
    assert_eq!(rec["data"]["n"], 10, "{rec}");
    assert_eq!(rec["offset"], 0, "{rec}");
    // Without Origin, a same-origin Referer is enough.
    let (status, reply) = raw_publish(
        &server,
        &[
            cookie.clone(),
            json_type.clone(),
            ("referer", format!("http://{}/app?x=1", server.addr)),
        ],
        &body(11),
    )
    .await;
    assert_eq!(status, 200, "cookie, same-origin Referer: {reply}");
    assert_eq!(ws.json().await["data"]["n"], 11);

    // Bearer tokens are not subject to the origin check, but every publish must be JSON.
    let bearer = ("authorization", format!("Bearer {token}"));
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut headers = vec![bearer.clone(), evil.clone()];
        if let Some(t) = content_type {
            headers.push(("content-type", t.to_owned()));
        }
        let (status, reply) = raw_publish(&server, &headers, &body(20)).await;
        assert_eq!(status, 415, "bearer, {content_type:?}: {reply}");
        assert_eq!(reply["error"], "unsupported_media_type", "{content_type:?}");
        assert!(reply["message"].is_string());
    }
    let (status, reply) = raw_publish(
        &server,
        &[
            bearer.clone(),
            evil.clone(),
            ("content-type", "Application/JSON; charset=utf-8".to_owned()),
        ],
        &body(21),
    )
    .await;
    assert_eq!(status, 200, "bearer, JSON with charset: {reply}");
    let rec = ws.json().await;
    assert_eq!(rec["data"]["n"], 21, "the 415s appended nothing: {rec}");
    assert_eq!(rec["offset"], 2, "{rec}");
    ws.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn anonymous_publish_needs_json_but_no_origin() {
    let server = TestServer::start().await;
    let (status, reply) = raw_publish(
        &server,
        &[("content-type", "text/plain".to_owned())],
        r#"{"key":"a","data":1}"#,
    )
    .await;
    assert_eq!(status, 415, "{reply}");
    assert_eq!(reply["error"], "unsupported_media_type");
    let (status, reply) = raw_publish(
        &server,
        &[
            ("content-type", "application/json".to_owned()),
            ("origin", "http://evil.example".to_owned()),
        ],
        r#"{"key":"a","data":1}"#,
    )
    .await;
    assert_eq!(
        status, 200,
        "anonymous publish has no cookie to forge: {reply}"
    );
    server.stop().await;
}

/// A publish whose body trickles in is cut off at the header timeout with 408
/// (it held its connection and task for ever before); the topic list needs a
/// token when anonymous subscribing is off.
#[tokio::test]
async fn a_trickled_publish_body_times_out_and_the_topic_list_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, 100).await;
    let token = sign(Algorithm::HS256, "hs", &claims(60));
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /topics/one HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never answered the trickled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut off by the timeout, not at once"
    );

    let anonymous = server.http.get(server.url("/topics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let forged = server
        .http
        .get(server.url("/topics"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let listed = server
        .http
        .get(server.url("/topics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let body: Value = listed.json().await.unwrap();
    assert!(
        body["topics"].as_array().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    server.stop().await;
}

/// Anonymous publish (so records of every tenant can be written), tokens to subscribe.
async fn start_tenants() -> TestServer {
    TestServer::start_with(&format!(
        r#"
[auth]
anonymous_subscribe = false
anonymous_publish = true
[[auth.keys]]
kind = "hmac"
kid = "hs"
secret = "{HMAC_SECRET}"
"#
    ))
    .await
}

fn tenant_token(subscribe: Value, publish: Value) -> String {
    sign(
        Algorithm::HS256,
        "hs",
        &json!({
            "sub": "tenant-user",
            "exp": now() + 300,
            "pushgate": {"subscribe": subscribe, "publish": publish},
        }),
    )
}

/// Records with data until `quiet` passes with nothing; every one must be
/// of tenant `a`. A `leave` (a key of tenant a that moved out) carries no
/// value at all and is not returned.
async fn tenant_records(ws: &mut WsClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(ev) = ws.event_within(Duration::from_millis(250)).await {
        match ev {
            WsEvent::Json(v) if v["type"] == "record" && v["op"] == "leave" => {
                assert!(
                    v.get("data").is_none() && v.get("patch").is_none(),
                    "leaked: {v}"
                );
            }
            WsEvent::Json(v) if v["type"] == "record" => {
                assert_eq!(v["data"]["tenant"], "a", "leaked: {v}");
                out.push(v);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn seqs(records: &[Value]) -> Vec<u64> {
    let mut s: Vec<u64> = records.iter().map(seq).collect();
    s.sort();
    s
}

#[tokio::test]
async fn token_filters_hold_against_every_spec_cursor_prefix_snapshot_and_resume() {
    let server = start_tenants().await;
    let grant = json!([{"topic": "t", "filter": {"tenant": "a"}}]);
    let token = tenant_token(grant, json!([]));
    // 60 records over 3 partitions: the ring (8 per partition) holds the
    // last ones only, so a cursor at 0 is replayed from the log.
    let tenant = |n: u64| match n % 3 {
        0 => json!("a"),
        1 => json!("b"),
        _ => Value::Null,
    };
    let mut batch = Vec::new();
    for n in 0..60u64 {
        let mut data = json!({"seq": n, "secret": format!("s{n}")});
        if !tenant(n).is_null() {
            data["tenant"] = tenant(n);
        }
        batch.push((format!("k{}", n % 7), data));
    }
    server.publish_batch("t", &batch).await;
    let of_a: Vec<u64> = (0..60).filter(|n| n % 3 == 0).collect();
    let mut probe = ws_with_token(&server, &token).await;
    let reply = probe
        .subscribe(json!({"topic": "t", "snapshot": false}))
        .await;
    let epoch = pushgate::cursor::Cursor::decode(reply["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    let zero = pushgate::cursor::Cursor::new(epoch, vec![0, 0, 0]).encode();

    // Resumes from 0 (log) with every spec a client might try.
    for (spec, want) in [
        (json!({}), of_a.clone()),
        (
            json!({"filter": {"or": [{"tenant": "b"}, {"tenant": "a"}]}}),
            of_a.clone(),
        ),
        (json!({"filter": {"seq": {"gte": 0}}}), of_a.clone()),
        (json!({"filter": {"tenant": {"ne": "a"}}}), vec![]),
        (json!({"filter": {"tenant": "b"}}), vec![]),
        (json!({"filter": {"not": {"tenant": "a"}}}), vec![]),
        (json!({"filter": {"tenant": {"exists": false}}}), vec![]),
        (
            json!({"filter": {"or": [{"not": {"tenant": "a"}}, {"tenant": "a"}]}}),
            of_a.clone(),
        ),
        (json!({"prefix": "k"}), of_a.clone()),
        (
            json!({"keys": ["k1", "k2"]}),
            of_a.iter()
                .copied()
                .filter(|n| [1, 2].contains(&(n % 7)))
                .collect(),
        ),
    ] {
        let mut ws = ws_with_token(&server, &token).await;
        let mut request = json!({"topic": "t", "cursor": zero});
        for (k, v) in spec.as_object().unwrap() {
            request[k] = v.clone();
        }
        ws.subscribe(request).await;
        let got = seqs(&tenant_records(&mut ws).await);
        assert_eq!(got, want, "{spec}");
    }
    // Snapshot: only keys whose latest value is tenant a (k0..k6: the last
    // record of each key is seq 53..59).
    let mut ws = ws_with_token(&server, &token).await;
    ws.subscribe(json!({"topic": "t", "filter": {"tenant": {"in": ["a", "b"]}}}))
        .await;
    let snap = tenant_records(&mut ws).await;
    assert_eq!(seqs(&snap), vec![54, 57], "{snap:?}");
    // A recent cursor (ring) and a foreign-epoch cursor (gap, then snapshot).
    let recent = snap[0]["cursor"].as_str().unwrap().to_owned();
    let foreign = pushgate::cursor::Cursor::new(epoch ^ 1, vec![0, 0, 0]).encode();
    for cursor in [recent.clone(), foreign] {
        let mut ws = ws_with_token(&server, &token).await;
        ws.send(json!({"type": "subscribe", "topic": "t", "cursor": cursor}))
            .await;
        assert_eq!(ws.json().await["type"], "subscribed");
        let mut n = 0;
        while let Some(WsEvent::Json(v)) = ws.event_within(Duration::from_millis(250)).await {
            if v["type"] == "record" && v["op"] != "leave" {
                assert_eq!(v["data"]["tenant"], "a", "leaked: {v}");
                n += 1;
            }
        }
        assert!(n <= 2);
    }

    // Live, on WebSocket and SSE, whatever the client asks.
    let mut live_ws = ws_with_token(&server, &token).await;
    live_ws
        .subscribe(json!({"topic": "t", "snapshot": false, "filter": {"or": [{"tenant": "b"}, {"seq": {"gte": 0}}]}}))
        .await;
    let mut sse_plain = server
        .sse(
            &format!("topic=t&snapshot=false&access_token={token}"),
            None,
        )
        .await;
    assert_eq!(sse_plain.status, 200);
    let widen = form_urlencoded::byte_serialize(br#"{"tenant":"b"}"#).collect::<String>();
    let mut sse_b = server
        .sse(
            &format!("topic=t&snapshot=false&filter={widen}&access_token={token}"),
            None,
        )
        .await;
    // Last-Event-ID at 0: the log again, through the token's filter.
    let mut sse_resume = server
        .sse(&format!("topic=t&access_token={token}"), Some(&zero))
        .await;
    for sse in [&mut sse_plain, &mut sse_b, &mut sse_resume] {
        assert_eq!(sse.next().await.event, "subscribed");
    }
    for n in 100..112u64 {
        let t = if n % 2 == 0 { "a" } else { "b" };
        server
            .publish("t", &format!("k{n}"), json!({"seq": n, "tenant": t}))
            .await;
    }
    let live = seqs(&tenant_records(&mut live_ws).await);
    assert_eq!(live, (100..112).filter(|n| n % 2 == 0).collect::<Vec<_>>());
    let mut plain = Vec::new();
    while let Some(ev) = sse_plain.next_within(Duration::from_millis(250)).await {
        let v = ev.json();
        if v["op"] == "leave" {
            assert!(v.get("data").is_none(), "leaked over SSE: {v}");
            continue;
        }
        assert_eq!(v["data"]["tenant"], "a", "leaked over SSE: {v}");
        plain.push(seq(&v));
    }
    assert_eq!(plain, (100..112).filter(|n| n % 2 == 0).collect::<Vec<_>>());
    assert!(sse_b
        .next_within(Duration::from_millis(250))
        .await
        .is_none());
    let mut resumed = Vec::new();
    while let Some(ev) = sse_resume.next_within(Duration::from_millis(250)).await {
        let v = ev.json();
        if v["op"] == "leave" {
            assert!(v.get("data").is_none(), "leaked over SSE resume: {v}");
            continue;
        }
        assert_eq!(v["data"]["tenant"], "a", "leaked over SSE resume: {v}");
        resumed.push(seq(&v));
    }
    resumed.sort();
    let mut want = of_a.clone();
    want.extend((100..112).filter(|n| n % 2 == 0));
    assert_eq!(resumed, want);
    server.stop().await;
}

#[tokio::test]
async fn grant_objects_mix_with_string_grants_and_fail_closed() {
    let server = start_tenants().await;
    // Keys x* of `one` in full; keys k* only where tenant is a.
    let token = tenant_token(
        json!(["one:x*", {"topic": "one:k*", "filter": {"tenant": "a"}}]),
        json!([{"topic": "one"}]),
    );
    let mut ws = ws_with_token(&server, &token).await;
    ws.send(json!({"type": "subscribe", "id": 1, "topic": "one"}))
        .await;
    assert_eq!(
        ws.json().await["code"],
        "forbidden",
        "not every key is granted"
    );
    ws.subscribe(json!({"topic": "one", "keys": ["x1", "k1"], "snapshot": false}))
        .await;
    for (key, tenant) in [("x1", "b"), ("k1", "b"), ("k1", "a"), ("x1", "a")] {
        server.publish("one", key, json!({"tenant": tenant})).await;
    }
    let got: Vec<(String, String)> = ws
        .records(3)
        .await
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["data"]["tenant"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("x1".into(), "b".into()),
            ("k1".into(), "a".into()),
            ("x1".into(), "a".into())
        ]
    );
    ws.expect_silence(Duration::from_millis(250)).await;
    // Publishing needs a string grant: an object in `publish` grants nothing.
    let r = server
        .http
        .post(server.url("/topics/one"))
        .bearer_auth(&token)
        .json(&json!({"key": "k1", "data": {"tenant": "z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let publisher = tenant_token(json!([]), json!(["one"]));
    let r = server
        .http
        .post(server.url("/topics/one"))
        .bearer_auth(&publisher)
        .json(&json!({"key": "k1", "data": {"tenant": "z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "grant filters do not limit publishing");

    // Malformed grant objects grant nothing.
    for bad in [
        json!([{"topic": "one", "filter": {"tenant": {"gt": true}}}]),
        json!([{"topic": "one", "filter": {"tenant": "a"}, "keys": ["k1"]}]),
        json!([{"topic": 5, "filter": {"tenant": "a"}}]),
        json!([{"filter": {"tenant": "a"}}]),
        json!([{"topic": "one", "filter": "tenant = a"}]),
    ] {
        let token = tenant_token(bad.clone(), json!([]));
        let mut ws = ws_with_token(&server, &token).await;
        ws.send(json!({"type": "subscribe", "topic": "one", "keys": ["k1"]}))
            .await;
        assert_eq!(ws.json().await["code"], "forbidden", "{bad}");
    }

    // A refreshed token that enforces another filter ends the subscription;
    // one that enforces the same keeps it.
    let a = tenant_token(
        json!([{"topic": "one", "filter": {"tenant": "a"}}]),
        json!([]),
    );
    let b = tenant_token(
        json!([{"topic": "one", "filter": {"tenant": "b"}}]),
        json!([]),
    );
    let mut ws = ws_with_token(&server, &a).await;
    ws.subscribe(json!({"id": 7, "topic": "one", "snapshot": false}))
        .await;
    ws.send(json!({"type": "refresh", "token": a})).await;
    assert_eq!(ws.json().await["type"], "refreshed");
    server.publish("one", "k9", json!({"tenant": "a"})).await;
    assert_eq!(ws.json().await["data"]["tenant"], "a");
    ws.send(json!({"type": "refresh", "token": b})).await;
    let ended = ws.json().await;
    assert_eq!(ended["code"], "forbidden", "{ended}");
    assert_eq!(ended["id"], 7);
    assert_eq!(ws.json().await["type"], "refreshed");
    server.publish("one", "k9", json!({"tenant": "a"})).await;
    server.publish("one", "k9", json!({"tenant": "b"})).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}
