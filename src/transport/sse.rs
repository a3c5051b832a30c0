//! The Server-Sent Events transport, `GET /sse?topic=T&key=K&key=K2`: one subscription per stream.
//!
//! Each record is one event whose `data:` is the same JSON as the WebSocket
//! `record` message and whose `id:` is its cursor, so a browser's
//! `EventSource` resumes by itself through `Last-Event-ID`. The `cursor`
//! query parameter does the same for clients that cannot set headers; when
//! both are present the header wins (it is the newer one, sent on reconnect).
//! Without `topic`, a token with one `subscribe_on_connect` entry opens that
//! entry (see [`token_subs::for_sse`]).
//! The body is a stream polled by the connection itself: no task per client.
//!
//! Two paths serve it and share everything but the socket: [`prepare`]
//! (admission, the query and `Last-Event-ID`, the subscription) and
//! [`Ready::events`] (the events). [`handler`] hands them to hyper (TLS,
//! HTTP/2, heads that arrive in pieces); the accept loop gives whole
//! cleartext heads to [`bare_sse`](super::bare_sse), which writes them on the
//! bare socket so an idle stream costs no hyper buffers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use smallvec::SmallVec;
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tracing::Instrument;

use crate::admission::{self, Admission};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{self, ClientError, ErrorCode, SubscribeRequest};
use crate::record::Record;
use crate::reply::json_error;
use crate::session::{self, CatchUpError, Step};
use crate::state::{AppState, ConnectionSlot};
use crate::telemetry;
use crate::token_subs;

/// Parses `topic`, repeated `key`, `prefix`, `cursor` and `snapshot` from a query string.
pub fn parse_query(query: &str) -> Result<SubscribeRequest, ClientError> {
    let mut topic = None;
    let mut req = parse_params(query, |name, value| {
        if name == "topic" {
            topic = Some(value.to_owned());
        }
        Ok(())
    })?;
    req.topic =
        topic.ok_or_else(|| ClientError::new(ErrorCode::BadMessage, "`topic` is required"))?;
    Ok(req)
}

/// Parses the subscription parameters of a query string (repeated `key`,
/// repeated `field` or `fields`, `prefix`, `filter`, `cursor`, `snapshot`,
/// `resume`, `delta`, `max_rate`) into a request without a topic; every other
/// parameter goes to `other`. Shared by `GET /sse` and the view pages
/// (`GET /topics/{topic}/view`) so both validate alike.
pub(crate) fn parse_params(
    query: &str,
    mut other: impl FnMut(&str, &str) -> Result<(), ClientError>,
) -> Result<SubscribeRequest, ClientError> {
    let mut req = SubscribeRequest::default();
    let mut keys: Vec<String> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "key" => keys.push(value.into_owned()),
            "field" | "fields" => fields.push(value.into_owned()),
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
            name => other(name, &value)?,
        }
    }
    if !keys.is_empty() {
        req.keys = Some(keys);
    }
    if !fields.is_empty() {
        req.fields = Some(fields);
    }
    Ok(req)
}

/// `GET /sse` through hyper (TLS, HTTP/2, and heads the accept loop did not
/// take whole): [`prepare`], then the [`Ready::events`] as the response body.
pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let ready = match prepare(&state, peer, query.as_deref(), &headers).await {
        Ok(ready) => ready,
        Err(refused) => return refused,
    };
    // hyper takes one `Bytes` per frame, as it always has; it chunks them itself.
    let frames = ready
        .events(&state)
        .flat_map(|chunk| futures_util::stream::iter(chunk.into_frames().map(Ok::<_, Infallible>)));
    let mut response = Response::new(Body::from_stream(frames));
    for (name, value) in STREAM_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The headers of every event stream, whichever path serves it.
pub const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache, no-transform"),
    // Tell nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// A subscriber let in and subscribed, whose events have not started: what
/// [`prepare`] hands to either path.
pub struct Ready {
    slot: ConnectionSlot,
    /// When the token runs out: the stream ends then, and the client reconnects with a new one.
    expires: Option<Instant>,
    opened: session::Opened,
    outbox: Arc<Outbox>,
}

