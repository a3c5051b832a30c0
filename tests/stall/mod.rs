//! Clients that stop reading: real sockets with a small receive buffer that
//! subscribe and then never read again, next to healthy clients. The
//! scenarios read the process-wide `pushgate_connections` gauge from
//! `/metrics`, so each runs in a test binary of its own (`tests/stall_*.rs`):
//! a failure in one cannot hide the others.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::common::{self, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A socket whose receive window is tiny, so the server's writes block soon.
async fn small_socket(server: &TestServer) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Reads until `needle` has been seen (then never reads again).
async fn read_until(stream: &mut TcpStream, needle: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(common::WAIT, async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before {needle:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw {needle:?}"));
}

/// A WebSocket client, spoken by hand, subscribed to `topic`; it stops reading after `live`.
async fn stalled_ws(server: &TestServer, topic: &str) -> TcpStream {
    let mut s = small_socket(server).await;
    let handshake = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(handshake.as_bytes()).await.unwrap();
    read_until(&mut s, "\r\n\r\n").await;
    let payload = json!({"type": "subscribe", "topic": topic, "snapshot": false}).to_string();
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.unwrap();
    read_until(&mut s, "\"live\"").await;
    s
}

/// An SSE client subscribed to `topic` that stops reading after `live`.
async fn stalled_sse(server: &TestServer, topic: &str) -> TcpStream {
    let mut s = small_socket(server).await;
    let request =
        format!("GET /sse?topic={topic}&snapshot=false HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut s, "event: live").await;
    s
}

/// Open connections by transport, from `/metrics`.
async fn connections(server: &TestServer) -> (u64, u64) {
    let text = server.metrics_text().await;
    let gauge = |transport: &str| {
        let prefix = format!("pushgate_connections{{transport=\"{transport}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    (gauge("ws"), gauge("sse"))
}

/// Waits until `/metrics` shows exactly `want` (ws, sse) connections; how long it took.
async fn wait_connections(server: &TestServer, want: (u64, u64), within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = connections(server).await;
        if now == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "connections stayed at {now:?}, want {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RECORD_BYTES: usize = 4096;
const BATCH: usize = 50;

/// Publishes `batches` x 50 records of 4 KiB to `one`; returns how many.
async fn flood(server: &TestServer, batches: usize) -> usize {
    let filler = "x".repeat(RECORD_BYTES);
    for b in 0..batches {
        let records: Vec<(String, Value)> = (0..BATCH)
            .map(|i| {
                (
                    format!("k{}", i % 7),
                    json!({"n": b * BATCH + i, "pad": filler}),
                )
            })
            .collect();
        server.publish_batch("one", &records).await;
    }
    batches * BATCH
}

/// A healthy WebSocket reader: checks it gets every record, in order.
fn healthy_ws(
    mut ws: common::WsClient,
    expect: usize,
) -> tokio::task::JoinHandle<common::WsClient> {
    tokio::spawn(async move {
        for i in 0..expect {
            let v = ws.json().await;
            assert_eq!(v["type"], "record", "{v}");
            assert_eq!(
                v["data"]["n"], i,
                "healthy WS client missed or reordered a record"
            );
        }
        ws
    })
}

fn healthy_sse(
    mut sse: common::SseClient,
    expect: usize,
) -> tokio::task::JoinHandle<common::SseClient> {
    tokio::spawn(async move {
        let mut ev = sse.next().await;
        assert_eq!(ev.event, "subscribed", "{ev:?}");
        for i in 0..expect {
            ev = sse.next().await;
            assert_eq!(ev.event, "message", "{ev:?}");
            assert_eq!(
                ev.json()["data"]["n"],
                i,
                "healthy SSE client missed a record"
            );
        }
        sse
    })
}

const STALLED: usize = 8;

/// A healthy WS and SSE client, and STALLED stalled ones of each, all on `one`.
async fn healthy_and_stalled(
    server: &TestServer,
) -> (common::WsClient, common::SseClient, Vec<TcpStream>) {
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let sse = server.sse("topic=one&snapshot=false", None).await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_ws(server, "one").await);
        stalled.push(stalled_sse(server, "one").await);
    }
    (ws, sse, stalled)
}

/// A socket that takes no bytes for `limits.write_timeout` is closed, WS and SSE alike,
/// while healthy clients beside them get everything.
pub async fn write_timeout_drops_stalled_ws_and_sse() {
    let server = TestServer::start_with(
        "[limits]\nwrite_timeout = \"1s\"\nqueue_bytes = 67108864\n[websocket]\nping_interval = \"60s\"\n",
    )
    .await;
    let (ws, sse, stalled) = healthy_and_stalled(&server).await;
    let n = STALLED as u64;
    wait_connections(&server, (n + 1, n + 1), common::WAIT).await;

    let total = 20 * BATCH;
    let ws_reader = healthy_ws(ws, total);
    let sse_reader = healthy_sse(sse, total);
    assert_eq!(flood(&server, 20).await, total);
    let took = wait_connections(&server, (1, 1), Duration::from_secs(15)).await;
    println!("stalled clients gone {took:?} after the last publish (write_timeout 1s)");
    ws_reader.await.unwrap();
    sse_reader.await.unwrap();
    drop(stalled);
    server.stop().await;
}

/// A client whose queue overflows while a write to it is blocked stops getting
/// records at once and is closed (4001 if it can still take the frame) within
/// the write timeout, not when (if ever) the blocked write finishes.
pub async fn overflow_while_blocked_closes_at_once() {
    let server = TestServer::start_with(
        "[limits]\nwrite_timeout = \"2s\"\nqueue_bytes = 65536\n[websocket]\nping_interval = \"60s\"\n",
    )
    .await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_ws(&server, "one").await);
    }
    wait_connections(&server, (STALLED as u64 + 1, 0), common::WAIT).await;
    let before = slow_disconnects(&server).await;
    // Paced so the healthy reader keeps up within its 64 KiB queue.
    let filler = "x".repeat(RECORD_BYTES);
    let mut total = 0;
    let reader = {
        let expect = 200 * 5;
        healthy_ws(ws, expect)
    };
    for b in 0..200 {
        let records: Vec<(String, Value)> = (0..5)
            .map(|i| ("k".to_string(), json!({"n": b * 5 + i, "pad": filler})))
            .collect();
        server.publish_batch("one", &records).await;
        total += records.len();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(total, 1000);
    let took = wait_connections(&server, (1, 0), Duration::from_secs(10)).await;
    println!("overflowed stalled clients gone {took:?} after the last publish (write_timeout 2s)");
    assert!(slow_disconnects(&server).await >= before + STALLED as u64);
    reader.await.unwrap();
    drop(stalled);
    server.stop().await;
}

async fn slow_disconnects(server: &TestServer) -> u64 {
    server
        .metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_slow_disconnects_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Shutdown drops stalled clients at once: healthy ones get 1012 and `retry:`,
/// and the drain ends far inside the grace period.
pub async fn shutdown_is_not_held_by_stalled_clients() {
    let server = TestServer::start_with(
        "[server]\nshutdown_grace = \"30s\"\n[limits]\nwrite_timeout = \"60s\"\nqueue_bytes = 67108864\n[websocket]\nping_interval = \"60s\"\n",
    )
    .await;
    let (ws, sse, stalled) = healthy_and_stalled(&server).await;
    let total = 20 * BATCH;
    let ws_reader = healthy_ws(ws, total);
    let sse_reader = healthy_sse(sse, total);
    assert_eq!(flood(&server, 20).await, total);
    let mut ws = ws_reader.await.unwrap();
    let mut sse = sse_reader.await.unwrap();
    // The healthy clients have everything; the stalled ones are blocked mid-write.
    let n = STALLED as u64;
    assert_eq!(connections(&server).await, (n + 1, n + 1));

    let started = Instant::now();
    server.shutdown.trigger();
    // The healthy WS client reads on after the Close, so its reply goes out.
    let ws_closed = async {
        let code = ws.close_code().await;
        while let Some(Ok(_)) = ws.stream.next().await {}
        code
    };
    let (code, ended) = tokio::join!(ws_closed, sse.wait_end(Duration::from_secs(10)));
    assert_eq!(code, Some(1012), "healthy WS told to reconnect");
    assert!(ended, "healthy SSE stream ended");
    assert!(sse.retry_lines >= 2, "healthy SSE got a last retry: line");
    tokio::time::timeout(Duration::from_secs(10), server.handle)
        .await
        .expect("drain finished well inside the 30 s grace")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    println!("drain with {} stalled clients took {took:?}", 2 * STALLED);
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    drop(stalled);
}
