//! pushgate: a push gateway from a log (Kafka, Kinesis, or an embedded log) to WebSocket, SSE and gRPC clients.
//!
//! # Layout
//!
//! ```text
//! source::{embedded, kafka, kinesis}  reads/appends the log; feeds every record to the hub
//!                            (kafka::debezium: CDC change events; kafka::security: TLS/SASL;
//!                            kinesis: shards as partitions, parents before children)
//!        │
//!        ▼
//! hub                 per topic: partitions (hub::partition: ring of recent records +
//!        │            latest value per key), hub::index (key -> subs), hub::sub
//!        │            (filter, catch-up backlog), hub::group (subs sharing a spec:
//!        │            evaluated and encoded once per record), hub::rate (max_rate:
//!        │            one timer per group); fan-out under the partition lock
//!        ▼
//! outbox              per connection: bounded (bytes) queue of shared records
//!        │
//!        ▼
//! transport::{ws,sse} GET /ws (many subscriptions per connection), GET /sse (one per
//!                     stream, cursor as event id); every write has a deadline (stall);
//!                     ws_io: record frames straight to the socket beside tungstenite's
//! transport::grpc     pushgate.v1.Gateway (proto/): Subscribe (one per call) and
//!                     Publish, gRPC-Web via tonic-web; the record's envelope encoded once
//! transport::{view,records} GET /topics/{t}/view (the view by page), GET
//!                     /topics/{t}/records (a resume's catch-up as one HTTP answer)
//!
//! session    subscribe checks, snapshot / resume decision, catch-up (every transport)
//! admission  token, per-IP limit and connection slot of a streaming client
//! publish    POST /topics/{topic};  reply: the JSON error body every endpoint uses
//! http       router, health, readiness, metrics, topic list
//! server     accept loop: HTTP/1.1 or HTTP/2 (peeked preface, or ALPN);  tls: [server.tls]
//! record     the encoded-once record; Kafka-compatible key partitioner
//! cursor     the resume token: epoch + next offset per partition (version 1), or
//!            per shard an opaque source position / closed marker (version 2, Kinesis)
//! shaping    what shapes delivery beyond the key: the delivery spec (value filters,
//!            client's AND token's; fields; max_rate; delta as JSON Patch),
//!            normalized so equal specs share a group
//! protocol   client messages, control messages, error and close codes
//! auth       JWT verification, grants, origin checks, publish rate, revocations
//! admin      /admin/...: connections, topics; the control topic (revocations and
//!            grant changes every node reads from the log); `admin/stats.rs`:
//!            GET /admin/stats and the ops page (static/ops.*) at /admin/ops
//! token_subs the token's `subscribe_on_connect` as subscribe requests (`token-N`, `{sub}`)
//! proxy      trusted proxies (addresses, CIDR), X-Forwarded-For, PROXY protocol v1/v2
//! stall      write deadlines: notes when a client's socket stops taking bytes
//! config     TOML + environment, checked before binding; [[topics]] by name or pattern
//! state      the shared handle;  shutdown: drain signal and task tracking
//! telemetry  metric names;  demo: the simulated stock ticker
//! ```
//!
//! Imports point one way (`tests/layout.rs` checks it): transports and
//! publish depend on session, admission and reply; session on hub and source;
//! hub on outbox, record and cursor; nothing depends back on http or a transport.
//! The architecture, with its invariants and the tests that hold them, is in
//! `docs/ARCHITECTURE.md`.
//!
//! # The library's API
//!
//! Only what `main.rs`, the fuzz targets (`fuzz/`) and the integration tests
//! (`tests/`) use is `pub`: [`run`], [`Listeners`], [`RunError`], [`config`]
//! ([`Config`], which `main.rs` loads and overrides from its flags),
//! [`shutdown`] ([`Shutdown`]), [`cursor`] (tests decode the cursors they
//! receive; a fuzz target), [`protocol`] (client messages: a fuzz target, the
//! property and contract tests) and [`delta`] (the JSON Patch a `delta`
//! subscription receives; `tests/delta.rs` checks it against an RFC 6902 library)
//! and [`TOPIC_READY_WAIT`] (`tests/warm_start.rs` times it).
//! Every other module is `pub(crate)`, so rustc reports what nothing uses.
//! The load generator (`loadtest/`) is a client only and uses none of it.
//!
//! [`run`] serves until its [`Shutdown`] is triggered, then drains: every
//! WebSocket gets close 1012, every SSE stream a last `retry:` line, and it
//! returns once all connections are gone or `server.shutdown_grace` elapsed.

// The hub's shard-topic and topic-removal paths serve Kafka and Kinesis only:
// a build without them (`--no-default-features`) leaves them unused.
#![cfg_attr(not(all(feature = "kafka", feature = "kinesis")), allow(dead_code))]

pub(crate) mod admin;
pub(crate) mod admission;
mod assets;
pub(crate) mod auth;
pub mod config;
pub mod cursor;
pub(crate) mod demo;
pub(crate) mod http;
pub(crate) mod hub;
mod log_reads;
pub(crate) mod outbox;
pub mod protocol;
pub(crate) mod proxy;
pub(crate) mod publish;
pub(crate) mod record;
pub(crate) mod reply;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod shaping;
pub mod shutdown;
pub(crate) mod source;
pub(crate) mod stall;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod token_subs;
pub(crate) mod traces;
pub(crate) mod transport;

use std::sync::Arc;

use tokio::net::TcpListener;