/// Everything before the first byte of an event stream: admission (token,
/// per-IP limit, connection slot), the query and `Last-Event-ID`, and the
/// subscription itself. `Err` is the complete error answer to send instead.
pub async fn prepare(
    state: &AppState,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Ready, Response> {
    // Authenticate first: an unauthenticated caller learns nothing else.
    let Admission {
        identity,
        slot,
        outbox,
    } = admission::admit(state, headers, query, peer, "sse")
        .map_err(IntoResponse::into_response)?;
    // No `topic`: the token's one `subscribe_on_connect` entry, if it has one.
    let text = query.unwrap_or("");
    let mut req = token_subs::for_sse(&identity.on_connect, text)
        .unwrap_or_else(|| parse_query(text))
        .map_err(|e| client_error_response(&e))?;
    if let Some(last) = headers.get("last-event-id") {
        match last.to_str() {
            Ok(text) if !text.is_empty() => req.cursor = Some(text.to_owned()),
            Ok(_) => {}
            Err(_) => {
                let err = ClientError::new(ErrorCode::BadCursor, "Last-Event-ID is not text");
                return Err(client_error_response(&err));
            }
        }
    }
    let cursor =
        session::parse_cursor(req.cursor.as_deref()).map_err(|e| client_error_response(&e))?;
    // A node that just started answers once the topic is warm, not with 503.
    session::until_ready(state, &req.topic, session::TOPIC_READY_WAIT).await;
    let grants = &identity.subscribe;
    let opened = session::open(state, grants, &req, cursor, Arc::clone(&outbox))
        .instrument(slot.span(identity.subject.as_deref()))
        .await
        .map_err(|e| client_error_response(&e))?;
    // Only the expiry outlives admission: the grants were used by `open`.
    let expires = identity.time_left().map(|left| Instant::now() + left);
    Ok(Ready {
        slot,
        expires,
        opened,
        outbox,
    })
}

/// A batch of records drained from an outbox: one, the usual case, inline.
pub type Batch = SmallVec<[Arc<Record>; 1]>;

/// What the event stream yields: pre-encoded frames, or a batch of records
/// to go out together (their `sse` bytes, shared with every other subscriber).
pub enum Chunk {
    Frame(Bytes),
    Frames(Vec<Bytes>),
    Records(Batch),
}

impl Chunk {
    /// The frames, in order.
    pub fn into_frames(self) -> impl Iterator<Item = Bytes> {
        let (frames, records) = match self {
            Chunk::Frame(frame) => (vec![frame], Batch::new()),
            Chunk::Frames(frames) => (frames, Batch::new()),
            Chunk::Records(records) => (Vec::new(), records),
        };
        frames
            .into_iter()
            .chain(records.into_iter().map(|record| record.sse.clone()))
    }

    /// Each frame's bytes, for a vectored write.
    pub fn for_each_frame<'a>(&'a self, mut f: impl FnMut(&'a [u8])) {
        match self {
            Chunk::Frame(frame) => f(frame),
            Chunk::Frames(frames) => frames.iter().for_each(|frame| f(frame)),
            Chunk::Records(records) => records.iter().for_each(|record| f(&record.sse)),
        }
    }
}

/// What only the start of a stream needs, boxed and dropped once it is live.
struct Start {
    id: serde_json::Value,
    topic_name: Arc<str>,
    catch_up: session::CatchUp,
}

impl Ready {
    /// The event stream: `retry:`, `subscribed`, maybe `gap`, the catch-up,
    /// `live`, then live records and keep-alive comments until the client
    /// falls too far behind, its token expires, or the drain starts (then a
    /// last `retry:`). It ends by itself; dropping it ends the subscription.
    ///
    /// An idle stream is mostly this future, so it captures little: the
    /// opening frames are encoded up front, the catch-up is boxed and freed
    /// once live.
    pub fn events(self, state: &AppState) -> impl Stream<Item = Chunk> + Send + 'static {
        let Ready {
            slot,
            expires,
            opened,
            outbox,
        } = self;
        let session::Opened {
            guard,
            id,
            topic_name,
            cursor,
            recovered,
            gap,
            snapshot_len,
            partial,
            catch_up,
            enforced: _,
        } = opened;
        let retry_ms = state.config.sse.retry.as_millis() as u64;
        let retry = move || Bytes::from(format!("retry: {retry_ms}\n\n"));
        let mut opening = vec![
            retry(),
            event(
                "subscribed",
                &protocol::subscribed(
                    &id,
                    &topic_name,
                    &cursor,
                    recovered,
                    snapshot_len,
                    partial.map(|p| p.reason),
                ),
            ),
        ];
        if let Some((reason, earliest)) = &gap {
            opening.push(event(
                "gap",
                &protocol::gap(&id, &topic_name, reason, earliest),
            ));
        }
        // For the last event of a stream an operator ends (a revocation, narrowed grants).
        let ending = Box::new((id.clone(), Arc::clone(&topic_name)));
        let mut start = Box::new(Start {
            id,
            topic_name,
            catch_up,
        });
        // The stream must own these, or the subscription and the slot end at once.
        let held = Box::new((slot, guard));
        let keepalive_every = state.config.sse.keepalive_interval;
        // Created once: re-creating it on every wake-up registered a
        // cancellation waiter per delivered record.
        // Its turn in the drain (see `Shutdown::my_turn`).
        let mut shutdown_signal = Box::pin(state.shutdown.my_turn());
        async_stream::stream! {
            let _held = held;
            yield Chunk::Frames(opening);
            loop {
                match Box::pin(start.catch_up.next_batch()).await {
                    Ok(Some(Step::Records(batch))) => yield Chunk::Records(Batch::from_vec(batch)),
                    Ok(Some(Step::Live { replayed, cursor, compacted, skipped })) => {
                        let live = protocol::live(&start.id, &start.topic_name, replayed, cursor.as_deref(), compacted, skipped);
                        match cursor {
                            // An id moves EventSource's Last-Event-ID past what the filter left out.
                            Some(cursor) => yield Chunk::Frame(Bytes::from(format!("id: {cursor}\nevent: live\ndata: {live}\n\n"))),
                            None => yield Chunk::Frame(event("live", &live)),
                        }
                    }
                    Ok(None) => break,
                    Err(CatchUpError::Closed(reason)) => {
                        if let Some(last) = last_event(reason, &ending) {
                            yield Chunk::Frame(last);
                        }
                        return;
                    }
                    Err(CatchUpError::Lost(e)) => {
                        start.catch_up.span().in_scope(|| tracing::warn!(error = %e, "resume lost its range mid-replay"));
                        return;
                    }
                }
            }
            drop(start);
            // Boxed: most tokens (and anonymous access) never get here.
            let mut expired: Option<Pin<Box<Sleep>>> = expires.map(|at| Box::pin(tokio::time::sleep_until(at)));
            let mut keepalive = tokio::time::interval_at(Instant::now() + keepalive_every, keepalive_every);
            keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                // Drain on every turn so a wake-up taken by another branch is not lost.
                // A fresh batch each time: an idle stream keeps no buffer from its
                // last burst, and one record (the usual batch) needs none.
                // In a block of its own: the batch is not kept across the wait below.
                {
                    let mut batch = Batch::new();
                    if let Err(reason) = outbox.drain_into(&mut batch) {
                        // Too slow: end the stream; EventSource reconnects with its last id.
                        if let Some(last) = last_event(reason, &ending) {
                            yield Chunk::Frame(last);
                        }
                        return;
                    }
                    if !batch.is_empty() {
                        batch.iter().for_each(|r| super::first_write(r, crate::record::Transport::Sse));
                        yield Chunk::Records(batch);
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown_signal => {
                        yield Chunk::Frame(retry());
                        return;
                    }
                    _ = async {
                        match expired.as_mut() {
                            Some(at) => at.await,
                            None => std::future::pending().await,
                        }
                    } => return,
                    _ = outbox.ready() => {}
                    _ = keepalive.tick() => yield Chunk::Frame(Bytes::from_static(b": keep-alive\n\n")),
                }
            }
        }
    }
}

/// The event that ends a stream an operator ended: an `error` with code
/// `revoked` (its token was revoked), or `unsubscribed` with reason `revoked`
/// (narrowed grants no longer allow it). Others end with no event.
fn last_event(reason: CloseReason, (id, topic): &(Value, Arc<str>)) -> Option<Bytes> {
    match reason {
        CloseReason::Revoked => {
            let err = ClientError::new(ErrorCode::Revoked, "the token was revoked");
            Some(event("error", &protocol::error(Some(id), &err)))
        }
        CloseReason::Unsubscribed => Some(event(
            "unsubscribed",
            &protocol::unsubscribed_because(id, topic, "revoked"),
        )),
        _ => None,
    }
}

fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The error answer for a subscription the session refused: its JSON body and status (503s say when to retry).
pub(crate) fn client_error_response(err: &ClientError) -> Response {
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
