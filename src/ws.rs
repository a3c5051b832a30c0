//! The WebSocket transport, `GET /ws`: JSON text frames, many subscriptions per connection.
//!
//! One task per connection reads client messages, writes queued records,
//! pings, and watches for shutdown; there is no second task and no channel in
//! between. Records are written as the shared frames encoded at ingest.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::{self, Identity};
use crate::http::{self, json_error, Admission};
use crate::hub::Filter;
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{self, close, ClientError, ClientMessage, ErrorCode, SubscribeRequest};
use crate::record::Record;
use crate::session::{self, CatchUpError, Step, SubGuard};
use crate::state::{AppState, ConnectionSlot};
use crate::telemetry;

/// How long we keep reading after sending a Close, for the client's Close to arrive.
const CLOSE_LINGER: Duration = Duration::from_secs(3);

pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Checked before any upgrade: a refused handshake never becomes a WebSocket.
    if !auth::origin_allowed(&headers, &state.config.websocket.allowed_origins) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "origin not allowed",
        );
    }
    let admission = match http::admit(&state, &headers, query.as_deref(), peer, "ws") {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    configure(upgrade, &state)
        .on_upgrade(move |socket| {
            let tracked = state.shutdown.tracker().token();
            async move {
                Connection::new(state, admission).run(socket).await;
                drop(tracked);
            }
        })
        .into_response()
}

/// The production framing settings, shared with the conformance echo endpoint.
fn configure(upgrade: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let ws = &state.config.websocket;
    let max_message = state.config.limits.max_message_bytes;
    upgrade
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_message_size(max_message)
        .max_frame_size(max_message)
}

/// `GET /echo` (only with `testing.echo_endpoint`): echoes every message, for Autobahn.
pub async fn echo(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    configure(upgrade, &state)
        .on_upgrade(|mut socket| async move {
            // Keep reading after a Close until the stream ends, so the close handshake completes.
            while let Some(message) = socket.recv().await {
                let reply = match message {
                    Ok(Message::Text(t)) => Message::Text(t),
                    Ok(Message::Binary(b)) => Message::Binary(b),
                    Ok(_) => continue,
                    Err(e) => {
                        if let Some((code, reason)) = read_error(&e) {
                            close_socket(&mut socket, code, reason).await;
                        }
                        return;
                    }
                };
                if socket.send(reply).await.is_err() {
                    return;
                }
            }
        })
        .into_response()
}

struct Active {
    id: Value,
    topic: Arc<str>,
    filter: Filter,
    _guard: SubGuard,
}

#[derive(Clone, Copy)]
enum Timer {
    Expiring,
    Expired,
    NeverSubscribed,
}

