//! The accept loop: HTTP/1.1 with WebSocket upgrades, a header-read timeout, a write deadline, and per-connection drain.
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
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::shutdown::Shutdown;
use crate::stall::{Watched, WriteWatch};
use crate::telemetry;

/// During a drain, how long a connection may go without taking a byte of its
/// last words (SSE `retry:`, WebSocket 1012) before it is dropped.
pub const DRAIN_STALL: Duration = Duration::from_millis(200);

/// Timers for every connection the loop serves.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the request (or WebSocket handshake) header to arrive.
    pub header_read: Duration,
    /// For a socket to take any byte while a write is waiting.
    pub write: Duration,
}

/// Serves `app` on `listener` until `shutdown` is triggered.
pub async fn serve(listener: TcpListener, app: Router, shutdown: Shutdown, timeouts: Timeouts) {
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
        shutdown
            .tracker()
            .spawn(serve_connection(stream, peer, app, conn_shutdown, timeouts));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    timeouts: Timeouts,
) {
    let watch = WriteWatch::new();
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(watch.clone());
            app.clone().oneshot(req)
        })
    };
    let io = TokioIo::new(Watched::new(stream, watch.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    // An upgraded (WebSocket) connection leaves this future at the upgrade;
    // its handler races its own writes against the same watch.
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = watch.stalled(timeouts.write) => {
            telemetry::write_timeout("http");
            tracing::debug!(%peer, "client took no bytes within the write timeout; dropped");
        }
        _ = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = watch.stalled(DRAIN_STALL) => {
                    tracing::debug!(%peer, "client stalled during the drain; dropped");
                }
            }
        }
    }
}
