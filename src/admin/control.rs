//! The control topic: revocations and grant changes, written by `POST /admin/...` on one node and read by every node.
//!
//! Nodes never talk to each other: what all of them must apply is a record
//! on the control topic (`admin.control_topic`), which each node reads like
//! any other topic, from its start at boot (before it reports ready) and
//! then live. Records are keyed so that compaction keeps the latest of each:
//!
//! - `subject:<sub>`: `{"subject":…,"until":<unix s>|null,"revoked_at":<unix s>}`,
//!   or `{"subject":…,"lifted":true,…}` (a lift; a tombstone lifts too);
//! - `jti:<jti>`: the same with `"jti"`;
//! - `grants:<sub>`: `{"subject":…,"subscribe":[grants],"at":<unix s>}`.
//!
//! A revocation ends the subject's (or token's) open connections and refuses
//! its tokens until `until`; a grant change narrows the subject's live
//! connections (read before the node was ready, it has none to narrow).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::{unix_now, Grants, Revocation, Target};
use crate::hub::{Filter, SubscribeOptions, Topic};
use crate::outbox::{CloseReason, Outbox};
use crate::record::{NewRecord, Record};
use crate::reply::json_error;
use crate::source::{Source, SourceError};
use crate::state::AppState;

/// Records read from the log per step of the start-up read.
const CHUNK: usize = 512;
/// How often the reader looks for a control topic that is not there yet (Kafka).
const ABSENT_POLL: Duration = Duration::from_millis(500);
/// How long `POST` waits for this node to have applied its own record.
const APPLY_WAIT: Duration = Duration::from_secs(2);
/// Bytes of live control records the reader's queue holds before it re-reads.
const QUEUE_BYTES: usize = 8 << 20;

/// Starts reading the control topic, or marks revocations loaded when there is none.
pub(crate) fn spawn_reader(state: &AppState) {
    let Some(name) = state.config.control_topic().map(str::to_owned) else {
        state.auth.revocations.set_loaded();
        return;
    };
    let state = state.clone();
    let shutdown = state.shutdown.clone();
    state.shutdown.tracker().clone().spawn(async move {
        tokio::select! {
            _ = shutdown.triggered() => {}
            () = read(&state, &name) => {}
        }
    });
}

/// Unregisters the reader's subscription when dropped.
struct Registered(Arc<Topic>, Arc<crate::hub::Sub>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.unregister(&self.1);
    }
}

