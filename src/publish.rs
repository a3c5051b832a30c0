//! The publish API, `POST /topics/{topic}`: append records to the log and say where they landed.
//!
//! Body: `{"key": "...", "data": <any JSON>}` or `{"records": [ ... ]}`. The
//! whole body is checked before anything is appended: a bad record anywhere
//! means a 4xx with a JSON error and nothing written. The body must be
//! `Content-Type: application/json` (415 otherwise), and a publish whose token
//! is the cookie must come from an allowed origin (403 `forbidden_origin`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::auth::{self, Identity};
use crate::hub::Topic;
use crate::record::{Appended, NewRecord};
use crate::reply::{json_error, unauthorized, unavailable};
use crate::source::{Source, SourceError};
use crate::state::AppState;
use crate::telemetry;

/// 503 with `Retry-After` while this node's source or topic is still warming up.
fn warming_up() -> Response {
    unavailable("this node is still warming up: retry shortly")
}

fn unknown_topic() -> Response {
    json_error(StatusCode::NOT_FOUND, "unknown_topic", "unknown topic")
}

pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let found = auth::find_token(&headers, query.as_deref(), &state.config.auth.cookie);
    // A browser attaches the cookie to requests any site's page makes: a publish
    // it authenticates must come from an allowed page (cross-site request forgery).
    if matches!(found, Some((_, auth::TokenSource::Cookie)))
        && !auth::request_origin_allowed(&headers, &state.config.websocket.allowed_origins)
    {
        tracing::debug!(%peer, "cookie publish from a foreign or unknown origin refused");
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "origin not allowed",
        );
    }
    let token = found.map(|(token, _)| token);
    if token.is_none() && !state.config.auth.anonymous_publish {
        return unauthorized();
    }
    let identity = match state.auth.identify(token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::debug!(error = %e, %peer, "publish authentication failed");
            return unauthorized();
        }
    };
    let existing = match check_topic(&state, &topic_name).await {
        Ok(existing) => existing,
        Err(e) => return e.into_response(),
    };
    // JSON only: this also keeps every cross-site publish out of the CORS
    // "simple request" path (text/plain, forms), which a browser sends unasked.
    if !is_json(&headers) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        );
    }
    let limits = &state.config.limits;
    // The body gets the same deadline as the header: a client trickling a
    // body must not hold its connection and this task for ever.
    let read = axum::body::to_bytes(body, limits.max_publish_bytes);
    let bytes = match tokio::time::timeout(state.config.server.header_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("body is larger than {} bytes", limits.max_publish_bytes),
            )
        }
        Err(_) => {
            return json_error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body did not arrive within server.header_read_timeout",
            )
        }
    };
    let (mut records, single) =
        match parse_body(&bytes, limits.max_publish_records, limits.max_key_bytes) {
            Ok(parsed) => parsed,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &message),
        };
    // The publisher's span parents each record's ingest span (traces on only).
    if let Some(trace) = crate::traces::from_headers(&headers) {
        records.iter_mut().for_each(|r| r.trace = Some(trace));
    }
    let caller = caller(&state, &identity, peer, &headers);
    let (topic, appended) =
        match append(&state, &identity, &caller, &topic_name, existing, records).await {
            Ok(done) => done,
            Err(e) => return e.into_response(),
        };
    let mut results: Vec<Value> = appended
        .iter()
        .map(|a| {
            let cursor = topic.cursor_after_appended(a);
            match &a.position {
                // Kinesis: the shard's number and the sequence number, as a string.
                Some(position) => {
                    json!({"partition": a.partition, "offset": &**position, "cursor": cursor})
                }
                None => json!({"partition": a.partition, "offset": a.offset, "cursor": cursor}),
            }
        })
        .collect();
    telemetry::publish_latency(started.elapsed());
    let body = if single && results.len() == 1 {
        let mut one = results.remove(0);
        one["topic"] = Value::String(topic_name);
        one
    } else {
        json!({"topic": topic_name, "records": results})
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// Why a publish was refused (after authentication), for the HTTP and gRPC answers alike.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("this node is still warming up: retry shortly")]
    WarmingUp,
    #[error("unknown topic")]
    UnknownTopic,
    #[error("not allowed to publish these keys to this topic")]
    Forbidden,
    #[error("publish rate limit exceeded")]
    RateLimited,
    #[error("{0}")]
    TooManyTopics(String),
    #[error("the log is unavailable")]
    Unavailable,
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        match self {
            PublishError::WarmingUp => warming_up(),
            PublishError::UnknownTopic => unknown_topic(),
            PublishError::Forbidden => {
                json_error(StatusCode::FORBIDDEN, "forbidden", &self.to_string())
            }
            PublishError::RateLimited => json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &self.to_string(),
            ),
            PublishError::TooManyTopics(m) => {
                json_error(StatusCode::CONFLICT, "too_many_topics", &m)
            }
            PublishError::Unavailable => unavailable(&self.to_string()),
        }
    }
}