/// Why the connection loop ended: a close frame to send, or nothing (the peer is gone).
type Ending = Option<(u16, &'static str)>;

struct Connection {
    state: AppState,
    outbox: Arc<Outbox>,
    batch: Vec<Arc<Record>>,
    subs: Vec<Active>,
    last_seen: Instant,
    identity: Identity,
    ever_subscribed: bool,
    /// When the token expires: warn then, close `auth.expiry_grace` later.
    expiry: Option<Instant>,
    warned: bool,
    _slot: ConnectionSlot,
}

impl Connection {
    fn new(state: AppState, admission: Admission) -> Self {
        let outbox = Arc::new(Outbox::new(state.config.limits.queue_bytes));
        let expiry = admission
            .identity
            .time_left()
            .map(|left| Instant::now() + left);
        Self {
            state,
            outbox,
            batch: Vec::new(),
            subs: Vec::new(),
            last_seen: Instant::now(),
            identity: admission.identity,
            ever_subscribed: false,
            expiry,
            warned: false,
            _slot: admission.slot,
        }
    }

    /// The next time-based event: the expiry warning, the expiry close, or the
    /// subscribe deadline for a connection that never subscribed.
    fn deadline(&self, opened: Instant) -> Option<(Instant, Timer)> {
        let grace = self.state.config.auth.expiry_grace;
        let expiry = self.expiry.map(|at| {
            if self.warned {
                (at + grace, Timer::Expired)
            } else {
                (at, Timer::Expiring)
            }
        });
        let subscribe = (!self.ever_subscribed).then(|| {
            (
                opened + self.state.config.websocket.subscribe_timeout,
                Timer::NeverSubscribed,
            )
        });
        [expiry, subscribe]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    async fn run(mut self, mut socket: WebSocket) {
        let interval = self.state.config.websocket.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        let opened = Instant::now();
        // The shutdown signal and the deadline timer live across turns of the
        // loop: re-creating them on every wake-up registered a timer and a
        // cancellation waiter per delivered frame.
        let shutdown_signal = shutdown.triggered();
        tokio::pin!(shutdown_signal);
        let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let timer = tokio::time::sleep_until(never);
        tokio::pin!(timer);
        let mut armed: Option<(Instant, Timer)> = None;
        let ending: Ending = loop {
            // Drain first on every turn, whatever woke us, so no wake-up is lost.
            // Rarely-taken paths are boxed so the idle connection task stays
            // small (its size is that of its largest suspended state).
            match self.flush_outbox(&mut socket).await {
                Ok(()) => {}
                Err(ending) => break ending,
            }
            let deadline = self.deadline(opened);
            if deadline.map(|(at, _)| at) != armed.map(|(at, _)| at) {
                timer.as_mut().reset(deadline.map_or(never, |(at, _)| at));
            }
            armed = deadline;
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => break Some((close::RESTART, "server restarting")),
                which = async { (&mut timer).await; armed.map(|(_, which)| which) }, if armed.is_some() => match which {
                    None => {}
                    Some(Timer::Expiring) => {
                        self.warned = true;
                        let grace = self.state.config.auth.expiry_grace.as_millis();
                        if Box::pin(send_text(&mut socket, protocol::token_expiring(grace))).await.is_err() {
                            break None;
                        }
                    }
                    Some(Timer::Expired) => break Some((close::TOKEN_EXPIRED, "token expired")),
                    Some(Timer::NeverSubscribed) => break Some((close::IDLE, "no subscription made in time")),
                },
                message = socket.recv() => {
                    self.last_seen = Instant::now();
                    match message {
                        None => break None,
                        Some(Err(e)) => break read_error(&e),
                        Some(Ok(Message::Text(text))) => {
                            if let Err(ending) = Box::pin(self.on_text(&mut socket, text.as_str())).await {
                                break ending;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let err = ClientError::new(ErrorCode::BadMessage, "binary frames are not supported; send JSON text");
                            if Box::pin(send_error(&mut socket, None, &err)).await.is_err() {
                                break None;
                            }
                        }
                        // tungstenite answers pings itself; a pong just proves liveness.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        // The reply Close is queued by tungstenite; keep reading until the stream ends.
                        Some(Ok(Message::Close(_))) => {}
                    }
                }
                _ = self.outbox.ready() => {}
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > interval * 2 {
                        break Some((close::IDLE, "no frames from client for two ping intervals"));
                    }
                    if Box::pin(socket.send(Message::Ping(Default::default()))).await.is_err() {
                        break None;
                    }
                }
            }
        };
        // Stop receiving before the close handshake, so nothing more is queued.
        self.subs.clear();
        if let Some((code, reason)) = ending {
            Box::pin(close_socket(&mut socket, code, reason)).await;
        }
    }

    async fn flush_outbox(&mut self, socket: &mut WebSocket) -> Result<(), Ending> {
        // Reused across wake-ups: no allocation per delivery burst per subscriber.
        let mut batch = std::mem::take(&mut self.batch);
        match self.outbox.drain_into(&mut batch) {
            Ok(()) => {}
            Err(CloseReason::Slow) => {
                return Err(Some((
                    close::SLOW,
                    "too slow: reconnect and resume from your last cursor",
                )))
            }
            Err(CloseReason::TopicReset) => {
                return Err(Some((
                    close::TOPIC_RESET,
                    "topic was recreated: resubscribe",
                )))
            }
        }
        let sent = send_records(socket, &batch).await;
        batch.clear();
        // Keep a small buffer for the next burst; give back what a big one grew.
        if batch.capacity() > 64 {
            batch = Vec::new();
        }
        self.batch = batch;
        sent.map_err(|_| None)
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Ending> {
        let message = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(err) => {
                telemetry::client_error(err.code.as_str());
                return send_error(socket, None, &err).await.map_err(|_| None);
            }
        };
        let sent = match message {
            ClientMessage::Ping { id } => send_text(socket, protocol::pong(id.as_ref())).await,
            ClientMessage::Unsubscribe { id, topic } => {
                let found = self.subs.iter().position(|s| match (&id, &topic) {
                    (Some(id), _) => &s.id == id,
                    (None, Some(topic)) => &*s.topic == topic.as_str(),
                    (None, None) => false,
                });
                match found {
                    Some(i) => {
                        let active = self.subs.swap_remove(i);
                        send_text(socket, protocol::unsubscribed(&active.id, &active.topic)).await
                    }
                    None => {
                        let err =
                            ClientError::new(ErrorCode::NotSubscribed, "no such subscription");
                        send_error(socket, id.as_ref(), &err).await
                    }
                }
            }
            ClientMessage::Subscribe(req) => return self.subscribe(socket, req).await,
            ClientMessage::Refresh { token } => return self.refresh(socket, &token).await,
        };
        sent.map_err(|_| None)
    }

    /// Swaps in a fresh token. It must name the same subject; subscriptions the
    /// new grants no longer cover are ended with a `forbidden` error.
    async fn refresh(&mut self, socket: &mut WebSocket, token: &str) -> Result<(), Ending> {
        let fresh = match self.state.auth.verify(token) {
            Ok(identity)
                if identity.subject == self.identity.subject
                    || self.identity.expires_at.is_none() =>
            {
                identity
            }
            Ok(_) | Err(_) => {
                let err = ClientError::new(ErrorCode::Unauthorized, "token refused");
                return send_error(socket, None, &err).await.map_err(|_| None);
            }
        };
        self.expiry = fresh.time_left().map(|left| Instant::now() + left);
        self.warned = false;
        let mut kept = Vec::with_capacity(self.subs.len());
        for active in std::mem::take(&mut self.subs) {
            if fresh.subscribe.allows_filter(&active.topic, &active.filter) {
                kept.push(active);
            } else {
                let err = ClientError::new(
                    ErrorCode::Forbidden,
                    "the new token does not cover this subscription",
                );
                send_error(socket, Some(&active.id), &err)
                    .await
                    .map_err(|_| None)?;
            }
        }
        self.subs = kept;
        let reply = protocol::refreshed(fresh.expires_at);
        self.identity = fresh;
        send_text(socket, reply).await.map_err(|_| None)
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        req: SubscribeRequest,
    ) -> Result<(), Ending> {
        let id = req.id.clone();
        let refuse = |code, message: String| ClientError::new(code, message);
        let checked =
            if self.subs.len() >= self.state.config.limits.max_subscriptions_per_connection {
                Err(refuse(
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "at most {} subscriptions per connection",
                        self.state.config.limits.max_subscriptions_per_connection
                    ),
                ))
            } else if self.subs.iter().any(|s| *s.topic == *req.topic) {
                Err(refuse(
                    ErrorCode::AlreadySubscribed,
                    "already subscribed to this topic on this connection; unsubscribe first".into(),
                ))
            } else if self.subs.iter().any(|s| Some(&s.id) == id.as_ref()) {
                Err(refuse(
                    ErrorCode::AlreadySubscribed,
                    "subscription id in use".into(),
                ))
            } else {
                session::parse_cursor(req.cursor.as_deref())
            };
        let opened = match checked {
            Ok(cursor) => {
                let grants = &self.identity.subscribe;
                session::open(&self.state, grants, &req, cursor, Arc::clone(&self.outbox)).await
            }
            Err(e) => Err(e),
        };
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(err) => {
                telemetry::client_error(err.code.as_str());
                return send_error(socket, id.as_ref(), &err)
                    .await
                    .map_err(|_| None);
            }
        };
        let subscribed = protocol::subscribed(
            &opened.id,
            &opened.topic_name,
            &opened.cursor,
            opened.recovered,
            opened.snapshot_len,
        );
        send_text(socket, subscribed).await.map_err(|_| None)?;
        if let Some((reason, earliest)) = &opened.gap {
            let gap = protocol::gap(&opened.id, &opened.topic_name, reason, earliest);
            send_text(socket, gap).await.map_err(|_| None)?;
        }
        loop {
            match opened.catch_up.next_batch().await {
                Ok(Some(Step::Records(batch))) => {
                    send_records(socket, &batch).await.map_err(|_| None)?
                }
                Ok(Some(Step::Live { replayed })) => {
                    let live = protocol::live(&opened.id, &opened.topic_name, replayed);
                    send_text(socket, live).await.map_err(|_| None)?
                }
                Ok(None) => break,
                Err(CatchUpError::Slow) => {
                    return Err(Some((
                        close::SLOW,
                        "too slow: reconnect and resume from your last cursor",
                    )))
                }
                Err(CatchUpError::TopicReset) => {
                    return Err(Some((
                        close::TOPIC_RESET,
                        "topic was recreated: resubscribe",
                    )))
                }
                Err(CatchUpError::Lost(e)) => {
                    tracing::warn!(error = %e, "resume lost its range mid-replay");
                    return Err(Some((
                        close::RECOVERY_LOST,
                        "replay range is gone: resubscribe",
                    )));
                }
            }
        }
        self.ever_subscribed = true;
        self.subs.push(Active {
            id: opened.id,
            topic: opened.topic_name,
            filter: opened.guard.sub.filter.clone(),
            _guard: opened.guard,
        });
        Ok(())
    }
}

