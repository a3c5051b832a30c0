//! The gRPC transport, `pushgate.v1.Gateway` (proto/pushgate/v1/gateway.proto): Subscribe streams and Publish, plus gRPC-Web through tonic-web, on the same port and router as everything else.
//!
//! A Subscribe call is one subscription, opened through [`session`] exactly
//! like an SSE stream: the same admission (token from `authorization:
//! Bearer` metadata or the cookie, per-address limit, connection slot), the
//! same bounded outbox and slow-consumer policy, the same catch-up. A
//! record's `Event` envelope is encoded once per record (shared by every
//! gRPC stream that carries it, like its SSE and WebSocket bytes); the data
//! inside is the same JSON text the other transports send. The response body
//! is a stream polled by the connection itself: no task per client.
//!
//! A stream the server ends says why with a status, and, when the client has
//! a position to come back to, carries it in the `pushgate-cursor` trailer:
//! `UNAVAILABLE` on drain, `RESOURCE_EXHAUSTED` for a slow consumer,
//! `UNAUTHENTICATED` once the token expired (after a `TokenExpiring` event and
//! `auth.expiry_grace`). Every refusal carries `pushgate-error` with the code
//! the WebSocket protocol uses (`bad_cursor`, `unknown_topic`, ...).

pub mod codec;
pub mod proto;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, Response};
use bytes::Bytes;
use futures_util::Stream;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::Grpc;
use tonic::{Code, Status};
use tower::Layer;
use tracing::Instrument;

use crate::admission::{self, Admission, Refusal};
use crate::auth;
use crate::outbox::CloseReason;
use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};
use crate::publish::{self, PublishError};
use crate::record::{Body, NewRecord, Record};
use crate::session::{self, CatchUpError, Step};
use crate::state::AppState;
use crate::telemetry;

use codec::{Frame, FrameCodec};
use proto::event::Kind;

/// The path prefix of every method of the service.
pub const SERVICE_PATH: &str = "/pushgate.v1.Gateway/";
pub const SUBSCRIBE_PATH: &str = "/pushgate.v1.Gateway/Subscribe";
pub const PUBLISH_PATH: &str = "/pushgate.v1.Gateway/Publish";
/// Trailer (or trailers-only header) with the cursor a client resumes from.
pub const CURSOR_TRAILER: &str = "pushgate-cursor";
/// Trailer with the error code the other transports would send.
pub const ERROR_TRAILER: &str = "pushgate-error";

type GrpcBody = tonic::body::Body;
type EventStream = Pin<Box<dyn Stream<Item = Result<Frame<proto::Event>, Status>> + Send>>;

/// The service for the router: gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 or 2) on `/pushgate.v1.Gateway/*`.
pub fn service(state: AppState) -> tonic_web::GrpcWebService<Gateway> {
    tonic_web::GrpcWebLayer::new().layer(Gateway { state })
}

/// `pushgate.v1.Gateway`, as a tower service over HTTP requests.
#[derive(Clone)]
pub struct Gateway {
    state: AppState,
}

impl tower::Service<Request<GrpcBody>> for Gateway {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GrpcBody>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(dispatch(state, req).await) })
    }
}

async fn dispatch(state: AppState, req: Request<GrpcBody>) -> Response<GrpcBody> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let headers = req.headers().clone();
    // The request message gets the header deadline: a client trickling it
    // must not hold this call for ever.
    let deadline = state.config.server.header_read_timeout;
    let limits = &state.config.limits;
    let answer = match req.uri().path() {
        SUBSCRIBE_PATH => {
            let limit = limits.max_message_bytes;
            let mut grpc = Grpc::new(FrameCodec::<proto::Event, proto::SubscribeRequest>::new(
                limit,
            ))
            .max_decoding_message_size(limit.saturating_mul(2));
            let svc = {
                let state = state.clone();
                tower::service_fn(move |request: tonic::Request<proto::SubscribeRequest>| {
                    let (state, headers) = (state.clone(), headers.clone());
                    async move {
                        subscribe(state, peer, headers, request.into_inner())
                            .await
                            .map(tonic::Response::new)
                    }
                })
            };
            tokio::time::timeout(deadline, grpc.server_streaming(svc, req)).await
        }
        PUBLISH_PATH => {
            // The body limit of POST /topics/{topic}, plus room for the envelope.
            let limit = limits.max_publish_bytes + 4096;
            let mut grpc =
                Grpc::new(FrameCodec::<proto::PublishResponse, proto::PublishRequest>::new(limit))
                    .max_decoding_message_size(limit.saturating_mul(2));
            let svc = {
                let state = state.clone();
                tower::service_fn(move |request: tonic::Request<proto::PublishRequest>| {
                    let (state, headers) = (state.clone(), headers.clone());
                    async move {
                        publish(state, peer, headers, request.into_inner())
                            .await
                            .map(|r| tonic::Response::new(Frame::Message(r)))
                    }
                })
            };
            tokio::time::timeout(deadline, grpc.unary(svc, req)).await
        }
        other => {
            let message = format!("no method {other}");
            return Status::unimplemented(message).into_http();
        }
    };
    answer.unwrap_or_else(|_| {
        Status::deadline_exceeded("the request did not arrive within server.header_read_timeout")
            .into_http()
    })
}

