//! The accept loop: HTTP/1.1 (with WebSocket upgrades) and HTTP/2 on one port, a header-read timeout, a write deadline, and per-connection drain.
//!
//! Each connection is served by hyper-util's auto builder: a client that opens
//! with the HTTP/2 preface (prior-knowledge h2c: gRPC, curl
//! `--http2-prior-knowledge`, a load balancer speaking h2 to its targets) gets
//! HTTP/2, anyone else HTTP/1.1.
//!
//! With `[server.tls]` each connection first completes a TLS handshake
//! (within the header timeout); ALPN then picks HTTP/2 or HTTP/1.1.
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

use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::shutdown::Shutdown;
use crate::stall::{Watched, WriteWatch};
use crate::telemetry;
use crate::tls::Tls;

/// During a drain, how long a connection may go without taking a byte of its
/// last words (SSE `retry:`, WebSocket 1012) before it is dropped.
pub const DRAIN_STALL: Duration = Duration::from_millis(200);
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

/// Serves `app` on `listener` until `shutdown` is triggered, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: Shutdown,
    timeouts: Timeouts,
    tls: Option<Tls>,
) {
    loop {
        let (stream, peer) = tokio::select! {
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
        let app = app.clone();
        let conn_shutdown = shutdown.clone();
        let tls = tls.clone();
        shutdown.tracker().spawn(async move {
            let watch = WriteWatch::new();
            let watched = Watched::new(stream, watch.clone());
            match tls {
                None => serve_connection(watched, watch, peer, app, conn_shutdown, timeouts).await,
                Some(tls) => {
                    // The handshake gets the header deadline: a client that stalls in it is dropped.
                    let handshake = tls.acceptor().accept(watched);
                    let stream = tokio::select! {
                        _ = conn_shutdown.triggered() => return,
                        done = tokio::time::timeout(timeouts.header_read, handshake) => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake not done within the header timeout; dropped");
                                return;
                            }
                        },
                    };
                    serve_connection(stream, watch, peer, app, conn_shutdown, timeouts).await
                }
            }
        });
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

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn builder(shutdown: &Shutdown, timeouts: Timeouts) -> auto::Builder<TrackedExecutor> {
    let mut builder = auto::Builder::new(TrackedExecutor(shutdown.tracker().clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
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

async fn serve_connection<IO>(
    stream: IO,
    watch: WriteWatch,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    timeouts: Timeouts,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Set once the first request's head has arrived (either protocol).
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let watch = watch.clone();
        let started = Arc::clone(&started);
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(watch.clone());
            app.clone().oneshot(req)
        })
    };
    let io = TokioIo::new(stream);
    let builder = builder(&shutdown, timeouts);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // HTTP/1.1's header timer does not cover the HTTP/2 preface, its first
    // HEADERS frame, or the bytes the server reads to tell the two apart: a
    // connection with no complete request head within the header timeout is
    // dropped, on either protocol.
    let first_request = async {
        tokio::time::sleep(timeouts.header_read).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    // An upgraded (WebSocket) connection leaves this future at the upgrade;
    // its handler races its own writes against the same watch.
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = first_request => {
            tracing::debug!(%peer, "no request head within the header timeout; dropped");
        }
        _ = watch.stalled(timeouts.write) => {
            telemetry::write_timeout("http");
            tracing::debug!(%peer, "client took no bytes within the write timeout; dropped");
        }
        _ = shutdown.triggered() => {
            // HTTP/1.1: finish the current response; HTTP/2: GOAWAY, then let open streams end.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = watch.stalled(DRAIN_STALL) => {
                    tracing::debug!(%peer, "client stalled during the drain; dropped");
                }
                // An HTTP/2 stream whose flow-control window the client never
                // opens has no write waiting: bound the drain all the same.
                _ = tokio::time::sleep(timeouts.write) => {
                    tracing::debug!(%peer, "connection did not finish within the write timeout of the drain; dropped");
                }
            }
        }
    }
}