/// Reads the control topic for ever: from the start, then live; after a queue
/// overflow or a recreated topic, again from where it stood (or the start).
async fn read(state: &AppState, name: &str) {
    let mut next: Vec<u64> = Vec::new();
    let mut epoch = None;
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    'read: loop {
        let topic = match state.hub.topic(name) {
            Ok(topic) if topic.is_ready() && state.source.is_ready() => topic,
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => {
                if state.source.is_ready() {
                    // Kafka: not created yet; nothing is revoked until it is.
                    if !state.auth.revocations.is_loaded() {
                        tracing::warn!(topic = name, "admin.control_topic does not exist yet: no revocation is in force until it does");
                        state.auth.revocations.set_loaded();
                    }
                    tokio::time::sleep(ABSENT_POLL).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        if epoch != Some(topic.epoch) {
            // A recreated topic is read again from its start.
            epoch = Some(topic.epoch);
            next.clear();
        }
        let outbox = Arc::new(Outbox::new(QUEUE_BYTES));
        let reg = topic.register(SubscribeOptions {
            filter: Filter::default(),
            spec: None,
            outbox: Arc::clone(&outbox),
            cursor: None,
            snapshot: false,
            max_snapshot: 0,
            backlog_limit: QUEUE_BYTES,
            stored: None,
        });
        let registered = Registered(Arc::clone(&topic), Arc::clone(&reg.sub));
        next.resize(reg.high.len(), 0);
        let live = state.auth.revocations.is_loaded();
        // Everything up to where the subscription starts, from the log.
        for (p, high) in reg.high.iter().enumerate() {
            if let Err(e) = read_range(state, name, p as u32, &mut next, *high, live).await {
                tracing::warn!(error = %e, topic = name, "cannot read the control topic; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue 'read;
            }
        }
        let backlog = match reg.sub.go_live() {
            Ok(Some(backlog)) => backlog,
            // Overflowed or closed: register again.
            _ => continue,
        };
        apply_all(state, &backlog, &mut next, live);
        state.auth.revocations.progress.set(&next);
        if !state.auth.revocations.is_loaded() {
            tracing::info!(
                topic = name,
                revocations = state.auth.revocations.list().len(),
                "control topic read"
            );
            state.auth.revocations.set_loaded();
        }
        loop {
            let mut batch: Vec<Arc<Record>> = Vec::new();
            match outbox.drain_into(&mut batch) {
                Ok(()) => {
                    apply_all(state, &batch, &mut next, true);
                    if !batch.is_empty() {
                        state.auth.revocations.progress.set(&next);
                    }
                }
                Err(reason) => {
                    if reason == CloseReason::TopicReset {
                        epoch = None;
                    }
                    break;
                }
            }
            tokio::select! {
                () = outbox.ready() => {}
                _ = sweep.tick() => state.auth.revocations.sweep(),
            }
        }
        drop(registered);
    }
}

/// Applies `[next[p], high)` of partition `p` from the log.
async fn read_range(
    state: &AppState,
    name: &str,
    p: u32,
    next: &mut [u64],
    high: u64,
    live: bool,
) -> Result<(), SourceError> {
    let at = p as usize;
    while next[at] < high {
        let records = match state.source.read(name, p, next[at], high, CHUNK).await {
            Ok(records) => records,
            Err(SourceError::Gap { earliest, .. }) if earliest > next[at] => {
                next[at] = earliest;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = records.last() else {
            // Compacted away or transaction markers: nothing more below `high`.
            next[at] = high;
            break;
        };
        next[at] = last.offset + 1;
        for r in &records {
            apply(state, r.key.as_deref(), &r.data, r.delete, live);
        }
    }
    Ok(())
}

fn apply_all(state: &AppState, records: &[Arc<Record>], next: &mut [u64], live: bool) {
    for r in records {
        let at = r.partition as usize;
        if at >= next.len() || r.offset < next[at] {
            continue;
        }
        next[at] = r.offset + 1;
        apply(state, r.key.as_deref(), r.data(), r.delete, live);
    }
}

/// Applies one control record. `live`: read after the node's start-up read,
/// so a grant change narrows the connections open now.
fn apply(state: &AppState, key: Option<&str>, data: &str, delete: bool, live: bool) {
    let Some(key) = key else {
        tracing::warn!("a control record without a key is ignored");
        return;
    };
    let value: Value = if delete {
        Value::Null
    } else {
        serde_json::from_str(data).unwrap_or(Value::Null)
    };
    let lifted = delete || value.get("lifted").and_then(Value::as_bool) == Some(true);
    if let Some(target) = Target::from_key(key) {
        let revocations = &state.auth.revocations;
        if lifted {
            revocations.lift(&target);
            return;
        }
        let entry = Revocation {
            until: value.get("until").and_then(Value::as_u64),
            at: value.get("revoked_at").and_then(Value::as_u64).unwrap_or(0),
        };
        if revocations.revoke(&target, entry) {
            let ended = match &target {
                Target::Subject(s) => state.revoke_subject(s),
                Target::Jti(j) => state.revoke_jti(j),
            };
            crate::telemetry::revocation_applied(ended);
            tracing::info!(
                key,
                until = entry.until,
                connections = ended,
                "revocation applied"
            );
        }
    } else if let Some(subject) = key.strip_prefix("grants:") {
        let items = value.get("subscribe").and_then(Value::as_array);
        if let (Some(items), true, false) = (items, live, lifted) {
            let grants = Grants::parse_subscribe(items, &state.config.limits.filter_limits());
            narrow(state, subject, Arc::new(grants));
        }
    } else {
        tracing::warn!(key, "a control record with an unknown key is ignored");
    }
}

/// Narrows the subject's open connections to `grants`: a WebSocket
/// connection's task is handed them (it ends what they no longer allow with
/// `unsubscribed`, reason `revoked`); an SSE or gRPC stream, one subscription
/// each, ends if its subscription is no longer allowed.
fn narrow(state: &AppState, subject: &str, grants: Arc<Grants>) {
    let mine: Vec<_> = state
        .connections()
        .into_iter()
        .filter(|c| c.subject.as_deref() == Some(subject))
        .collect();
    if mine.is_empty() {
        return;
    }
    let mut ended = 0;
    for c in &mine {
        match c.transport {
            "ws" => state.narrow(c.id, Arc::clone(&grants), &c.outbox),
            "sse" | "grpc" => {
                let allowed = super::subscriptions_of(state, &c.outbox)
                    .iter()
                    .all(|(topic, sub)| allows(&grants, topic, &sub.filter));
                if !allowed {
                    c.outbox.close(CloseReason::Unsubscribed);
                    ended += 1;
                }
            }
            _ => {}
        }
    }
    tracing::info!(
        subject,
        connections = mine.len(),
        streams_ended = ended,
        "grants narrowed"
    );
}

/// May a stream keep its subscription to `topic` with `filter` under
/// `grants`? Not when the grants enforce a value filter on the topic: the
/// stream's spec was built without it (nor with any other the stream's token
/// enforced: pushgate does not keep that apart on SSE and gRPC).
fn allows(grants: &Grants, topic: &str, filter: &Filter) -> bool {
    grants.allows_filter(topic, filter) && grants.enforced(topic).is_none()
}

/// Appends `value` under `key` to the control topic and waits (briefly) until this node applied it.
async fn append(state: &AppState, key: String, value: Value) -> Result<bool, Response> {
    let Some(name) = state.config.control_topic() else {
        return Err(json_error(
            StatusCode::CONFLICT,
            "no_control_topic",
            "admin.control_topic is not set: revocations and grant changes need it",
        ));
    };
    let record = NewRecord {
        key: Some(key.into()),
        data: value.to_string().into(),
        trace: None,
    };
    let appended = state
        .source
        .publish(name, vec![record])
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot append to the control topic");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("cannot write the control topic: {e}"),
            )
        })?;
    let Some(at) = appended.first() else {
        return Ok(false);
    };
    Ok(state
        .auth
        .revocations
        .progress
        .wait(at.partition, at.offset, APPLY_WAIT)
        .await)
}

/// The request body as a JSON object, or a 400 saying it is not one.
fn object(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err("the body must be a JSON object".into()),
    }
}

fn bad_request(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A subject or token id as a request names it: a non-empty string of at most 1 KiB.
fn name_in(body: &Value, member: &str) -> Result<Option<String>, String> {
    match body.get(member) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "`{member}` must be a non-empty string of at most 1024 bytes"
        )),
    }
}

