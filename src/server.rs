//! The accept loop: HTTP/1.1 (with WebSocket upgrades) and HTTP/2 on one port, a header-read timeout, a write deadline, and per-connection drain.
//!
//! A client that opens with the HTTP/2 preface (prior-knowledge h2c: gRPC,
//! curl `--http2-prior-knowledge`, a load balancer speaking h2 to its
//! targets) gets hyper's HTTP/2 server, anyone else its HTTP/1.1 server; the
//! first bytes are peeked, not read, so each gets its own connection type and
//! an HTTP/1.1 connection costs no more than before.
//!
//! With `[server.tls]` each connection first completes a TLS handshake
//! (within the header timeout); ALPN then picks HTTP/2 or HTTP/1.1.
//!
//! A cleartext HTTP/1 connection whose first peek already holds a whole
//! `GET /sse` head (no body, no `Upgrade`) is served without hyper, by
//! [`bare_sse`](crate::transport::bare_sse) in a task of its own: an idle
//! stream then keeps no hyper buffers. Everything else, a head that arrives
//! in pieces included, goes to hyper, which reads the same untouched bytes.
//!
//! `axum::serve` sets no header-read timer, so a client sending half a request
//! would hold its connection forever; this loop serves each connection with
//! hyper directly and sets one. Every socket is wrapped in a
//! [`Watched`](crate::stall::Watched) writer: a response (an SSE stream) whose
//! client takes no bytes for `limits.write_timeout` is dropped, and the same
//! watch reaches the WebSocket handler as a request extension. On shutdown it
//! stops accepting and asks every connection to finish its current response
//! (SSE streams end themselves); one that cannot write even that is dropped
//! after [`DRAIN_STALL`], so stalled clients never hold up a drain.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::proxy;
use crate::shutdown::Shutdown;
use crate::stall::{Watched, WriteWatch, DRAIN_STALL};
use crate::state::AppState;
use crate::telemetry;
use crate::tls::Tls;
use crate::transport::bare_sse;

/// HTTP/2 PING interval, well inside a load balancer's idle timeout (AWS ALB: 60 s).
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// A peer that does not answer a PING within this is gone.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent streams per HTTP/2 connection (each SSE or gRPC stream is one).
const H2_MAX_STREAMS: u32 = 256;
/// Largest request head, decoded, on HTTP/2.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Timers for every connection the loop serves.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the request (or WebSocket handshake) header to arrive.
    pub header_read: Duration,
    /// For a socket to take any byte while a write is waiting.
    pub write: Duration,
}