/// The decoding cost of each schema-registry encoding: (encoding, bytes per record,
/// ns per record) over `records` decodes; `loadtest/registry-decode-cost.sh` prints it.
#[cfg(feature = "kafka")]
#[doc(hidden)]
pub fn registry_decode_cost(records: usize) -> Vec<(&'static str, usize, f64)> {
    source::kafka::registry::bench::run(records)
}

/// The view's own cost (memory per key, ingest time per update, what concurrent
/// snapshots add); `examples/view_cost.rs` prints it.
#[doc(hidden)]
pub fn view_cost(keys: usize, updates: usize, snapshots: usize) -> hub::bench::ViewCost {
    hub::bench::run(keys, updates, snapshots)
}

pub use config::Config;
/// How long a subscription to a topic still warming up waits before `unavailable` (tests time it).
pub use hub::TOPIC_READY_WAIT;
pub use server::bind_listener;
/// RFC 6902 patches between two JSON values, as `delta` subscriptions receive them.
pub use shaping::delta;
pub use shutdown::Shutdown;

use hub::Hub;
use state::AppState;

/// The sockets `run` serves; bound by the caller so tests can use port 0.
pub struct Listeners {
    pub http: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] source::OpenError),
    #[error("{0}")]
    Auth(#[from] auth::AuthSetupError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Traces(#[from] traces::TracesError),
    #[error("cannot listen on admin.listen {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the gateway on `listeners` until `shutdown` is triggered, then drains.
///
/// The HTTP surface answers from the first moment (`/healthz` 200, `/readyz`
/// 503) while the source opens; subscriptions and publishes are refused as
/// retryable until it has. A source that cannot open (a broker unreachable for
/// `kafka.startup_timeout`, a log that cannot be read) ends the run with its error.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
    telemetry::install();
    traces::start(&config.telemetry)?;
    let hub = Arc::new(Hub::new());
    let (opening, opened) = source::open(
        &config.source_settings(),
        Arc::clone(&hub),
        shutdown.clone(),
    );
    if config.open_publish_on_network() {
        tracing::warn!(
            listen = %config.server.listen,
            "ANONYMOUS PUBLISH IS ON AND THE LISTEN ADDRESS IS NOT LOOPBACK: anyone who can reach this port can write to your topics"
        );
    }
    let grace = config.server.shutdown_grace;
    // Half the grace at most: the last clients' closes must finish within it.
    shutdown.set_spread(config.server.drain_spread.min(grace / 2));
    let timeouts = server::Timeouts {
        header_read: config.server.header_read_timeout,
        write: config.limits.write_timeout,
    };
    let state = AppState::new(config, Arc::clone(&hub), opening.clone(), shutdown.clone())?;
    if !state.config.auth.jwks_file.as_os_str().is_empty() {
        spawn_jwks_reloader(&state);
    }
    let tls = match &state.config.server.tls {
        Some(config) => Some(tls::Tls::start(config, &shutdown)?),
        None => None,
    };
    if let Some(addr) = state
        .config
        .admin
        .listen
        .filter(|_| state.config.admin.enabled)
    {
        serve_admin(&state, addr).await?;
    }
    let app = http::router(state.clone());
    let serving = server::serve(
        listeners.http,
        app,
        state.clone(),
        shutdown.clone(),
        timeouts,
        tls,
    );
    tokio::pin!(serving);
    let opened = tokio::select! {
        // Shut down before the source opened: nothing to drain but connections.
        () = &mut serving => None,
        opened = opened => Some(opened),
    };
    match opened {
        Some(Ok(source)) => {
            opening.set(source);
            admin::spawn_reader(&state);
            if state.config.demo.enabled {
                demo::spawn(&state);
            }
            serving.await;
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the source could not open; stopping");
            shutdown.trigger();
            serving.await;
            let _ = tokio::time::timeout(grace, shutdown.drained()).await;
            traces::shutdown(grace).await;
            return Err(e.into());
        }
        None => {}
    }

    tracing::info!(connections = state.open_connections(), "draining");
    match tokio::time::timeout(grace, shutdown.drained()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            connections = state.open_connections(),
            "shutdown grace elapsed with connections still open"
        ),
    }
    if let Some(source) = opening.opened() {
        // Makes the embedded log durable and marks the shutdown clean.
        if tokio::time::timeout(grace, source.close()).await.is_err() {
            tracing::warn!("the source did not close within the shutdown grace");
        }
    }
    // Last: the spans of the drain's closing connections go out too.
    traces::shutdown(grace).await;
    Ok(())
}

/// Serves the admin routes alone on `admin.listen` until the drain starts.
/// A plain axum server: its clients are operators, not the public.
async fn serve_admin(state: &AppState, addr: std::net::SocketAddr) -> Result<(), RunError> {
    let listener = server::bind_listener(addr, state.config.server.listen_backlog)
        .map_err(|source| RunError::AdminListen { addr, source })?;
    // The bound address (the port when `admin.listen` asks for port 0).
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "admin API listening");
    let app = admin::router(state.clone());
    let shutdown = state.shutdown.clone();
    state.shutdown.tracker().spawn(async move {
        let stopped = async move { shutdown.triggered().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok(())
}

/// Re-reads the JWKS file when it changes, so keys rotate without a restart.
fn spawn_jwks_reloader(state: &AppState) {
    let auth = std::sync::Arc::clone(&state.auth);
    let every = state.config.auth.jwks_refresh;
    let shutdown = state.shutdown.clone();
    state.shutdown.tracker().spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = tick.tick() => {
                    let auth = std::sync::Arc::clone(&auth);
                    // File I/O and key parsing: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || auth.reload_jwks_if_changed()).await;
                }
            }
        }
    });
}