/// A status with the `pushgate-error` code and, if there is one, the cursor to resume from.
fn status(code: Code, error: &'static str, message: String, cursor: Option<&str>) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(ERROR_TRAILER, MetadataValue::from_static(error));
    if let Some(value) = cursor.and_then(|c| MetadataValue::try_from(c).ok()) {
        metadata.insert(CURSOR_TRAILER, value);
    }
    Status::with_metadata(code, message, metadata)
}

/// The status for a client error of the shared protocol.
pub fn client_status(err: &ClientError, cursor: Option<&str>) -> Status {
    telemetry::client_error(err.code.as_str());
    let code = match err.code {
        ErrorCode::UnknownTopic => Code::NotFound,
        ErrorCode::Forbidden => Code::PermissionDenied,
        ErrorCode::Unauthorized => Code::Unauthenticated,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::TooManyKeys | ErrorCode::TooManySubscriptions => Code::ResourceExhausted,
        ErrorCode::Internal => Code::Internal,
        _ => Code::InvalidArgument,
    };
    status(code, err.code.as_str(), err.message.clone(), cursor)
}

fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Unauthorized => status(
            Code::Unauthenticated,
            "unauthorized",
            "authentication required".into(),
            None,
        ),
        Refusal::TooManyFromIp => status(
            Code::ResourceExhausted,
            "too_many_connections",
            "too many connections from this address".into(),
            None,
        ),
        Refusal::Unavailable => status(
            Code::Unavailable,
            "unavailable",
            "not accepting connections: retry shortly".into(),
            None,
        ),
        Refusal::Busy => status(
            Code::Unavailable,
            "unavailable",
            "too many new connections right now: retry shortly".into(),
            None,
        ),
    }
}

fn publish_status(err: PublishError) -> Status {
    let (code, error) = match &err {
        PublishError::WarmingUp | PublishError::Unavailable => (Code::Unavailable, "unavailable"),
        PublishError::UnknownTopic => (Code::NotFound, "unknown_topic"),
        PublishError::Forbidden => (Code::PermissionDenied, "forbidden"),
        PublishError::RateLimited => (Code::ResourceExhausted, "rate_limited"),
        PublishError::TooManyTopics(_) => (Code::ResourceExhausted, "too_many_topics"),
    };
    status(code, error, err.to_string(), None)
}

/// The shared protocol's request for a gRPC `SubscribeRequest` (empty strings and lists: not given).
pub fn to_request(r: proto::SubscribeRequest) -> Result<SubscribeRequest, ClientError> {
    let given = |s: String| (!s.is_empty()).then_some(s);
    let filter = match given(r.filter_json) {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            ClientError::new(
                ErrorCode::BadFilter,
                format!("`filter_json` is not JSON: {e}"),
            )
        })?),
    };
    Ok(SubscribeRequest {
        id: None,
        topic: r.topic,
        keys: (!r.keys.is_empty()).then_some(r.keys),
        prefix: given(r.prefix),
        cursor: given(r.cursor),
        snapshot: r.snapshot,
        filter,
        fields: (!r.fields.is_empty()).then_some(r.fields),
        // 0 (the proto default) means unlimited; anything else is checked like the other transports' `max_rate`.
        max_rate: (r.max_rate != 0.0).then_some(r.max_rate),
        resume: given(r.resume),
        delta: given(r.delta),
    })
}

fn event(kind: Kind) -> Frame<proto::Event> {
    Frame::Message(proto::Event { kind: Some(kind) })
}

/// A record's envelope: built once per record, shared by every gRPC stream.
fn envelope(topic: &str, record: &Record) -> Frame<proto::Event> {
    super::first_write(record, crate::record::Transport::Grpc);
    Frame::Shared(record.grpc_envelope(|r| encode_record(topic, r)))
}

