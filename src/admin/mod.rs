//! The operator's API under `/admin`: open connections (listed, closed), what each topic holds, counters, revocations and grant changes (through the control topic), behind a static bearer token; the ops page.
//!
//! Off unless `admin.enabled`: every `/admin` path is then 404. The token is
//! `admin.token`, compared in constant time; a client's JWT is never accepted
//! here. With `admin.listen` the routes are served on that address only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

mod control;
mod stats;
pub(crate) use control::spawn_reader;

use crate::hub::{PartitionStats, Sub};
use crate::outbox::Outbox;
use crate::reply::json_error;
use crate::source::Source;
use crate::state::AppState;

/// The admin routes for the main listener: all of them when enabled and no
/// `admin.listen` is set, otherwise a 404 for every `/admin` path (the
/// embedded page's fallback must not answer them).
pub(crate) fn on_main_listener(state: &AppState) -> Router<AppState> {
    let admin = &state.config.admin;
    if admin.enabled && admin.listen.is_none() {
        routes(state)
    } else {
        Router::new()
            .route("/admin", axum::routing::any(not_found))
            .route("/admin/{*rest}", axum::routing::any(not_found))
    }
}

/// The admin routes alone, for `admin.listen`.
pub(crate) fn router(state: AppState) -> Router {
    routes(&state).fallback(not_found).with_state(state)
}

fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/connections", get(connections))
        .route(
            "/admin/connections/{id}",
            axum::routing::delete(close_connection),
        )
        .route("/admin/topics", get(topics))
        .route(
            "/admin/revocations",
            get(control::revocations).post(control::revoke),
        )
        .route(
            "/admin/revocations/{target}",
            axum::routing::delete(control::lift),
        )
        .route("/admin/grants", axum::routing::post(control::grants))
        .route("/admin/stats", get(stats::stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        // The page and its script carry no data: served without the token.
        .route("/admin/ops", get(stats::page))
        .route("/admin/ops.js", get(stats::script))
        .route("/admin/ops.css", get(stats::style))
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such path")
}

/// Lets through requests bearing `admin.token`; 401 otherwise.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let expected = state.config.admin.token.expose().as_bytes();
    match bearer(request.headers()) {
        Some(given) if !expected.is_empty() && same(given.as_bytes(), expected) => {
            next.run(request).await
        }
        _ => {
            let mut response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin token is required",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pushgate-admin\""),
            );
            response
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal, in time that depends on `expected`'s length only: every byte of it
/// is compared, whatever `given` holds.
fn same(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    std::hint::black_box(diff) == 0
}

#[derive(Debug, Deserialize)]
struct ConnectionQuery {
    subject: Option<String>,
    topic: Option<String>,
}

/// `GET /admin/connections?subject=&topic=`: every open streaming connection
/// (both filters optional, exact match), with its subscriptions.
async fn connections(
    State(state): State<AppState>,
    Query(query): Query<ConnectionQuery>,
) -> Response {
    // Subscriptions by the queue they feed: one walk of every topic's index.
    let mut subs: HashMap<usize, Vec<(String, Value)>> = HashMap::new();
    let mut names = state.hub.topic_names();
    names.sort();
    for name in names {
        let Ok(topic) = state.hub.topic(&name) else {
            continue;
        };
        // A live subscription has been queued everything up to the frontier.
        let cursor = topic.encode_cursor(&topic.frontier());
        for sub in topic.subscriptions() {
            let entry = json!({
                "id": sub.id,
                "topic": &*name,
                "cursor": if sub.is_live() { Value::from(cursor.as_str()) } else { Value::Null },
            });
            subs.entry(queue_id(sub.outbox()))
                .or_default()
                .push((name.to_string(), entry));
        }
    }
    let list: Vec<Value> = state
        .connections()
        .into_iter()
        .filter(|c| {
            query
                .subject
                .as_deref()
                .is_none_or(|s| c.subject.as_deref() == Some(s))
        })
        .filter_map(|c| {
            let own = subs.remove(&queue_id(&c.outbox)).unwrap_or_default();
            if let Some(topic) = &query.topic {
                if !own.iter().any(|(name, _)| name == topic) {
                    return None;
                }
            }
            Some(json!({
                "id": c.id,
                "subject": c.subject.as_deref(),
                "transport": c.transport,
                "peer": c.peer.to_string(),
                "subscriptions": own.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
                "queue_bytes": c.outbox.queued_bytes(),
                "age_seconds": (c.age.as_secs_f64() * 1000.0).round() / 1000.0,
            }))
        })
        .collect();
    Json(json!({ "connections": list })).into_response()
}

/// The subscriptions feeding `outbox` (one walk of every topic's index), with their topics.
fn subscriptions_of(state: &AppState, outbox: &Arc<Outbox>) -> Vec<(Arc<str>, Arc<Sub>)> {
    let mut found = Vec::new();
    for name in state.hub.topic_names() {
        let Ok(topic) = state.hub.topic(&name) else {
            continue;
        };
        for sub in topic.subscriptions() {
            if Arc::ptr_eq(sub.outbox(), outbox) {
                found.push((Arc::clone(&name), sub));
            }
        }
    }
    found
}

/// The queue's address: a connection and its subscriptions share one.
fn queue_id(outbox: &Arc<Outbox>) -> usize {
    Arc::as_ptr(outbox) as usize
}

/// `DELETE /admin/connections/{id}`: closes it with the drain's reconnect
/// code; 204, or 404 for an id that is not open.
async fn close_connection(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id) if state.close_connection(id) => StatusCode::NO_CONTENT.into_response(),
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no open connection with this id",
        ),
    }
}

/// `GET /admin/topics`: per topic and partition, positions, lag and memory.
async fn topics(State(state): State<AppState>) -> Response {
    let mut names = state.hub.topic_names();
    names.sort();
    let list: Vec<Value> = names
        .iter()
        .filter_map(|name| state.hub.topic(name).ok())
        .map(|t| {
            let partitions: Vec<Value> = t.partition_stats().iter().map(partition).collect();
            json!({
                "name": &*t.name,
                "ready": t.is_ready() && state.source.is_ready(),
                "partitions": partitions,
            })
        })
        .collect();
    Json(json!({ "topics": list })).into_response()
}

fn partition(p: &PartitionStats) -> Value {
    json!({
        "partition": p.partition,
        "next_offset": p.next_offset,
        "high_watermark": p.high_watermark,
        "lag": p.lag(),
        "ring": p.ring.map(|(first, last)| json!({"first": first, "last": last})),
        "view_keys": p.view_keys,
        // Seconds since the newest record's timestamp: how fresh the topic is.
        "newest_record_age_seconds": p.newest_timestamp
            .map(|ts| (stats::now_ms().saturating_sub(ts)).max(0) as f64 / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same(b"", b"0123456789abcdef"));
    }

    #[test]
    fn bearer_is_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }
}
