//! The accept loop: HTTP/1.1 with WebSocket upgrades, a header-read timeout, and per-connection drain.
//!
//! `axum::serve` sets no header-read timer, so a client sending half a request
//! would hold its connection forever; this loop serves each connection with
//! hyper directly and sets one. On shutdown it stops accepting and asks every
//! connection to finish its current response (SSE streams end themselves).

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

/// Serves `app` on `listener` until `shutdown` is triggered.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: Shutdown,
    header_timeout: Duration,
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
        shutdown.tracker().spawn(serve_connection(
            stream,
            peer,
            app,
            conn_shutdown,
            header_timeout,
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    header_timeout: Duration,
) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        _ = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