/// Binds `addr` with a listen queue of `backlog` connections (tokio's own
/// `TcpListener::bind` queues 128: a storm of reconnects overflows it).
pub fn bind_listener(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's bind does: a restarted node rebinds while old sockets linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves `app` on `listener` until `shutdown` is triggered, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: AppState,
    shutdown: Shutdown,
    timeouts: Timeouts,
    tls: Option<Tls>,
) {
    loop {
        let (stream, mut peer) = tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watch = WriteWatch::new();
        watch.set_socket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let app = app.clone();
        let state = state.clone();
        let conn_shutdown = shutdown.clone();
        let tls = tls.clone();
        shutdown.tracker().spawn(async move {
            // Which protocol, within the header deadline: the first bytes in
            // cleartext, ALPN after a TLS handshake.
            let proxied = state.config.server.proxy_protocol
                && proxy::is_trusted(&state.config.server.trusted_proxies, peer.ip());
            let opening = async {
                let mut stream = stream;
                // From a trusted balancer the client's address comes first,
                // before TLS or HTTP; a proxy's own check (LOCAL) keeps the peer.
                if proxied {
                    if let Some(client) = proxy::read_header(&mut stream).await? {
                        peer = client;
                    }
                }
                match tls {
                    None => {
                        let protocol = sniff(&stream).await?;
                        if protocol == Protocol::Http1 {
                            // A whole `GET /sse` head in hand: served without hyper (see bare_sse).
                            if let Some(head) = bare_sse::take_head(&mut stream).await? {
                                return Ok((Conn::BareSse(stream, Box::new(head)), protocol));
                            }
                        }
                        watch.set_cleartext();
                        Ok((Conn::Plain(Watched::new(stream, watch.clone())), protocol))
                    }
                    Some(tls) => {
                        // Boxed for the same reason as the HTTP/2 connection below.
                        let accept = Box::pin(tls.acceptor().accept(Watched::new(stream, watch.clone())));
                        let stream = accept.await?;
                        let protocol = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Protocol::Http2,
                            _ => Protocol::Http1,
                        };
                        Ok::<_, std::io::Error>((Conn::Tls(Box::new(stream)), protocol))
                    }
                }
            };
            let (io, protocol) = tokio::select! {
                _ = conn_shutdown.triggered() => return,
                // Boxed, so its timer and handshake state are freed once the connection is open.
                opened = Box::pin(tokio::time::timeout(timeouts.header_read, opening)) => match opened {
                    Ok(Ok(opened)) => opened,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %peer, "connection closed before its first request");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "no request (or TLS handshake) within the header timeout; dropped");
                        return;
                    }
                },
            };
            match io {
                // Its own task, so an idle stream costs its own small future,
                // not one sized for a hyper connection.
                Conn::BareSse(stream, head) => {
                    let task = bare_sse::serve(stream, head, peer, state, watch, timeouts.write);
                    static SIZE: std::sync::Once = std::sync::Once::new();
                    SIZE.call_once(|| tracing::debug!(bytes = std::mem::size_of_val(&task), "bare SSE task future"));
                    conn_shutdown.tracker().spawn(task);
                }
                // HTTP/2 in a task of its own as well: this one is sized for
                // the opening and an HTTP/1.1 connection, which an HTTP/2
                // connection (a gRPC stream's) would otherwise keep for its life.
                Conn::Plain(io) if protocol == Protocol::Http2 => {
                    let task = serve_http2(io, watch, peer, app, conn_shutdown.clone(), timeouts);
                    static SIZE: std::sync::Once = std::sync::Once::new();
                    SIZE.call_once(|| tracing::debug!(bytes = std::mem::size_of_val(&task), "HTTP/2 connection task future"));
                    conn_shutdown.tracker().spawn(task);
                }
                Conn::Tls(io) if protocol == Protocol::Http2 => {
                    let task = serve_http2(*io, watch, peer, app, conn_shutdown.clone(), timeouts);
                    conn_shutdown.tracker().spawn(task);
                }
                Conn::Plain(io) => serve_http1(io, watch, peer, app, conn_shutdown, timeouts).await,
                // Boxed: a TLS connection's state is larger, and inline it would
                // make every cleartext connection's task as large.
                Conn::Tls(io) => Box::pin(serve_http1(*io, watch, peer, app, conn_shutdown, timeouts)).await,
            }
        });
    }
}

