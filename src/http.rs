//! The HTTP surface: the router tests and `run` both build, plus health, readiness, metrics and topic listing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::services::ServeDir;

use crate::auth::{self, Identity};
use crate::cursor::Cursor;
use crate::state::{AppState, ConnectionSlot, Refused};
use crate::{publish, sse, telemetry, ws};

/// Builds the whole application router for `state`.
pub fn router(state: AppState) -> Router {
    let static_dir = state.config.server.static_dir.clone();
    let mut router = Router::new()
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler))
        .route("/topics", get(topics))
        .route("/topics/{topic}", post(publish::handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.config.testing.echo_endpoint {
        tracing::warn!("testing.echo_endpoint is on: /echo echoes WebSocket messages");
        router = router.route("/echo", get(ws::echo));
    }
    if !static_dir.as_os_str().is_empty() {
        if !static_dir.is_dir() {
            tracing::warn!(dir = %static_dir.display(), "server.static_dir does not exist; no page is served at /");
        }
        router = router.fallback_service(ServeDir::new(static_dir));
    }
    router.with_state(state)
}

/// A JSON error body: `{"error": code, "message": message}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 `{"ready":true}` once the source has opened and warmed the hub;
/// 503 `{"ready":false,"waiting_for":...}` before that and during a drain.
async fn readyz(State(state): State<AppState>) -> Response {
    let waiting_for = if state.shutdown.is_triggered() {
        "shutdown"
    } else if !state.source.is_ready() {
        match state.config.source.kind {
            crate::config::SourceKind::Kafka => "kafka",
            crate::config::SourceKind::Embedded => "embedded_log",
        }
    } else {
        return Json(json!({"ready": true})).into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "waiting_for": waiting_for})),
    )
        .into_response()
}

async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        telemetry::render(),
    )
        .into_response()
}

/// Lists the topics this node has now (a Kafka topic deleted, or no longer
/// matched, leaves the list) with their partition count, the current cursor
/// (the live position), and `ready`: false while a topic's warm start runs
/// (subscribing then answers a retryable `unavailable`).
async fn topics(State(state): State<AppState>) -> Json<Value> {
    let mut names = state.hub.topic_names();
    names.sort();
    let list: Vec<Value> = names
        .iter()
        .filter_map(|name| state.hub.topic(name).ok())
        .map(|t| {
            json!({
                "name": &*t.name,
                "partitions": t.partition_count(),
                "cursor": Cursor::new(t.epoch, t.frontier()).encode(),
                "ready": t.is_ready() && state.source.is_ready(),
            })
        })
        .collect();
    Json(json!({ "topics": list }))
}

/// Upper bound on how long a request may take to send its header (slowloris guard).
pub fn header_timeout(state: &AppState) -> Duration {
    state.config.server.header_read_timeout
}

/// One generic answer for every authentication failure, so a prober learns nothing.
pub fn unauthorized() -> Response {
    json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "authentication required",
    )
}

/// A streaming client let in: who it is and the connection slot it holds.
pub struct Admission {
    pub identity: Identity,
    pub slot: ConnectionSlot,
}

/// Why a streaming client was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    TooManyFromIp,
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => unauthorized(),
            Refusal::TooManyFromIp => json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "too many connections from this address",
            ),
            Refusal::Unavailable => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "not accepting connections",
            ),
        }
    }
}

/// Authenticates a streaming (WebSocket or SSE) client and takes its connection slot.
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    transport: &'static str,
) -> Result<Admission, Refusal> {
    let token = auth::token_from(headers, query, &state.config.auth.cookie);
    if token.is_none() && !state.config.auth.anonymous_subscribe {
        return Err(Refusal::Unauthorized);
    }
    let identity = state.auth.identify(token.as_deref()).map_err(|e| {
        tracing::debug!(error = %e, %peer, "authentication failed");
        Refusal::Unauthorized
    })?;
    let ip = auth::client_ip(peer, headers, &state.config.server.trusted_proxies);
    let slot = state
        .connection_slot(transport, ip)
        .map_err(|refused| match refused {
            Refused::TooManyFromIp => Refusal::TooManyFromIp,
            Refused::TooMany | Refused::Draining => Refusal::Unavailable,
        })?;
    Ok(Admission { identity, slot })
}