/// Maps a read error to the close we send, if any.
fn read_error(error: &axum::Error) -> Ending {
    // axum wraps tungstenite's error without a typed accessor; its Display is stable.
    let text = error.to_string();
    if text.contains("Space limit exceeded") {
        return Some((close::TOO_BIG, "message too big"));
    }
    if text.contains("UTF-8 encoding error") {
        return Some((close::BAD_DATA, "text frame is not UTF-8"));
    }
    if text.contains("WebSocket protocol error") {
        return Some((close::PROTOCOL, "protocol error"));
    }
    tracing::debug!(error = %text, "websocket read failed");
    None
}

async fn send_records(socket: &mut WebSocket, records: &[Arc<Record>]) -> Result<(), axum::Error> {
    if records.is_empty() {
        return Ok(());
    }
    // Queue the whole batch, then flush once: one write for frames that piled up.
    for record in records {
        socket.feed(Message::Text(record.ws.clone())).await?;
    }
    socket.flush().await
}

async fn send_text(socket: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(Utf8Bytes::from(text))).await
}

async fn send_error(
    socket: &mut WebSocket,
    id: Option<&Value>,
    err: &ClientError,
) -> Result<(), axum::Error> {
    send_text(socket, protocol::error(id, err)).await
}

/// Sends a Close and keeps reading until the client's Close (or EOF), so the
/// handshake completes cleanly; gives up after [`CLOSE_LINGER`].
async fn close_socket(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}
