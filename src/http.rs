//! The HTTP surface: the router tests and `run` both build, plus health, readiness, metrics and topic listing.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::services::ServeDir;

use crate::reply::unauthorized;
use crate::source::Source;
use crate::state::AppState;
use crate::transport::{grpc, records, sse, view, ws};
use crate::{admin, auth};
use crate::{publish, telemetry};

/// Builds the whole application router for `state`.
pub fn router(state: AppState) -> Router {
    let static_dir = state.config.server.static_dir.clone();
    let mut router = Router::new()
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler))
        .route("/topics", get(topics))
        .route("/topics/{topic}", post(publish::handler))
        .route("/topics/{topic}/view", get(view::handler))
        .route("/topics/{topic}/records", get(records::handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin::on_main_listener(&state))
        // gRPC and gRPC-Web: every method of pushgate.v1.Gateway (unknown ones answer UNIMPLEMENTED).
        .route_service(
            &format!("{}{{method}}", grpc::SERVICE_PATH),
            grpc::service(state.clone()),
        );
    if state.config.testing.echo_endpoint {
        tracing::warn!("testing.echo_endpoint is on: /echo echoes WebSocket messages");
        router = router.route("/echo", get(ws::echo));
    }
    match static_dir {
        // Not set: the page built into the binary.
        None => router = router.fallback(crate::assets::embedded),
        // Set to "": no page.
        Some(dir) if dir.as_os_str().is_empty() => {}
        Some(dir) => {
            if !dir.is_dir() {
                tracing::warn!(dir = %dir.display(), "server.static_dir does not exist; no page is served at /");
            }
            router = router.fallback_service(ServeDir::new(dir));
        }
    }
    router.with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 `{"ready":true}` once the source has opened and warmed the hub (with
/// `unavailable_topics`, topic -> cause, for configured topics it may not read);
/// 503 `{"ready":false,"waiting_for":...}` before that and during a drain.
async fn readyz(State(state): State<AppState>) -> Response {
    let Some(waiting_for) = state.waiting_for() else {
        // Ready for what it can serve; a topic it cannot (Kafka ACLs) is named
        // with the cause, without taking the node out of the load balancer.
        let unavailable = state.source.unavailable_topics();
        if unavailable.is_empty() {
            return Json(json!({"ready": true})).into_response();
        }
        let topics: serde_json::Map<String, serde_json::Value> = unavailable
            .into_iter()
            .map(|(name, cause)| (name, cause.into()))
            .collect();
        return Json(json!({"ready": true, "unavailable_topics": topics})).into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "waiting_for": waiting_for})),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Lag is read from the hub at scrape time: a few atomics per partition.
    for name in state.hub.topic_names() {
        if let Ok(topic) = state.hub.topic(&name) {
            telemetry::view_bytes(&name, topic.view_bytes());
            for (p, lag) in topic.lag().into_iter().enumerate() {
                if let Some(lag) = lag {
                    telemetry::partition_lag(&name, p as u32, lag);
                }
            }
        }
    }
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
///
/// With `auth.anonymous_subscribe` off, listing needs a valid token too:
/// topic names and positions are not for anyone who can reach the port.
async fn topics(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !state.config.auth.anonymous_subscribe {
        let token = auth::token_from(&headers, query.as_deref(), &state.config.auth.cookie);
        if token.is_none() || state.auth.identify(token.as_deref()).is_err() {
            return unauthorized();
        }
    }
    let mut names = state.hub.topic_names();
    names.sort();
    let list: Vec<Value> = names
        .iter()
        .filter(|name| !state.config.is_control_topic(name))
        .filter_map(|name| state.hub.topic(name).ok())
        .map(|t| {
            json!({
                "name": &*t.name,
                "partitions": t.partition_count(),
                "cursor": t.encode_cursor(&t.frontier()),
                "ready": t.is_ready() && state.source.is_ready(),
            })
        })
        .collect();
    Json(json!({ "topics": list })).into_response()
}
