//! The conformance vectors of `api/conformance/` against the real gateway: each vector that names a
//! `gateway` scenario is played on a fresh server over a real WebSocket, and every message the
//! server sends must have the shape the vector's `server` steps give (values that vary between
//! runs, cursors and timestamps, are matched symbolically).
//!
//! The SDKs (clients/js, clients/kotlin) replay the same vectors as client input; this test is
//! what keeps those vectors honest: a server message the gateway never produces, or one that
//! changed shape, fails here.
//!
//! `PUSHGATE_CONFORMANCE_PRINT=1` prints what the gateway sent for each vector (to write a new one).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{check_server_message, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("api/conformance")
}

fn load_vectors() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(vectors_dir()).expect("api/conformance exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        if path.file_name().and_then(|n| n.to_str()) == Some("schema.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            value,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Symbolic cursor names of a vector bound to the real cursors of one run, both ways, so
/// "the same cursor" and "a different cursor" are checked without knowing the log's epoch.
#[derive(Default)]
struct Cursors {
    by_name: HashMap<String, String>,
    by_real: HashMap<String, String>,
}

impl Cursors {
    fn bind(&mut self, name: &str, real: &str) -> Result<(), String> {
        match (self.by_name.get(name), self.by_real.get(real)) {
            (None, None) => {
                self.by_name.insert(name.to_owned(), real.to_owned());
                self.by_real.insert(real.to_owned(), name.to_owned());
                Ok(())
            }
            (Some(r), _) if r == real => Ok(()),
            (Some(r), _) => Err(format!("cursor {name} was {r} before and is {real} here")),
            (None, Some(other)) => Err(format!(
                "cursor {name} is {real}, which the vector calls {other} elsewhere"
            )),
        }
    }
}

/// Checks `actual` (a real server message) against `expected` (a vector's `server` message).
fn compare(expected: &Value, actual: &Value, cursors: &mut Cursors) -> Result<(), String> {
    let (Some(exp), Some(act)) = (expected.as_object(), actual.as_object()) else {
        return Err("not an object".into());
    };
    for name in act.keys() {
        if !exp.contains_key(name) {
            return Err(format!("the gateway sent `{name}`, which the vector lacks"));
        }
    }
    for (name, want) in exp {
        let Some(got) = act.get(name) else {
            return Err(format!(
                "the vector has `{name}`, which the gateway did not send"
            ));
        };
        match name.as_str() {
            "timestamp" if !got.is_i64() && !got.is_u64() => {
                return Err(format!("`timestamp` is not an integer: {got}"));
            }
            "timestamp" => {}
            "cursor" | "earliest" => {
                let (Some(w), Some(g)) = (want.as_str(), got.as_str()) else {
                    return Err(format!("`{name}` is not a string"));
                };
                cursors.bind(w, g)?;
            }
            _ if want != got => {
                return Err(format!(
                    "`{name}`: the vector has {want}, the gateway sent {got}"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the gateway sent next: a message, nothing within the time, or a close.
enum Next {
    Message(Value),
    Nothing,
    Closed(Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>),
}

async fn next(ws: &mut Ws, within: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Ok(got) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Next::Nothing;
        };
        match got {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                check_server_message(&v);
                return Next::Message(v);
            }
            Some(Ok(Message::Close(frame))) => return Next::Closed(frame),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("websocket error: {e}"),
            None => panic!("websocket ended"),
        }
    }
}

/// The next message, or `None` when the gateway closes with 4002 (the range being
/// replayed is gone from the log); any other close fails the test.
async fn next_message_or_lost(ws: &mut Ws, within: Duration) -> Option<Value> {
    match next(ws, within).await {
        Next::Message(v) => Some(v),
        Next::Nothing => panic!("catch-up"),
        Next::Closed(Some(frame)) if u16::from(frame.code) == 4002 => None,
        Next::Closed(frame) => panic!("closed: {frame:?}"),
    }
}

async fn next_message(ws: &mut Ws, within: Duration) -> Option<Value> {
    match next(ws, within).await {
        Next::Message(v) => Some(v),
        Next::Nothing => None,
        Next::Closed(frame) => panic!("closed: {frame:?}"),
    }
}

/// Publishes the scenario's records one by one, binding `cursor_as` names to the answers.
async fn publish_all(server: &TestServer, topic: &str, list: &Value, cursors: &mut Cursors) {
    for item in list.as_array().into_iter().flatten() {
        let answer = server
            .publish(topic, item["key"].as_str().unwrap(), item["data"].clone())
            .await;
        if let Some(name) = item["cursor_as"].as_str() {
            cursors
                .bind(name, answer["cursor"].as_str().unwrap())
                .unwrap();
        }
    }
}

/// Plays one vector's scenario on a fresh gateway; `Err` says which step differs.
async fn play(name: &str, vector: &Value, print: bool) -> Result<(), String> {
    let scenario = &vector["gateway"];
    let server = TestServer::start().await;
    let mut cursors = Cursors::default();
    let mut request = vector["subscribe"].clone();
    let topic = request["topic"].as_str().unwrap().to_owned();
    publish_all(&server, &topic, &scenario["publish_before"], &mut cursors).await;
    if let Some(name) = request["cursor"].as_str() {
        if let Some(real) = cursors.by_name.get(name) {
            request["cursor"] = json!(real);
        }
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let steps: Vec<&Value> = vector["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["client_only"].as_bool().unwrap_or(false))
        .collect();
    let mut got: Vec<Value> = Vec::new();
    // A retention gap needs the log to have dropped the cursor's records first: retry until then.
    let retention_deadline = tokio::time::Instant::now() + WAIT;
    'retention: loop {
        ws.send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        let first = next_message(&mut ws, WAIT)
            .await
            .expect("an answer to subscribe");
        let waiting =
            scenario["until_gap"].as_bool().unwrap_or(false) && first["recovered"] == json!(true);
        if !waiting {
            got.push(first);
            break;
        }
        assert!(
            tokio::time::Instant::now() < retention_deadline,
            "{name}: the log never dropped the cursor's records"
        );
        // Retention may drop the range while it is replayed: the gateway then closes
        // with 4002 (recovery lost), and the wait goes on over a new connection.
        loop {
            match next_message_or_lost(&mut ws, WAIT).await {
                Some(m) if m["type"] == "live" => break,
                Some(_) => {}
                None => {
                    ws = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
                        .await
                        .unwrap()
                        .0;
                    continue 'retention;
                }
            }
        }
        ws.send(Message::Text(
            json!({"type": "unsubscribe", "id": request["id"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        while next_message(&mut ws, WAIT).await.expect("unsubscribed")["type"] != "unsubscribed" {}
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Catch-up: everything up to and including `live` (all of it when printing).
    let want = if print { usize::MAX } else { steps.len() };
    while got.last().map(|m| m["type"] != "live").unwrap_or(true) && got.len() < want {
        got.push(next_message(&mut ws, WAIT).await.expect("catch-up message"));
    }
    publish_all(&server, &topic, &scenario["publish_after"], &mut cursors).await;
    while got.len() < want {
        let within = if print {
            Duration::from_millis(500)
        } else {
            WAIT
        };
        match next_message(&mut ws, within).await {
            Some(m) => got.push(m),
            None => break,
        }
    }
    // Nothing beyond what the vector lists.
    if let Some(extra) = next_message(&mut ws, Duration::from_millis(300)).await {
        got.push(extra);
    }
    if print {
        println!("== {name}");
        for m in &got {
            println!("{m}");
        }
    }
    let _ = ws.close(None).await;
    drop(ws);
    server.stop().await;
    for (i, step) in steps.iter().enumerate() {
        let Some(actual) = got.get(i) else {
            return Err(format!(
                "step {i}: the gateway sent nothing (expected {})",
                step["server"]
            ));
        };
        compare(&step["server"], actual, &mut cursors).map_err(|e| {
            format!(
                "step {i} ({}): {e}\n  actual: {actual}",
                step["server"]["type"]
            )
        })?;
    }
    if got.len() > steps.len() {
        return Err(format!(
            "the gateway sent more than the vector lists: {}",
            got[steps.len()]
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_vector_matches_what_the_gateway_sends() {
    let print = std::env::var_os("PUSHGATE_CONFORMANCE_PRINT").is_some();
    let vectors = load_vectors();
    assert!(
        vectors.len() >= 8,
        "api/conformance has {} vectors",
        vectors.len()
    );
    let mut played = 0;
    let mut failures = Vec::new();
    for (name, vector) in &vectors {
        if vector["gateway"].is_null() {
            assert!(
                vector["gateway_why_not"].is_string(),
                "{name}: a vector without a gateway scenario says why (gateway_why_not)"
            );
            continue;
        }
        played += 1;
        if let Err(e) = play(name, vector, print).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(played >= 6, "only {played} vectors have a gateway scenario");
}

/// Every server message in every vector (client-only steps included) is a valid protocol
/// message per api/schemas/messages.json, so the SDKs are never tested on impossible input.
#[test]
fn every_vector_message_is_valid_protocol() {
    for (name, vector) in load_vectors() {
        for (i, step) in vector["steps"].as_array().unwrap().iter().enumerate() {
            let msg = &step["server"];
            if step["invalid_on_purpose"].as_bool().unwrap_or(false) {
                continue;
            }
            let def = match msg["type"].as_str() {
                Some("subscribed") => "Subscribed",
                Some("record") => "Record",
                Some("live") => "Live",
                Some("gap") => "Gap",
                Some("error") => "Error",
                Some("unsubscribed") => "Unsubscribed",
                Some("pong") => "Pong",
                Some("token_expiring") => "TokenExpiring",
                Some("refreshed") => "Refreshed",
                // A message type this version does not send: clients must ignore it.
                _ => continue,
            };
            let errors = common::message_errors(def, msg);
            assert!(errors.is_empty(), "{name} step {i}: {errors:?}");
        }
    }
}
