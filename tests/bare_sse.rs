//! `GET /sse` served on the bare socket (a head that arrives whole) against
//! the same request through hyper (a head split over two segments): the same
//! events and headers, complete refusals, the slot freed on disconnect, the
//! write deadline, the drain, and requests that must still reach hyper.
//!
//! The bare path answers with `connection: close`; hyper keeps the
//! connection alive and does not send it. That header tells the paths apart.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How a request head goes out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Send {
    /// One write: the accept loop sees it whole and serves it bare.
    Whole,
    /// Two writes with a pause between: hyper gets it.
    Split,
}

async fn send_head(stream: &mut TcpStream, head: &str, how: Send) {
    match how {
        Send::Whole => stream.write_all(head.as_bytes()).await.unwrap(),
        Send::Split => {
            let (a, b) = head.split_at(10);
            stream.write_all(a.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.write_all(b.as_bytes()).await.unwrap();
        }
    }
}

/// A response read by hand: status, headers (names lowercased), and the body read so far.
struct Raw {
    stream: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    /// Bytes after the head, still chunk-encoded.
    rest: Vec<u8>,
}

impl Raw {
    async fn get(server: &TestServer, target: &str, extra: &str, how: Send) -> Raw {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        Self::on(
            stream,
            &format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"),
            how,
        )
        .await
    }

    async fn on(mut stream: TcpStream, head: &str, how: Send) -> Raw {
        send_head(&mut stream, head, how).await;
        let mut buf = Vec::new();
        let end = tokio::time::timeout(common::WAIT, async {
            loop {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    return end;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response head in time");
        let text = String::from_utf8(buf[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("a header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Raw {
            stream,
            status,
            headers,
            rest: buf[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn bare(&self) -> bool {
        self.header("connection") == Some("close")
    }

    /// Reads until the connection closes (within `WAIT`); the raw body bytes.
    async fn read_to_close(mut self) -> Vec<u8> {
        tokio::time::timeout(common::WAIT, self.stream.read_to_end(&mut self.rest))
            .await
            .expect("the server closed the connection")
            .unwrap();
        self.rest
    }

    /// The decoded body once it holds `needle` `times` times (chunked coding).
    async fn body_until(&mut self, needle: &str, times: usize) -> String {
        tokio::time::timeout(common::WAIT, async {
            loop {
                let (body, _) = dechunk(&self.rest);
                if body.matches(needle).count() >= times {
                    return body;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early; body so far: {body}");
                self.rest.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never saw {needle:?} x{times}"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes complete chunks; whether the terminating chunk was seen.
fn dechunk(mut raw: &[u8]) -> (String, bool) {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16)
            .expect("a chunk size line");
        if size == 0 {
            return (String::from_utf8(out).unwrap(), &raw[eol..] == b"\r\n\r\n");
        }
        let start = eol + 2;
        if raw.len() < start + size + 2 {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        assert_eq!(
            &raw[start + size..start + size + 2],
            b"\r\n",
            "chunk ends with CRLF"
        );
        raw = &raw[start + size + 2..];
    }
    (String::from_utf8(out).unwrap(), false)
}

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))
}

const QUIET: &str = "[sse]\nkeepalive_interval = \"60s\"\n";

#[tokio::test]
async fn a_whole_head_is_served_bare_with_the_same_events_and_headers_as_hyper() {
    let server = TestServer::start_with(QUIET).await;
    for i in 0..5 {
        server
            .publish("one", &format!("k{}", i % 2), json!({"n": i}))
            .await;
    }
    let target = "/sse?topic=one&key=k0&key=k1";
    let mut bare = Raw::get(&server, target, "", Send::Whole).await;
    let mut hyper = Raw::get(&server, target, "", Send::Split).await;
    assert!(
        bare.bare(),
        "a whole head is served bare: {:?}",
        bare.headers
    );
    assert!(
        !hyper.bare(),
        "a split head goes to hyper: {:?}",
        hyper.headers
    );
    for raw in [&bare, &hyper] {
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-type"), Some("text/event-stream"));
        assert_eq!(raw.header("cache-control"), Some("no-cache, no-transform"));
        assert_eq!(raw.header("x-accel-buffering"), Some("no"));
        assert_eq!(raw.header("transfer-encoding"), Some("chunked"));
        assert!(raw.header("date").is_some());
    }
    // Snapshot, then live records.
    bare.body_until("event: live", 1).await;
    hyper.body_until("event: live", 1).await;
    for i in 5..8 {
        server
            .publish("one", &format!("k{}", i % 2), json!({"n": i}))
            .await;
    }
    let from_bare = bare.body_until("\"n\":7", 1).await;
    let from_hyper = hyper.body_until("\"n\":7", 1).await;
    assert!(
        from_bare.starts_with("retry: 2000\n\nevent: subscribed\n"),
        "{from_bare}"
    );
    assert_eq!(from_bare, from_hyper, "both paths send the same events");
    for n in 5..8 {
        assert!(from_bare.contains(&format!("\"n\":{n}")), "{from_bare}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_http10_client_gets_the_stream_unchunked() {
    let server = TestServer::start_with(QUIET).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let mut raw = Raw::on(stream, "GET /sse?topic=one HTTP/1.0\r\n\r\n", Send::Whole).await;
    assert_eq!(raw.status, 200);
    assert!(raw.bare());
    assert_eq!(raw.header("transfer-encoding"), None);
    tokio::time::timeout(common::WAIT, async {
        while !String::from_utf8_lossy(&raw.rest).contains("event: live") {
            let mut buf = [0u8; 1024];
            let n = raw.stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            raw.rest.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    assert!(raw.rest.starts_with(b"retry: 2000\n\nevent: subscribed\n"));
    server.stop().await;
}

#[tokio::test]
async fn refusals_on_the_bare_path_are_whole_responses_like_hyper_gives() {
    let server = TestServer::start_with("[auth]\nanonymous_subscribe = false\n").await;
    let open = TestServer::start().await;
    for (server, target, status, code) in [
        (&server, "/sse?topic=t", 401, "unauthorized"),
        (&open, "/sse?topic=t&cursor=garbage", 400, "bad_cursor"),
        (&open, "/sse?topic=nope", 404, "unknown_topic"),
        (&open, "/sse?key=a", 400, "bad_message"),
    ] {
        let bare = Raw::get(server, target, "", Send::Whole).await;
        let hyper = Raw::get(server, target, "", Send::Split).await;
        assert!(bare.bare() && !hyper.bare(), "{target}");
        assert_eq!((bare.status, hyper.status), (status, status), "{target}");
        for name in ["content-type", "retry-after"] {
            assert_eq!(bare.header(name), hyper.header(name), "{target}: {name}");
        }
        let length: usize = bare.header("content-length").unwrap().parse().unwrap();
        let hyper_length: usize = hyper.header("content-length").unwrap().parse().unwrap();
        let bare_body = bare.read_to_close().await;
        assert_eq!(
            bare_body.len(),
            length,
            "{target}: the whole body, then the close"
        );
        let mut hyper = hyper;
        while hyper.rest.len() < hyper_length {
            let mut buf = [0u8; 1024];
            let n = hyper.stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            hyper.rest.extend_from_slice(&buf[..n]);
        }
        let body = json_body(&bare_body);
        assert_eq!(body["error"], code, "{target}: {body}");
        assert_eq!(body, json_body(&hyper.rest), "{target}");
    }
    // A token (query parameter) lets the same request in.
    server.stop().await;
    open.stop().await;
}

/// Opens bare streams from 127.0.0.1 until one is refused; how many got in.
async fn status_of_another(server: &TestServer) -> u16 {
    let raw = Raw::get(server, "/sse?topic=one&snapshot=false", "", Send::Whole).await;
    assert!(raw.bare());
    raw.status
}

#[tokio::test]
async fn a_client_that_closes_frees_its_slot_at_once() {
    let server = TestServer::start_with("[limits]\nmax_connections_per_ip = 1\n").await;
    let mut first = Raw::get(&server, "/sse?topic=one&snapshot=false", "", Send::Whole).await;
    assert_eq!(first.status, 200);
    first.body_until("event: live", 1).await;
    assert_eq!(status_of_another(&server).await, 429, "the slot is held");
    drop(first);
    let started = Instant::now();
    loop {
        if status_of_another(&server).await == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_keeps_sending_is_closed() {
    let server = TestServer::start_with(QUIET).await;
    let mut raw = Raw::get(&server, "/sse?topic=one&snapshot=false", "", Send::Whole).await;
    raw.body_until("event: live", 1).await;
    let junk = vec![b'x'; 64 * 1024];
    // The server reads and discards a little, then hangs up; a write may fail once it has.
    let _ = tokio::time::timeout(common::WAIT, raw.stream.write_all(&junk)).await;
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(common::WAIT, async {
        loop {
            match raw.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a client that keeps sending is closed");
    server.stop().await;
}

fn write_timeouts(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_write_timeouts_total{transport=\"http\"} "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn a_bare_stream_nobody_reads_is_dropped_after_the_write_timeout() {
    let server = TestServer::start_with(
        "[limits]\nwrite_timeout = \"1s\"\nqueue_bytes = 67108864\nmax_connections_per_ip = 1\n",
    )
    .await;
    let before = write_timeouts(&server.metrics_text().await);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let head = "GET /sse?topic=one&snapshot=false HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut stalled = Raw::on(stream, head, Send::Whole).await;
    assert!(stalled.bare());
    stalled.body_until("event: live", 1).await;
    // Never read again; publish far more than the socket buffers hold (up to 4 MiB of send buffer).
    let filler = "x".repeat(4096);
    for b in 0..30 {
        let records: Vec<(String, Value)> = (0..50)
            .map(|i| ("k".to_owned(), json!({"n": b * 50 + i, "pad": filler})))
            .collect();
        server.publish_batch("one", &records).await;
    }
    let published = Instant::now();
    loop {
        if status_of_another(&server).await == 200 {
            break;
        }
        assert!(
            published.elapsed() < Duration::from_secs(10),
            "the stalled client still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "stalled bare client gone {:?} after the last publish (write_timeout 1s)",
        published.elapsed()
    );
    assert!(write_timeouts(&server.metrics_text().await) > before);
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn the_drain_ends_bare_streams_with_retry() {
    let server = TestServer::start_with(QUIET).await;
    let mut raw = Raw::get(&server, "/sse?topic=one&snapshot=false", "", Send::Whole).await;
    assert!(raw.bare());
    raw.body_until("event: live", 1).await;
    server.shutdown.trigger();
    let rest = raw.read_to_close().await;
    let (body, ended) = dechunk(&rest);
    assert!(
        ended,
        "the terminating chunk was sent: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(body.ends_with("retry: 2000\n\n"), "{body}");
    tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn other_methods_and_paths_still_reach_hyper() {
    let server = TestServer::start().await;
    for (head, status) in [
        // axum's `get` answers HEAD too (headers only), as it always has here.
        ("HEAD /sse?topic=one HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (
            "POST /sse?topic=one HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        ("GET /ssex?topic=one HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ] {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let raw = Raw::on(stream, head, Send::Whole).await;
        assert_eq!(raw.status, status, "{head}");
        assert!(!raw.bare(), "{head}: hyper answered");
    }
    server.stop().await;
}
