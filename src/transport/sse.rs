//! The Server-Sent Events transport, `GET /sse?topic=T&key=K&key=K2`: one subscription per stream.
//!
//! Each record is one event whose `data:` is the same JSON as the WebSocket
//! `record` message and whose `id:` is its cursor, so a browser's
//! `EventSource` resumes by itself through `Last-Event-ID`. The `cursor`
//! query parameter does the same for clients that cannot set headers; when
//! both are present the header wins (it is the newer one, sent on reconnect).
//! The body is a stream polled by the connection itself: no task per client.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admission::{self, Admission};
use crate::outbox::Outbox;
use crate::protocol::{self, ClientError, ErrorCode, SubscribeRequest};
use crate::reply::json_error;
use crate::session::{self, CatchUpError, Step};
use crate::state::AppState;
use crate::telemetry;

/// Parses `topic`, repeated `key`, `prefix`, `cursor` and `snapshot` from a query string.
pub fn parse_query(query: &str) -> Result<SubscribeRequest, ClientError> {
    let mut req = SubscribeRequest::default();
    let mut topic = None;
    let mut keys: Vec<String> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "topic" => topic = Some(value.into_owned()),
            "key" => keys.push(value.into_owned()),
            "field" => fields.push(value.into_owned()),
            "resume" => req.resume = Some(value.into_owned()),
            "delta" => req.delta = Some(value.into_owned()),
            "max_rate" => {
                req.max_rate = Some(value.parse().map_err(|_| {
                    ClientError::new(ErrorCode::BadMessage, "`max_rate` must be a number > 0")
                })?)
            }
            "prefix" => req.prefix = Some(value.into_owned()),
            "cursor" => req.cursor = Some(value.into_owned()),
            "filter" => {
                req.filter = Some(serde_json::from_str(&value).map_err(|e| {
                    ClientError::new(ErrorCode::BadFilter, format!("`filter` is not JSON: {e}"))
                })?)
            }
            "snapshot" => {
                req.snapshot = Some(match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ClientError::new(
                            ErrorCode::BadMessage,
                            "`snapshot` must be true or false",
                        ))
                    }
                })
            }
            _ => {}
        }
    }
    req.topic =
        topic.ok_or_else(|| ClientError::new(ErrorCode::BadMessage, "`topic` is required"))?;
    if !keys.is_empty() {
        req.keys = Some(keys);
    }
    if !fields.is_empty() {
        req.fields = Some(fields);
    }
    Ok(req)
}

pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Authenticate first: an unauthenticated caller learns nothing else.
    let Admission { identity, slot } =
        match admission::admit(&state, &headers, query.as_deref(), peer, "sse") {
            Ok(admission) => admission,
            Err(refusal) => return refusal.into_response(),
        };
    let mut req = match parse_query(query.as_deref().unwrap_or("")) {
        Ok(req) => req,
        Err(err) => return client_error_response(&err),
    };
    if let Some(last) = headers.get("last-event-id") {
        match last.to_str() {
            Ok(text) if !text.is_empty() => req.cursor = Some(text.to_owned()),
            Ok(_) => {}
            Err(_) => {
                let err = ClientError::new(ErrorCode::BadCursor, "Last-Event-ID is not text");
                return client_error_response(&err);
            }
        }
    }
    let cursor = match session::parse_cursor(req.cursor.as_deref()) {
        Ok(cursor) => cursor,
        Err(err) => return client_error_response(&err),
    };
    let outbox = Arc::new(Outbox::new(state.config.limits.queue_bytes));
    let grants = &identity.subscribe;
    let opened = match session::open(&state, grants, &req, cursor, Arc::clone(&outbox)).await {
        Ok(opened) => opened,
        Err(err) => return client_error_response(&err),
    };
    // Named whole: the stream must own the guard, or the subscription ends at once.
    let session::Opened {
        guard,
        id,
        topic_name,
        cursor,
        recovered,
        gap,
        snapshot_len,
        mut catch_up,
        enforced: _,
    } = opened;

    let retry = format!("retry: {}\n\n", state.config.sse.retry.as_millis());
    let keepalive_every = state.config.sse.keepalive_interval;
    let shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        let _slot = slot;
        let _guard = guard;
        yield Ok::<Bytes, Infallible>(Bytes::from(retry.clone()));
        let subscribed = protocol::subscribed(&id, &topic_name, &cursor, recovered, snapshot_len);
        yield Ok(event("subscribed", &subscribed));
        if let Some((reason, earliest)) = &gap {
            yield Ok(event("gap", &protocol::gap(&id, &topic_name, reason, earliest)));
        }
        loop {
            match catch_up.next_batch().await {
                Ok(Some(Step::Records(batch))) => {
                    for record in batch {
                        yield Ok(record.sse.clone());
                    }
                }
                Ok(Some(Step::Live { replayed, cursor, compacted })) => {
                    let live = protocol::live(&id, &topic_name, replayed, cursor.as_deref(), compacted);
                    match cursor {
                        // An id moves EventSource's Last-Event-ID past what the filter left out.
                        Some(cursor) => yield Ok(Bytes::from(format!("id: {cursor}\nevent: live\ndata: {live}\n\n"))),
                        None => yield Ok(event("live", &live)),
                    }
                }
                Ok(None) => break,
                Err(CatchUpError::Slow | CatchUpError::TopicReset) => return,
                Err(CatchUpError::Lost(e)) => {
                    tracing::warn!(error = %e, "resume lost its range mid-replay");
                    return;
                }
            }
        }
        // The stream ends when the token expires; the client reconnects with a new one and its cursor.
        let expires = identity.time_left().map(|left| Instant::now() + left);
        let expired = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        // Created once: re-creating it on every wake-up registered a
        // cancellation waiter per delivered record.
        let shutdown_signal = shutdown.triggered();
        tokio::pin!(shutdown_signal);
        let mut keepalive = tokio::time::interval_at(Instant::now() + keepalive_every, keepalive_every);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            // Drain on every turn so a wake-up taken by another branch is not lost.
            if outbox.drain_into(&mut batch).is_err() {
                // Too slow: end the stream; EventSource reconnects with its last id.
                return;
            }
            for record in batch.drain(..) {
                yield Ok(record.sse.clone());
            }
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    yield Ok(Bytes::from(retry.clone()));
                    return;
                }
                _ = &mut expired => return,
                _ = outbox.ready() => {}
                _ = keepalive.tick() => yield Ok(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    };

    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tell nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn client_error_response(err: &ClientError) -> Response {
    telemetry::client_error(err.code.as_str());
    let status = match err.code {
        ErrorCode::UnknownTopic => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = json_error(status, err.code.as_str(), &err.message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Warming up or briefly unable to read the log: worth another try soon.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_keys() {
        let req = parse_query("topic=prices&key=A&key=B%20C&snapshot=false").unwrap();
        assert_eq!(req.topic, "prices");
        assert_eq!(req.keys, Some(vec!["A".to_owned(), "B C".to_owned()]));
        assert_eq!(req.snapshot, Some(false));
        assert!(parse_query("key=A").is_err());
        assert!(parse_query("topic=t&snapshot=maybe").is_err());
    }
}
