//! pushgate-floor: the smallest fan-out server on pushgate's own stack, the floor a load-test run is measured against.
//!
//! Same stack as pushgate: tokio, hyper's HTTP/1 server with `TCP_NODELAY`,
//! tokio-tungstenite with pushgate's default buffer sizes (64-byte read
//! buffer, no write buffer) for reading, record frames written pre-encoded
//! straight to the socket in vectored writes (as pushgate does since
//! 2026-12-03), and a hyper body stream for SSE.
//! It speaks just enough of pushgate's wire protocol for the load generator
//! (`GET /ws` + a `subscribe` message, `GET /sse?key=K`, `POST /topics/T`
//! with `{"records":[{"key":..,"data":..}]}`) and does nothing else: each
//! published record is encoded once and written to every subscriber of its
//! key, through one `tokio::sync::broadcast` channel per key. No cursors, no
//! history, no bounds beyond the channel's, no auth, no metrics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tower::ServiceExt;

/// Messages a slow subscriber may fall behind before it skips ahead.
const CHANNEL: usize = 4096;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18085")]
    listen: SocketAddr,
}

/// One broadcast channel of pre-encoded frames per key: (WebSocket text frame, SSE event).
#[derive(Clone, Default)]
struct Keys(Arc<Mutex<HashMap<String, broadcast::Sender<Frame>>>>);

#[derive(Clone)]
struct Frame {
    /// The whole WebSocket frame, header included.
    ws: Bytes,
    sse: Bytes,
}

impl Keys {
    fn subscribe(&self, key: &str) -> broadcast::Receiver<Frame> {
        let mut map = self.0.lock().expect("keys");
        map.entry(key.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL).0)
            .subscribe()
    }

    fn sender(&self, key: &str) -> Option<broadcast::Sender<Frame>> {
        self.0.lock().expect("keys").get(key).cloned()
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/sse", get(sse))
        .route("/topics/{topic}", post(publish))
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(Keys::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "pushgate-floor listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn publish(State(keys): State<Keys>, Path(topic): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let records = match body.get("records") {
        Some(Value::Array(records)) => records.clone(),
        _ => vec![Value::Object(body)],
    };
    for record in &records {
        let key = record.get("key").and_then(Value::as_str).unwrap_or("");
        let Some(sender) = keys.sender(key) else {
            continue;
        };
        // Encoded once, shared by every subscriber of the key.
        let json = serde_json::json!({
            "type": "record", "topic": topic, "key": key, "data": record.get("data"),
        })
        .to_string();
        let sse = Bytes::from(format!("data: {json}\n\n"));
        let _ = sender.send(Frame {
            ws: text_frame(&json),
            sse,
        });
    }
    (StatusCode::OK, "{}").into_response()
}

/// A final, unmasked text frame (RFC 6455 5.2).
fn text_frame(text: &str) -> Bytes {
    let len = text.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    if len < 126 {
        frame.push(len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(text.as_bytes());
    Bytes::from(frame)
}

async fn ws(State(keys): State<Keys>, mut req: Request) -> Response {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(64)
            .write_buffer_size(0);
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        ws_connection(socket, keys).await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("base64"),
            ),
        ],
    )
        .into_response()
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn ws_connection(mut socket: Socket, keys: Keys) {
    // The first message names the key: {"type":"subscribe","keys":["k"],...}.
    let key = match socket.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(text.as_str())
            .ok()
            .and_then(|v| v["keys"][0].as_str().map(str::to_owned))
            .unwrap_or_default(),
        _ => return,
    };
    let mut rx = keys.subscribe(&key);
    let subscribed = Message::text(r#"{"type":"subscribed"}"#);
    if socket.send(subscribed).await.is_err() {
        return;
    }
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(frame) => {
                    // What piled up goes out in one vectored write, straight to
                    // the socket. (The load generator sends nothing after its
                    // subscribe, so tungstenite never has a pong half-written.)
                    batch.push(frame.ws);
                    while let Ok(frame) = rx.try_recv() {
                        batch.push(frame.ws);
                    }
                    if write_all(socket.get_mut(), &batch).await.is_err() {
                        return;
                    }
                    batch.clear();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = socket.next() => match message {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

async fn write_all(
    io: &mut TokioIo<hyper::upgrade::Upgraded>,
    frames: &[Bytes],
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        frames.iter().map(|f| std::io::IoSlice::new(f)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

async fn sse(State(keys): State<Keys>, Query(query): Query<HashMap<String, String>>) -> Response {
    let key = query.get("key").cloned().unwrap_or_default();
    let rx = keys.subscribe(&key);
    let head = futures_util::stream::iter([Ok::<Bytes, Infallible>(Bytes::from_static(
        b"event: subscribed\ndata: {}\n\n",
    ))]);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(frame) => return Some((Ok(frame.sse), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut response = Response::new(Body::from_stream(head.chain(frames)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}