enum Conn {
    Plain(Watched<TcpStream>),
    /// A cleartext `GET /sse` whose head has been read.
    BareSse(TcpStream, Box<bare_sse::Head>),
    Tls(Box<tokio_rustls::server::TlsStream<Watched<TcpStream>>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// The HTTP/2 connection preface starts with `PRI ` (a method HTTP/1.1 reserves for exactly this).
const PREFACE_START: &[u8] = b"PRI ";

/// Tells a cleartext HTTP/2 client (prior knowledge) from an HTTP/1.1 one by
/// peeking at its first bytes, which stay in the socket for the chosen
/// protocol to read. Each protocol then gets hyper's own connection type,
/// so an HTTP/1.1 connection costs what it did before HTTP/2 existed here.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; 4];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !PREFACE_START.starts_with(&buf[..n.min(4)]) {
            return Ok(Protocol::Http1);
        }
        if n >= PREFACE_START.len() {
            return Ok(Protocol::Http2);
        }
        // A prefix of "PRI " and nothing more yet: the peek would return at once, so wait a little.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs hyper's tasks for HTTP/2 streams on the drain's tracker, so `main` waits for them too.
#[derive(Clone)]
struct TrackedExecutor(tokio_util::task::TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The HTTP/2 settings every HTTP/2 connection is served with.
fn http2_builder(shutdown: &Shutdown) -> http2::Builder<TrackedExecutor> {
    let mut builder = http2::Builder::new(TrackedExecutor(shutdown.tracker().clone()));
    builder
        .timer(TokioTimer::new())
        // Pings find dead peers and keep idle streams alive through load balancers.
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        // Small windows and frames: an idle HTTP/2 connection should cost little.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024)
        .max_send_buf_size(64 * 1024)
        // A client resetting streams in a loop (CVE-2023-44487) is cut off.
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(64));
    builder
}

/// Drives a hyper connection (`$conn`, pinned) against the write watch, the
/// first-request guard and the drain.
macro_rules! drive {
    ($conn:ident, $first_request:ident, $watch:ident, $peer:ident, $shutdown:ident, $timeouts:ident) => {
        // An upgraded (WebSocket) connection leaves this future at the upgrade;
        // its handler races its own writes against the same watch.
        tokio::select! {
            result = $conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, peer = %$peer, "connection ended with an error");
                }
            }
            _ = $first_request => {
                tracing::debug!(peer = %$peer, "no request head within the header timeout; dropped");
            }
            _ = $watch.stalled($timeouts.write) => {
                telemetry::write_timeout("http");
                tracing::debug!(peer = %$peer, "client took no bytes within the write timeout; dropped");
            }
            _ = $shutdown.triggered() => {
                // HTTP/1.1: finish the current response; HTTP/2: GOAWAY, then let open streams end.
                $conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = $conn.as_mut() => {}
                    _ = $watch.stalled(DRAIN_STALL) => {
                        tracing::debug!(peer = %$peer, "client stalled during the drain; dropped");
                    }
                    // An HTTP/2 stream whose flow-control window the client never
                    // opens has no write waiting: bound the drain all the same.
                    _ = tokio::time::sleep($timeouts.write) => {
                        tracing::debug!(peer = %$peer, "connection did not finish within the write timeout of the drain; dropped");
                    }
                }
            }
        }
    };
}

/// The service every connection's requests go to: `$app`, with the peer's
/// address and the write watch as extensions; `$started` is set by the first request.
macro_rules! service {
    ($app:ident, $peer:ident, $watch:ident, $started:ident) => {{
        let watch = $watch.clone();
        let started = Arc::clone(&$started);
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo($peer));
            req.extensions_mut().insert(watch.clone());
            $app.clone().oneshot(req)
        })
    }};
}

/// Serves an HTTP/1.1 connection (a WebSocket leaves it at the upgrade, for a task of its own).
async fn serve_http1<IO>(
    stream: IO,
    watch: WriteWatch,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    timeouts: Timeouts,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = Arc::new(AtomicBool::new(false));
    let service = service!(app, peer, watch, started);
    // hyper's header timer covers the request heads.
    let first_request = std::future::pending::<()>();
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    drive!(conn, first_request, watch, peer, shutdown, timeouts);
}

/// Serves an HTTP/2 connection, in a task of its own: an idle one (a gRPC
/// stream's) keeps this future, hyper's connection (boxed) and its streams.
async fn serve_http2<IO>(
    stream: IO,
    watch: WriteWatch,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    timeouts: Timeouts,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Set once the first request's head has arrived.
    let started = Arc::new(AtomicBool::new(false));
    let service = service!(app, peer, watch, started);
    // The preface, SETTINGS and first HEADERS must arrive within the header timeout.
    let first_request = async {
        tokio::time::sleep(timeouts.header_read).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    // Boxed: the connection's state is hyper's and h2's, sized for them.
    let mut conn =
        Box::pin(http2_builder(&shutdown).serve_connection(TokioIo::new(stream), service));
    drive!(conn, first_request, watch, peer, shutdown, timeouts);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniffs_the_http2_preface_from_the_first_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Protocol::Http1)),
            (b"POST /x HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"PUT", Some(Protocol::Http1)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2)),
            (b"PR", None),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, sent)
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_millis(200), sniff(&server)).await;
            match want {
                Some(want) => assert_eq!(got.unwrap().unwrap(), want, "{sent:?}"),
                None => assert!(got.is_err(), "a partial prefix waits for more"),
            }
            // Peeking consumed nothing.
            let mut buf = vec![0u8; sent.len()];
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
                .await
                .unwrap();
            assert_eq!(buf, sent);
        }
    }
}