/// Encodes `record` as an `Event` whose `Record` carries the record's own JSON text.
pub fn encode_record(topic: &str, r: &Record) -> Bytes {
    let extra = r.extra_members();
    let (op, extra_json) = if extra.is_empty() {
        (String::new(), Vec::new())
    } else {
        let text = format!("{{{extra}}}");
        let op = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .ok()
            .and_then(|m| m.get("op").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_default();
        (op, text.into_bytes())
    };
    let value = r.data().as_bytes().to_vec();
    let (data_json, patch_json) = match r.body() {
        Body::Data => (value, Vec::new()),
        Body::Patch => (Vec::new(), value),
        Body::None => (Vec::new(), Vec::new()),
    };
    let record = proto::Record {
        topic: topic.to_owned(),
        key: r.key.as_deref().map(str::to_owned),
        partition: r.partition,
        // Kinesis: the node-local count in `offset` never leaves the node.
        offset: if r.position.is_some() { 0 } else { r.offset },
        position: r.position.as_deref().unwrap_or_default().to_owned(),
        cursor: r.cursor().to_owned(),
        timestamp_ms: r.timestamp(),
        data_json,
        snapshot: r.is_snapshot(),
        op,
        patch_json,
        extra_json,
    };
    Bytes::from(
        proto::Event {
            kind: Some(Kind::Record(record)),
        }
        .encode_to_vec(),
    )
}

/// Where a client resumes from: the last resumable record it was sent, or a cursor the stream announced.
enum Resume {
    None,
    Text(String),
    Record(Arc<Record>),
}

impl Resume {
    fn cursor(&self) -> Option<&str> {
        match self {
            Resume::None => None,
            Resume::Text(c) => Some(c),
            Resume::Record(r) => Some(r.cursor()),
        }
    }

    fn sent(&mut self, record: &Arc<Record>) {
        if record.resumable() {
            *self = Resume::Record(Arc::clone(record));
        }
    }
}

async fn subscribe(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    request: proto::SubscribeRequest,
) -> Result<EventStream, Status> {
    // Authenticate first: an unauthenticated caller learns nothing else.
    let Admission {
        identity,
        slot,
        outbox,
    } = admission::admit(&state, &headers, None, peer, "grpc").map_err(refusal_status)?;
    let req = to_request(request).map_err(|e| client_status(&e, None))?;
    let given = req.cursor.clone();
    let cursor =
        session::parse_cursor(req.cursor.as_deref()).map_err(|e| client_status(&e, None))?;
    // A node that just started answers once the topic is warm, not UNAVAILABLE.
    session::until_ready(&state, &req.topic, session::TOPIC_READY_WAIT).await;
    let opened = session::open(
        &state,
        &identity.subscribe,
        &req,
        cursor,
        Arc::clone(&outbox),
    )
    .instrument(slot.span(identity.subject.as_deref()))
    .await
    // Warming up: come back with the same cursor.
    .map_err(|e| client_status(&e, given.as_deref()))?;
    // Named whole: the stream must own the guard, or the subscription ends at once.
    let session::Opened {
        guard,
        id: _,
        topic_name,
        cursor,
        recovered,
        gap,
        snapshot_len,
        partial,
        catch_up,
        enforced: _,
    } = opened;
    // An idle stream is mostly its body's state (the `Box` below), so it keeps
    // little, as SSE's stream does: the opening events are built here, the
    // catch-up is boxed and freed once live, the timers are boxed, and of the
    // identity only the expiry is kept.
    let resume = if recovered || snapshot_len == 0 {
        Resume::Text(cursor.clone())
    } else {
        // Cut off before the first snapshot record: start over (each
        // snapshot record's cursor then resumes mid-snapshot).
        Resume::None
    };
    let mut opening = vec![event(Kind::Subscribed(proto::Subscribed {
        topic: topic_name.to_string(),
        cursor,
        recovered,
        snapshot: snapshot_len as u32,
        snapshot_partial: partial.is_some(),
        snapshot_partial_reason: partial.map(|p| p.reason.to_owned()).unwrap_or_default(),
    }))];
    if let Some((reason, earliest)) = gap {
        opening.push(event(Kind::Gap(proto::Gap {
            reason: reason.to_owned(),
            earliest,
        })));
    }
    let mut catch_up = Box::new(catch_up);
    // The stream must own these, or the subscription and the slot end at once.
    let held = Box::new((slot, guard));
    let grace = state.config.auth.expiry_grace;
    let expires = identity
        .time_left()
        .map(|left| tokio::time::Instant::now() + left);
    // Its turn in the drain (see `Shutdown::my_turn`); created once, boxed.
    let mut shutdown_signal = Box::pin(state.shutdown.my_turn());
    let stream = async_stream::stream! {
        let _held = held;
        let mut resume = resume;
        for frame in opening {
            yield Ok(frame);
        }
        loop {
            match Box::pin(catch_up.next_batch()).await {
                Ok(Some(Step::Records(batch))) => {
                    for record in batch {
                        resume.sent(&record);
                        yield Ok(envelope(&topic_name, &record));
                    }
                }
                Ok(Some(Step::Live { replayed, cursor, compacted, skipped })) => {
                    if let Some(c) = &cursor {
                        resume = Resume::Text(c.clone());
                    }
                    yield Ok(event(Kind::Live(proto::Live {
                        replayed: replayed as u64,
                        cursor: cursor.unwrap_or_default(),
                        compacted: compacted.map(|n| n as u64),
                        snapshot_skipped: skipped.map(|n| n as u64),
                    })));
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = match e {
                        CatchUpError::Closed(reason) => reason,
                        CatchUpError::Lost(e) => {
                            catch_up.span().in_scope(|| tracing::warn!(error = %e, "resume lost its range mid-replay"));
                            yield Err(status(Code::Unavailable, "unavailable", "the log dropped part of the replay: resume".into(), resume.cursor()));
                            return;
                        }
                    };
                    yield Err(closed(reason, resume.cursor()));
                    return;
                }
            }
        }
        // Live: the catch-up (its span included) is not needed again.
        drop(catch_up);
        // The token's expiry: a TokenExpiring event then, the end of the stream `grace` later.
        // Boxed: most tokens (and anonymous access) never get here.
        let mut expiry: Option<Pin<Box<tokio::time::Sleep>>> =
            expires.map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut warned = false;
        loop {
            // Drain on every turn so a wake-up taken by another branch is not lost.
            // A fresh batch each time: an idle stream keeps no buffer from its
            // last burst, and one record (the usual batch) needs none.
            // In a block of its own: the batch is not kept across the wait below.
            {
                let mut batch = crate::transport::sse::Batch::new();
                if let Err(reason) = outbox.drain_into(&mut batch) {
                    yield Err(closed(reason, resume.cursor()));
                    return;
                }
                for record in batch {
                    resume.sent(&record);
                    yield Ok(envelope(&topic_name, &record));
                }
            }
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    yield Err(status(
                        Code::Unavailable,
                        "unavailable",
                        "this node is shutting down: resume from pushgate-cursor on another node".into(),
                        resume.cursor(),
                    ));
                    return;
                }
                _ = async {
                    match expiry.as_mut() {
                        Some(at) => at.await,
                        None => std::future::pending().await,
                    }
                } => {
                    if warned {
                        yield Err(status(
                            Code::Unauthenticated,
                            "token_expired",
                            "the token expired: resubscribe with a fresh token and pushgate-cursor".into(),
                            resume.cursor(),
                        ));
                        return;
                    }
                    warned = true;
                    expiry = Some(Box::pin(tokio::time::sleep_until(tokio::time::Instant::now() + grace)));
                    yield Ok(event(Kind::TokenExpiring(proto::TokenExpiring {
                        grace_ms: grace.as_millis() as u64,
                    })));
                }
                _ = outbox.ready() => {}
            }
        }
    };
    static SIZE: std::sync::Once = std::sync::Once::new();
    SIZE.call_once(|| {
        tracing::debug!(
            bytes = std::mem::size_of_val(&stream),
            "gRPC Subscribe stream"
        )
    });
    Ok(Box::pin(stream))
}