/// Whom a publish is rate limited as: the token's subject, else the client's address.
pub fn caller(
    state: &AppState,
    identity: &Identity,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> String {
    match &identity.subject {
        Some(subject) => format!("sub:{subject}"),
        None => format!(
            "ip:{}",
            crate::proxy::client_ip(peer, headers, &state.config.server.trusted_proxies)
        ),
    }
}

/// The topic a publish goes to: `Some` when it exists and is ready, `None`
/// when a `pattern` matches it and the embedded log will create it.
pub async fn check_topic(
    state: &AppState,
    topic_name: &str,
) -> Result<Option<Arc<Topic>>, PublishError> {
    // The control topic is written by the admin API only.
    if state.config.is_control_topic(topic_name) {
        return Err(PublishError::UnknownTopic);
    }
    match state.hub.topic(topic_name) {
        Ok(topic) if topic.is_ready() && state.source.is_ready() => Ok(Some(topic)),
        Ok(topic) if state.source.is_ready() => {
            match topic.wait_ready(crate::hub::TOPIC_READY_WAIT).await {
                true => Ok(Some(topic)),
                false => Err(PublishError::WarmingUp),
            }
        }
        // Warming up: the answer's cursor would be built from a partial frontier.
        Ok(_) => Err(PublishError::WarmingUp),
        Err(_) if !state.source.is_ready() && state.config.has_topic(topic_name) => {
            Err(PublishError::WarmingUp)
        }
        // Matched by a `pattern`: the embedded log creates it with this publish
        // (once every check has passed); Kafka answers unknown_topic.
        Err(_) if state.config.has_topic(topic_name) => Ok(None),
        Err(_) => Err(PublishError::UnknownTopic),
    }
}

/// Appends checked `records` for `identity` (rate limited as `caller`): grants,
/// rate limit, the log. Returns the topic and where each record landed.
pub async fn append(
    state: &AppState,
    identity: &Identity,
    caller: &str,
    topic_name: &str,
    existing: Option<Arc<Topic>>,
    records: Vec<NewRecord>,
) -> Result<(Arc<Topic>, Vec<Appended>), PublishError> {
    if records
        .iter()
        .any(|r| !identity.publish.allows_key(topic_name, r.key.as_deref()))
    {
        return Err(PublishError::Forbidden);
    }
    if !state.publish_limiter.allow(caller, records.len() as f64) {
        return Err(PublishError::RateLimited);
    }
    let appended = match state.source.publish(topic_name, records).await {
        Ok(appended) => appended,
        Err(SourceError::UnknownTopic) => return Err(PublishError::UnknownTopic),
        Err(e @ SourceError::TopicLimit { .. }) => {
            return Err(PublishError::TooManyTopics(e.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, topic = %topic_name, "publish failed");
            return Err(PublishError::Unavailable);
        }
    };
    match existing.or_else(|| state.hub.topic(topic_name).ok()) {
        Some(topic) => Ok((topic, appended)),
        // Created and then deleted within this request: nothing left to point at.
        None => Err(PublishError::UnknownTopic),
    }
}

/// Is the request's `Content-Type` `application/json` (parameters allowed, any case)?
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses and checks a publish body. Returns the records and whether it was the single-record form.
pub fn parse_body(
    bytes: &[u8],
    max_records: usize,
    max_key_bytes: usize,
) -> Result<(Vec<NewRecord>, bool), String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("body must be a JSON object".into());
    };
    if let Some(records) = object.get("records") {
        let Value::Array(items) = records else {
            return Err("`records` must be an array".into());
        };
        if items.is_empty() {
            return Err("`records` is empty".into());
        }
        if items.len() > max_records {
            return Err(format!("at most {max_records} records per request"));
        }
        let records = items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(o) => {
                    one_record(o, max_key_bytes).map_err(|e| format!("records[{i}]: {e}"))
                }
                _ => Err(format!("records[{i}] must be an object")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((records, false));
    }
    Ok((vec![one_record(&object, max_key_bytes)?], true))
}

fn one_record(object: &Map<String, Value>, max_key_bytes: usize) -> Result<NewRecord, String> {
    let key = match object.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.len() > max_key_bytes => {
            return Err(format!("`key` is longer than {max_key_bytes} bytes"))
        }
        Some(Value::String(k)) => Some(Arc::from(k.as_str())),
        Some(_) => return Err("`key` must be a string".into()),
    };
    let data = object.get("data").ok_or("`data` is missing")?;
    // Compact text: no raw newlines, so it fits one SSE data line.
    Ok(NewRecord {
        key,
        data: data.to_string().into_boxed_str(),
        trace: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_forms() {
        let (r, single) = parse_body(br#"{"key":"A","data":{"x":[1,2]}}"#, 10, 8).unwrap();
        assert!(single);
        assert_eq!(&*r[0].data, r#"{"x":[1,2]}"#);
        let (r, single) =
            parse_body(br#"{"records":[{"data":1},{"key":"B","data":"s"}]}"#, 10, 8).unwrap();
        assert!(!single);
        assert_eq!(r.len(), 2);
        assert!(r[0].key.is_none());
    }

    #[test]
    fn only_json_content_types() {
        let with = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert("content-type", v.parse().unwrap());
            }
            is_json(&h)
        };
        assert!(with(Some("application/json")));
        assert!(with(Some("Application/JSON; charset=utf-8")));
        assert!(with(Some(" application/json ;charset=UTF-8")));
        for refused in [
            None,
            Some(""),
            Some("text/plain"),
            Some("text/plain; charset=application/json"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("application/json-seq"),
        ] {
            assert!(!with(refused), "{refused:?}");
        }
    }

    #[test]
    fn rejects_bad_bodies_whole() {
        for body in [
            &b"nope"[..],
            b"[1]",
            br#"{"key":"A"}"#,
            br#"{"key":5,"data":1}"#,
            br#"{"records":[]}"#,
            br#"{"records":{}}"#,
            br#"{"records":[{"data":1},{"key":"A"}]}"#,
            br#"{"key":"waytoolongkey","data":1}"#,
        ] {
            assert!(
                parse_body(body, 10, 8).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let many = format!("{{\"records\":[{}]}}", ["{\"data\":1}"; 11].join(","));
        assert!(parse_body(many.as_bytes(), 10, 8).is_err());
    }
}
