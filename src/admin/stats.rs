//! `GET /admin/stats` and the ops page (`/admin/ops`): the node's own view for an operator, read by polling.
//!
//! Counters are totals since the process started: the page (or a script)
//! takes two readings and divides, so the node keeps no time windows.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;
use crate::telemetry;

/// Every transport a connection can have, so each appears with 0 too.
const TRANSPORTS: [&str; 3] = ["ws", "sse", "grpc"];

/// `GET /admin/stats`: readiness, connections per transport, totals of
/// records, deliveries and refusals, record age at first write (count and
/// sum), revocations in force, and when it was read.
pub(crate) async fn stats(State(state): State<AppState>) -> Response {
    let mut connections: serde_json::Map<String, Value> = TRANSPORTS
        .iter()
        .map(|t| ((*t).to_owned(), 0.into()))
        .collect();
    for (transport, n) in state.connection_counts() {
        connections.insert(transport.to_owned(), n.into());
    }
    let totals = telemetry::totals();
    let waiting_for = state.waiting_for();
    Json(json!({
        "ready": waiting_for.is_none(),
        "waiting_for": waiting_for,
        "time_ms": now_ms(),
        "connections": connections,
        // Clients' subscriptions: the node's own reader of the control topic is not one.
        "subscriptions": state.hub.topic_names().iter()
            .filter(|name| !state.config.is_control_topic(name))
            .filter_map(|name| state.hub.topic(name).ok())
            .map(|t| t.subscriptions().len())
            .sum::<usize>(),
        "records_in_total": totals.records_in,
        "deliveries_total": totals.deliveries,
        "connections_refused_total": totals.connections_refused,
        "record_age": {
            "count": totals.record_age_count,
            "sum_seconds": totals.record_age_sum_micros as f64 / 1e6,
        },
        "revocations_in_force": state.auth.revocations.list().len(),
    }))
    .into_response()
}

/// Now, in Unix milliseconds (the page's rates use the node's clock, not the browser's).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `GET /admin/ops`: the ops page, built into the binary, wherever the admin
/// API is served (so it reads `/admin/...` from its own origin). It holds
/// no secret: the operator types the token into it.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    asset("/ops.html", headers).await
}

/// `GET /admin/ops.js`: the page's script.
pub(crate) async fn script(headers: HeaderMap) -> Response {
    asset("/ops.js", headers).await
}

/// `GET /admin/ops.css`: the page's style.
pub(crate) async fn style(headers: HeaderMap) -> Response {
    asset("/ops.css", headers).await
}

async fn asset(path: &'static str, headers: HeaderMap) -> Response {
    let mut response = crate::assets::embedded(Uri::from_static(path), headers).await;
    // The token typed into the page is kept from other origins' frames and scripts.
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