/// The status that ends a stream whose outbox closed.
fn closed(reason: CloseReason, cursor: Option<&str>) -> Status {
    match reason {
        CloseReason::Slow => status(
            Code::ResourceExhausted,
            "slow_consumer",
            "the client fell too far behind: resume from pushgate-cursor".into(),
            cursor,
        ),
        CloseReason::TopicReset => status(
            Code::Unavailable,
            "topic_reset",
            "the topic was recreated or deleted: subscribe again".into(),
            cursor,
        ),
        CloseReason::Closed => status(
            Code::Unavailable,
            // The drain's code: the client does what it does after a drain.
            "unavailable",
            "closed by the operator: resume from pushgate-cursor (any node)".into(),
            cursor,
        ),
        CloseReason::Revoked => status(
            Code::Unauthenticated,
            "revoked",
            "the token was revoked".into(),
            cursor,
        ),
        CloseReason::Unsubscribed => status(
            Code::PermissionDenied,
            "revoked",
            "the subject's grants no longer allow this subscription".into(),
            cursor,
        ),
    }
}

/// Checks a gRPC publish's records like `POST /topics/{topic}` checks its body.
pub fn check_records(
    records: Vec<proto::PublishRecord>,
    max_records: usize,
    max_key_bytes: usize,
) -> Result<Vec<NewRecord>, String> {
    if records.is_empty() {
        return Err("`records` is empty".into());
    }
    if records.len() > max_records {
        return Err(format!("at most {max_records} records per request"));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(key) = &r.key {
                if key.len() > max_key_bytes {
                    return Err(format!(
                        "records[{i}]: `key` is longer than {max_key_bytes} bytes"
                    ));
                }
            }
            if r.data_json.is_empty() {
                return Err(format!("records[{i}]: `data_json` is missing"));
            }
            let value: serde_json::Value = serde_json::from_slice(&r.data_json)
                .map_err(|e| format!("records[{i}]: `data_json` is not JSON: {e}"))?;
            Ok(NewRecord {
                key: r.key.map(|k| Arc::from(k.as_str())),
                // Compact text, as the other transports carry it.
                data: value.to_string().into_boxed_str(),
                trace: None,
            })
        })
        .collect()
}