/// `POST /admin/revocations`: `{"subject": "...", "until": <unix seconds>}`
/// or `{"jti": "...", "until": ...}` (`until` absent or null: until lifted).
pub(crate) async fn revoke(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match object(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    if let Some(extra) = body
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .find(|k| !matches!(k.as_str(), "subject" | "jti" | "until"))
    {
        return bad_request(&format!("unknown member `{extra}`"));
    }
    let subject = match name_in(&body, "subject") {
        Ok(s) => s,
        Err(message) => return bad_request(&message),
    };
    let jti = match name_in(&body, "jti") {
        Ok(j) => j,
        Err(message) => return bad_request(&message),
    };
    let until = match body.get("until") {
        None | Some(Value::Null) => None,
        // 1802.0 is an integer too, as JSON Schema counts.
        Some(v) => match v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..9.0e15).contains(f))
                .map(|f| f as u64)
        }) {
            Some(u) => Some(u),
            None => return bad_request("`until` must be Unix seconds (a non-negative integer)"),
        },
    };
    let (member, target) = match (subject, jti) {
        (Some(s), None) => ("subject", Target::Subject(s)),
        (None, Some(j)) => ("jti", Target::Jti(j)),
        _ => return bad_request("give exactly one of `subject` and `jti`"),
    };
    let name = match &target {
        Target::Subject(s) | Target::Jti(s) => s.clone(),
    };
    let now = unix_now();
    let value = json!({member: name, "until": until, "revoked_at": now});
    match append(&state, target.key(), value).await {
        Ok(applied) => (
            StatusCode::CREATED,
            Json(json!({
                member: name,
                "until": until,
                "revoked_at": now,
                "in_force": until.is_none_or(|u| u > now),
                "applied": applied,
            })),
        )
            .into_response(),
        Err(response) => response,
    }
}

/// `GET /admin/revocations`: what is in force on this node.
pub(crate) async fn revocations(State(state): State<AppState>) -> Response {
    Json(json!({ "revocations": state.auth.revocations.list() })).into_response()
}

/// `DELETE /admin/revocations/{target}` (`subject:<sub>` or `jti:<jti>`): lifts it; 204.
pub(crate) async fn lift(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(target) = Target::from_key(&key).filter(|t| match t {
        Target::Subject(s) | Target::Jti(s) => !s.is_empty(),
    }) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "name a revocation as `subject:<sub>` or `jti:<jti>`",
        );
    };
    let (member, name) = match &target {
        Target::Subject(s) => ("subject", s.clone()),
        Target::Jti(j) => ("jti", j.clone()),
    };
    let value = json!({member: name, "lifted": true, "at": unix_now()});
    match append(&state, target.key(), value).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

/// `POST /admin/grants`: `{"subject": "...", "subscribe": [grants]}`, the
/// subject's new subscribe grants (as a token's claim writes them).
pub(crate) async fn grants(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match object(&body) {
        Ok(body) => body,
        Err(message) => return bad_request(&message),
    };
    if let Some(extra) = body
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .find(|k| !matches!(k.as_str(), "subject" | "subscribe"))
    {
        return bad_request(&format!("unknown member `{extra}`"));
    }
    let subject = match name_in(&body, "subject") {
        Ok(Some(s)) => s,
        Ok(None) => return bad_request("`subject` is required"),
        Err(message) => return bad_request(&message),
    };
    let Some(items) = body.get("subscribe").and_then(Value::as_array) else {
        return bad_request("`subscribe` must be an array of grants");
    };
    if items.len() > 1024 {
        return bad_request("`subscribe` holds at most 1024 grants");
    }
    let value = json!({"subject": subject, "subscribe": items, "at": unix_now()});
    match append(&state, format!("grants:{subject}"), value).await {
        Ok(applied) => (
            StatusCode::ACCEPTED,
            Json(json!({"subject": subject, "subscribe": items, "applied": applied})),
        )
            .into_response(),
        Err(response) => response,
    }
}