async fn publish(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    request: proto::PublishRequest,
) -> Result<proto::PublishResponse, Status> {
    let unauthenticated = || {
        status(
            Code::Unauthenticated,
            "unauthorized",
            "authentication required".into(),
            None,
        )
    };
    let found = auth::find_token(&headers, None, &state.config.auth.cookie);
    // As for POST /topics/{topic}: a cookie only counts from an allowed page.
    if matches!(found, Some((_, auth::TokenSource::Cookie)))
        && !auth::request_origin_allowed(&headers, &state.config.websocket.allowed_origins)
    {
        return Err(status(
            Code::PermissionDenied,
            "forbidden_origin",
            "origin not allowed".into(),
            None,
        ));
    }
    let token = found.map(|(token, _)| token);
    if token.is_none() && !state.config.auth.anonymous_publish {
        return Err(unauthenticated());
    }
    let identity = state.auth.identify(token.as_deref()).map_err(|e| {
        tracing::debug!(error = %e, %peer, "publish authentication failed");
        unauthenticated()
    })?;
    let topic_name = request.topic;
    let existing = publish::check_topic(&state, &topic_name)
        .await
        .map_err(publish_status)?;
    let limits = &state.config.limits;
    let records = check_records(
        request.records,
        limits.max_publish_records,
        limits.max_key_bytes,
    )
    .map_err(|m| status(Code::InvalidArgument, "bad_request", m, None))?;
    let caller = publish::caller(&state, &identity, peer, &headers);
    let (topic, appended) =
        publish::append(&state, &identity, &caller, &topic_name, existing, records)
            .await
            .map_err(publish_status)?;
    Ok(proto::PublishResponse {
        records: appended
            .iter()
            .map(|a| proto::Appended {
                partition: a.partition,
                // Kinesis: the sequence number goes in `position`.
                offset: if a.position.is_some() { 0 } else { a.offset },
                cursor: topic.cursor_after_appended(a),
                position: a.position.as_deref().unwrap_or_default().to_owned(),
            })
            .collect(),
        topic: topic_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_mean_not_given() {
        let req = to_request(proto::SubscribeRequest {
            topic: "t".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(req.keys, None);
        assert_eq!(req.cursor, None);
        assert_eq!(req.max_rate, None);
        assert_eq!(req.filter, None);
        let bad = to_request(proto::SubscribeRequest {
            topic: "t".into(),
            filter_json: "{nope".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadFilter);
    }

    #[test]
    fn publish_records_are_checked_whole() {
        let rec = |key: Option<&str>, data: &str| proto::PublishRecord {
            key: key.map(str::to_owned),
            data_json: data.as_bytes().to_vec(),
        };
        let ok = check_records(
            vec![rec(Some("A"), "{ \"x\" : 1 }"), rec(None, "null")],
            10,
            8,
        )
        .unwrap();
        assert_eq!(&*ok[0].data, r#"{"x":1}"#);
        assert!(ok[1].key.is_none());
        assert!(check_records(vec![], 10, 8).is_err());
        assert!(check_records(vec![rec(None, "{")], 10, 8).is_err());
        assert!(check_records(vec![rec(None, "")], 10, 8).is_err());
        assert!(check_records(vec![rec(Some("waytoolongkey"), "1")], 10, 8).is_err());
        assert!(check_records(vec![rec(None, "1"); 11], 10, 8).is_err());
    }
}
