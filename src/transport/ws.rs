//! The WebSocket transport, `GET /ws`: JSON text frames, many subscriptions per connection.
//!
//! One task per connection reads client messages, writes queued records,
//! pings, and watches for shutdown; there is no second task and no channel in
//! between. Records are written as the shared frames encoded at ingest,
//! straight to the socket ([`ws_io`](super::ws_io)); tungstenite reads and
//! frames everything else.
//!
//! Every write goes through [`Connection::guarded`]: a socket with room takes
//! it at once; a full one races the write against shutdown, the outbox
//! closing (slow consumer) and `limits.write_timeout`, so a client that stops
//! reading is dropped, and never holds this task, its slot or a drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use super::ws_io::{Socket, Upgrade};

mod echo;
mod token;
pub use echo::echo;
mod grants;

use crate::admission::{self, Admission};
use crate::auth::{self, Grants};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{self, close, ClientError, ClientMessage, ErrorCode, SubscribeRequest};
use crate::reply::json_error;
use crate::session::{self, CatchUpError, Step, SubGuard};
use crate::stall::WriteWatch;
use crate::stall::DRAIN_STALL;
use crate::state::{AppState, ConnectionSlot};
use crate::telemetry;

/// How long we keep reading after sending a Close, for the client's Close to arrive.
const CLOSE_LINGER: Duration = Duration::from_secs(3);

pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    watch: Option<Extension<WriteWatch>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    // Checked before any upgrade: a refused handshake never becomes a WebSocket.
    if !auth::origin_allowed(&headers, &state.config.websocket.allowed_origins) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "origin not allowed",
        );
    }
    let admission = match admission::admit(&state, &headers, query.as_deref(), peer, "ws") {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    let (response, socket) = upgrade.accept(
        config(&state),
        state.config.websocket.compression == crate::config::WsCompression::Shared,
    );
    let tracker = state.shutdown.tracker().clone();
    let connection = Connection::new(state, admission, watch.map(|w| w.0), query.as_deref());
    tracker.clone().spawn(async move {
        if let Some(socket) = socket.await {
            // A task of its own: run inside this one, the connection would
            // also keep this task's captures for its whole life (the compiler
            // does not overlap them with the running state: about 1 KiB per
            // idle connection).
            tracker.spawn(connection.run(socket));
        }
    });
    response
}

/// The production framing settings, shared with the conformance echo endpoint.
fn config(state: &AppState) -> WebSocketConfig {
    let ws = &state.config.websocket;
    let max_message = state.config.limits.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(ws.read_buffer_bytes)
        .write_buffer_size(ws.write_buffer_bytes)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

struct Active {
    id: Value,
    topic: Arc<str>,
    /// The filter the token enforced when this subscription opened.
    enforced: Option<Box<str>>,
    /// Holds the subscription in the hub (dropping it unsubscribes); its filter is the one checked on refresh.
    guard: SubGuard,
}

#[derive(Clone, Copy)]
enum Timer {
    Ping,
    Expiring,
    Expired,
    NeverSubscribed,
    /// Look again at subscribes parked while their topic warms.
    Warming,
}

/// Subscribes that met their topic warming on this node (a node just
/// started): answered when the topic is ready, or `unavailable` once
/// [`session::TOPIC_READY_WAIT`] has passed. The connection's other messages
/// and subscriptions go on meanwhile.
struct Parked {
    requests: Vec<(SubscribeRequest, Instant)>,
    next_check: Instant,
}

/// What the connection loop woke up for.
enum Event {
    Outbox,
    Shutdown,
    Timer,
    /// The error boxed: the event lives across the awaits of its handling.
    Message(Option<Result<Message, Box<WsError>>>),
}

/// Why the connection loop ended, and what is left to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The peer is gone or the socket failed: nothing more to send.
    Gone,
    /// Send this close frame and wait (bounded) for the peer's.
    Close(u16, &'static str),
    /// The socket is not taking bytes: try this close frame once, then drop.
    Abort(u16, &'static str),
    /// The client sent a Close: tungstenite queued the reply; send it and read to the end.
    Replied,
}

impl Ending {
    fn of(reason: CloseReason) -> (u16, &'static str) {
        match reason {
            CloseReason::Slow => (
                close::SLOW,
                "too slow: reconnect and resume from your last cursor",
            ),
            CloseReason::TopicReset => (
                close::TOPIC_RESET,
                "topic was recreated or deleted: resubscribe",
            ),
            // The drain's code: reconnect (to any node) and resume.
            CloseReason::Closed => (close::RESTART, "closed by the operator: reconnect"),
            CloseReason::Revoked => (close::REVOKED, "revoked"),
            // Only SSE and gRPC streams are closed for narrowed grants (see `grants`).
            CloseReason::Unsubscribed => (close::POLICY, "revoked"),
        }
    }
}

struct Connection {
    state: AppState,
    outbox: Arc<Outbox>,
    subs: Vec<Active>,
    last_seen: Instant,
    /// The token's subject and subscribe grants (its publish grants are of no use here).
    subject: Option<String>,
    grants: Grants,
    /// Narrower grants an operator set for the subject (the control topic),
    /// in force with the token's until the token is refreshed.
    narrowed: Option<Arc<Grants>>,
    ever_subscribed: bool,
    /// When the token expires: warn then, close `auth.expiry_grace` later.
    expiry: Option<Instant>,
    warned: bool,
    /// Whether the socket is taking bytes; fed by the IO wrapper when `watched`.
    watch: WriteWatch,
    watched: bool,
    /// Turns in a row the outbox was polled first and won (see `run`).
    records_first: u8,
    /// Boxed: nearly every connection never has one.
    parked: Option<Box<Parked>>,
    /// The token's `subscribe_on_connect`, opened first thing (boxed: most tokens have none).
    on_connect: Option<Box<token::OnConnect>>,
    slot: ConnectionSlot,
}

impl Connection {
    fn new(
        state: AppState,
        admission: Admission,
        watch: Option<WriteWatch>,
        query: Option<&str>,
    ) -> Self {
        let outbox = admission.outbox;
        let expiry = admission
            .identity
            .time_left()
            .map(|left| Instant::now() + left);
        Self {
            state,
            outbox,
            subs: Vec::new(),
            last_seen: Instant::now(),
            subject: admission.identity.subject,
            grants: admission.identity.subscribe,
            narrowed: None,
            ever_subscribed: false,
            expiry,
            warned: false,
            watched: watch.is_some(),
            watch: watch.unwrap_or_default(),
            records_first: 0,
            parked: None,
            on_connect: token::pending(admission.identity.on_connect, query),
            slot: admission.slot,
        }
    }

    /// The next time-based event: the ping, the expiry warning, the expiry
    /// close, or the subscribe deadline for a connection that never subscribed.
    /// One timer serves them all: an idle connection keeps one timer entry.
    fn deadline(&self, opened: Instant, next_ping: Instant) -> (Instant, Timer) {
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
        let parked = self.parked.as_ref().map(|p| (p.next_check, Timer::Warming));
        [Some((next_ping, Timer::Ping)), expiry, subscribe, parked]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
            .expect("the ping is always due")
    }

    // Not an `async fn`: that would move `self` and `socket` from its
    // arguments into locals and keep both copies in the task (about 660 bytes
    // per idle connection); an `async move` block uses its captures in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, mut socket: Socket) -> impl Future<Output = ()> {
        async move {
            let mut next_ping = Instant::now() + self.state.config.websocket.ping_interval;
            let opened = Instant::now();
            // The shutdown signal and the deadline timer live across turns of the
            // loop: re-creating them on every wake-up registered a timer and a
            // cancellation waiter per delivered frame.
            let shutdown_signal = self.state.shutdown.my_turn();
            tokio::pin!(shutdown_signal);
            let timer = tokio::time::sleep_until(next_ping);
            tokio::pin!(timer);
            if self.state.config.websocket.direct_writes {
                if let Some(fd) = self.watch.cleartext_socket() {
                    socket.get_mut().attach(&self.outbox, fd);
                }
            }
            let ending: Ending = loop {
                if self.on_connect.is_some() {
                    if let Err(ending) = Box::pin(self.subscribe_from_token(&mut socket)).await {
                        break ending;
                    }
                }
                // Drain first on every turn, whatever woke us, so no wake-up is lost.
                // Rarely-taken paths are boxed so the idle connection task stays
                // small (its size is that of its largest suspended state).
                if let Err(ending) = self.flush_outbox(&mut socket).await {
                    break ending;
                }
                let deadline = self.deadline(opened, next_ping);
                if deadline.0 != timer.deadline() {
                    timer.as_mut().reset(deadline.0);
                }
                // Which event the timer is set for; its deadline is the timer's own.
                let armed = deadline.1;
                // While it waits with nothing queued, the fan-out loop writes
                // live records to the socket itself (cleartext, no compression);
                // whatever wakes it takes the socket back first, so everything
                // it does below (replies, snapshots, pings) is ordered as before.
                socket.get_mut().open_direct();
                // Records first: on a wake-up by the outbox (nearly every one under
                // load) the read side, the timer and the shutdown signal are not
                // polled again; their wakers stay registered. After 16 such turns in
                // a row the others go first once, so a busy outbox cannot starve
                // reads, pings or a drain.
                let event = if self.records_first < 16 {
                    tokio::select! {
                        biased;
                        _ = self.outbox.ready() => Event::Outbox,
                        _ = &mut shutdown_signal => Event::Shutdown,
                        _ = &mut timer => Event::Timer,
                        message = socket.next() => Event::Message(message.map(|m| m.map_err(Box::new))),
                    }
                } else {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown_signal => Event::Shutdown,
                        _ = &mut timer => Event::Timer,
                        message = socket.next() => Event::Message(message.map(|m| m.map_err(Box::new))),
                        _ = self.outbox.ready() => Event::Outbox,
                    }
                };
                socket.get_mut().claim();
                self.records_first = match event {
                    Event::Outbox if self.records_first < 16 => self.records_first + 1,
                    _ => 0,
                };
                match event {
                    Event::Outbox => {
                        if let Some(grants) = self.state.take_narrowed(self.slot.id()) {
                            if let Err(ending) = Box::pin(self.narrow(&mut socket, grants)).await {
                                break ending;
                            }
                        }
                    }
                    Event::Shutdown => break Ending::Close(close::RESTART, "server restarting"),
                    Event::Timer => match armed {
                        Timer::Ping => {
                            let interval = self.state.config.websocket.ping_interval;
                            // A client still reading a backlog answers pings only
                            // once it reaches them: while its kernel shows it
                            // reading, it is held to the write timeout instead, as
                            // during a catch-up. Asked at every ping, to see reads.
                            let reading = self.watch.last_read().is_some_and(|since| {
                                since < self.state.config.limits.write_timeout
                            });
                            if self.last_seen.elapsed() > interval * 2 && !reading {
                                break Ending::Close(
                                    close::IDLE,
                                    "no frames from client for two ping intervals",
                                );
                            }
                            next_ping = Instant::now() + interval;
                            socket.get_mut().push_ping();
                            if let Err(ending) =
                                Box::pin(self.guarded(write_queued(&mut socket))).await
                            {
                                break ending;
                            }
                        }
                        Timer::Expiring => {
                            self.warned = true;
                            let grace = self.state.config.auth.expiry_grace.as_millis();
                            let warning = send_text(&mut socket, protocol::token_expiring(grace));
                            if let Err(ending) = Box::pin(self.guarded(warning)).await {
                                break ending;
                            }
                        }
                        Timer::Expired => {
                            break Ending::Close(close::TOKEN_EXPIRED, "token expired")
                        }
                        Timer::NeverSubscribed => {
                            break Ending::Close(close::IDLE, "no subscription made in time")
                        }
                        Timer::Warming => {
                            let span = self.span();
                            if let Err(ending) =
                                Box::pin(self.retry_parked(&mut socket).instrument(span)).await
                            {
                                break ending;
                            }
                        }
                    },
                    Event::Message(message) => {
                        self.last_seen = Instant::now();
                        match message {
                            None => break Ending::Gone,
                            Some(Err(e)) => break self.span().in_scope(|| read_error(&e)),
                            Some(Ok(Message::Text(text))) => {
                                // The connection's span around what the message leads to
                                // (built now, not stored: see `ConnectionSlot::span`).
                                let span = self.span();
                                if let Err(ending) = Box::pin(
                                    self.on_text(&mut socket, text.as_str()).instrument(span),
                                )
                                .await
                                {
                                    break ending;
                                }
                            }
                            Some(Ok(Message::Binary(_))) => {
                                let err = ClientError::new(
                                    ErrorCode::BadMessage,
                                    "binary frames are not supported; send JSON text",
                                );
                                if let Err(ending) =
                                    Box::pin(self.guarded(send_error(&mut socket, None, &err)))
                                        .await
                                {
                                    break ending;
                                }
                            }
                            // tungstenite answers pings itself; a pong just proves liveness.
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            // No record may follow the reply Close tungstenite queued.
                            Some(Ok(Message::Close(_))) => break Ending::Replied,
                            Some(Ok(Message::Frame(_))) => {}
                        }
                    }
                }
            };
            // Stop receiving before the close handshake, so nothing more is queued.
            self.subs.clear();
            match ending {
                Ending::Gone => {}
                Ending::Close(code, reason) => {
                    Box::pin(self.close(&mut socket, code, reason)).await
                }
                // Boxed, like every rarely-taken path: the task's size is that of its largest state.
                Ending::Replied => {
                    let linger = tokio::time::timeout(CLOSE_LINGER, async {
                        if socket.flush().await.is_ok() {
                            while let Some(Ok(_)) = socket.next().await {}
                        }
                    });
                    let _ = Box::pin(linger).await;
                }
                Ending::Abort(code, reason) => {
                    // One try, no wait: the frame usually cannot get past what is already queued.
                    let _ = poll_once(Box::pin(socket.send(close_frame(code, reason)))).await;
                }
            }
        }
    }

    /// Runs one socket write. A socket with room finishes it at once (no timer,
    /// no select); a full one races it against shutdown, the outbox closing and
    /// the write deadline. Dropping the write mid-way is safe: tungstenite keeps
    /// whole frames in its buffer, and the connection is ending anyway. The
    /// close that follows is itself bounded (see [`Connection::close`]), so a
    /// slow-closed or draining client is gone within the write timeout (during
    /// a drain, [`DRAIN_STALL`]) even when its close frame cannot be written.
    async fn guarded<F, E>(&self, write: F) -> Result<(), Ending>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mut write = std::pin::pin!(write);
        match poll_once(write.as_mut()).await {
            Poll::Ready(result) => result.map_err(|_| Ending::Gone),
            Poll::Pending => Box::pin(self.blocked(write)).await,
        }
    }

    async fn blocked<F, E>(&self, write: Pin<&mut F>) -> Result<(), Ending>
    where
        F: Future<Output = Result<(), E>>,
    {
        if !self.watched {
            // No IO wrapper reports progress: time the whole blocked write.
            self.watch.note_blocked();
        }
        let limit = self.state.config.limits.write_timeout;
        let outcome = tokio::select! {
            biased;
            result = write => result.map_err(|_| Ending::Gone),
            // Both stop the batch here; the close frame then goes out behind
            // what is already buffered, if the client takes it in time.
            _ = self.state.shutdown.triggered() => {
                Err(Ending::Close(close::RESTART, "server restarting"))
            }
            reason = closed(&self.outbox) => {
                let (code, text) = Ending::of(reason);
                Err(Ending::Close(code, text))
            }
            _ = self.watch.stalled(limit) => {
                telemetry::write_timeout("ws");
                Err(Ending::Abort(close::SLOW, "write timeout: the client is not reading"))
            }
        };
        if !self.watched {
            self.watch.note_progress();
        }
        outcome
    }

    /// Sends a Close and reads until the client's Close (or EOF), so the
    /// handshake completes cleanly. The send gives up when the socket takes
    /// no bytes for the write timeout (during a drain, for [`DRAIN_STALL`]);
    /// the read gives up after [`CLOSE_LINGER`].
    async fn close(&self, socket: &mut Socket, code: u16, reason: &'static str) {
        let limit = self.state.config.limits.write_timeout;
        let stall = if self.state.shutdown.is_triggered() {
            DRAIN_STALL
        } else {
            limit
        };
        let sent = tokio::select! {
            result = socket.send(close_frame(code, reason)) => result.is_ok(),
            _ = self.watch.stalled(stall) => false,
            _ = tokio::time::sleep(limit) => false,
        };
        if !sent {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }

    async fn flush_outbox(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        // The rest of a frame the fan-out loop began goes first.
        socket.get_mut().claim();
        // Straight into the socket's frame queue: no batch in between.
        if let Err(reason) = self.outbox.drain_into(socket.get_mut()) {
            let (code, text) = Ending::of(reason);
            return Err(Ending::Close(code, text));
        }
        if !socket.get_ref().has_queued() {
            return Ok(());
        }
        self.guarded(write_queued(socket)).await
    }

    /// This connection's span, for what is logged about it.
    fn span(&self) -> tracing::Span {
        self.slot.span(self.subject.as_deref())
    }

    async fn on_text(&mut self, socket: &mut Socket, text: &str) -> Result<(), Ending> {
        let message = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(err) => {
                telemetry::client_error(err.code.as_str());
                return self.guarded(send_error(socket, None, &err)).await;
            }
        };
        match message {
            ClientMessage::Ping { id } => {
                self.guarded(send_text(socket, protocol::pong(id.as_ref())))
                    .await
            }
            ClientMessage::Unsubscribe { id, topic } => {
                let found = self.subs.iter().position(|s| match (&id, &topic) {
                    (Some(id), _) => &s.id == id,
                    (None, Some(topic)) => &*s.topic == topic.as_str(),
                    (None, None) => false,
                });
                if found.is_none() {
                    if let Some(req) = self.unpark(id.as_ref(), topic.as_deref()) {
                        let id = req.id.unwrap_or(Value::Null);
                        let reply = protocol::unsubscribed(&id, &req.topic);
                        return self.guarded(send_text(socket, reply)).await;
                    }
                }
                match found {
                    Some(i) => {
                        // Out of the index first: nothing more is queued for it.
                        let active = self.subs.swap_remove(i);
                        drop(active.guard);
                        // Then what was queued before goes out ahead of the
                        // answer: after `unsubscribed`, nothing of it arrives.
                        self.flush_outbox(socket).await?;
                        let reply = protocol::unsubscribed(&active.id, &active.topic);
                        self.guarded(send_text(socket, reply)).await
                    }
                    None => {
                        let err =
                            ClientError::new(ErrorCode::NotSubscribed, "no such subscription");
                        self.guarded(send_error(socket, id.as_ref(), &err)).await
                    }
                }
            }
            ClientMessage::Subscribe(req) => self.subscribe(socket, req, true).await,
            ClientMessage::Refresh { token } => self.refresh(socket, &token).await,
        }
    }

    /// Parked subscribes: how many, and whether one has this topic or id.
    fn parked_count(&self) -> usize {
        self.parked.as_ref().map_or(0, |p| p.requests.len())
    }

    fn parked_has(&self, topic: Option<&str>, id: Option<&Value>) -> bool {
        self.parked.as_ref().is_some_and(|p| {
            p.requests.iter().any(|(r, _)| {
                topic.is_some_and(|t| r.topic == t) || (id.is_some() && r.id.as_ref() == id)
            })
        })
    }

    /// Takes a parked subscribe out by id, or by topic when no id is given.
    fn unpark(&mut self, id: Option<&Value>, topic: Option<&str>) -> Option<SubscribeRequest> {
        let parked = self.parked.as_mut()?;
        let at = parked
            .requests
            .iter()
            .position(|(r, _)| match (id, topic) {
                (Some(id), _) => r.id.as_ref() == Some(id),
                (None, Some(topic)) => r.topic == topic,
                (None, None) => false,
            })?;
        let (req, _) = parked.requests.swap_remove(at);
        if parked.requests.is_empty() {
            self.parked = None;
        }
        Some(req)
    }

    /// Answers the parked subscribes whose topic is ready or whose wait is over.
    async fn retry_parked(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        let Some(parked) = self.parked.take() else {
            return Ok(());
        };
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            parked.requests.into_iter().partition(|(req, until)| {
                *until <= now || !session::readiness(&self.state, &req.topic).is_warming()
            });
        if !waiting.is_empty() {
            self.parked = Some(Box::new(Parked {
                requests: waiting,
                next_check: now + session::READY_POLL,
            }));
        }
        for (req, _) in due {
            self.subscribe(socket, req, false).await?;
        }
        Ok(())
    }

    /// Opens a subscription; `park`: one whose topic is still warming waits
    /// for it (see [`Parked`]) instead of being answered `unavailable` now.
    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        req: SubscribeRequest,
        park: bool,
    ) -> Result<(), Ending> {
        let id = req.id.clone();
        let refuse = |code, message: String| ClientError::new(code, message);
        let checked = if self.subs.len() + self.parked_count()
            >= self.state.config.limits.max_subscriptions_per_connection
        {
            Err(refuse(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} subscriptions per connection",
                    self.state.config.limits.max_subscriptions_per_connection
                ),
            ))
        } else if self.subs.iter().any(|s| *s.topic == *req.topic)
            || self.parked_has(Some(&req.topic), None)
        {
            Err(refuse(
                ErrorCode::AlreadySubscribed,
                "already subscribed to this topic on this connection; unsubscribe first".into(),
            ))
        } else if self.subs.iter().any(|s| Some(&s.id) == id.as_ref())
            || self.parked_has(None, id.as_ref())
        {
            Err(refuse(
                ErrorCode::AlreadySubscribed,
                "subscription id in use".into(),
            ))
        } else {
            session::parse_cursor(req.cursor.as_deref())
        };
        if park && checked.is_ok() && session::readiness(&self.state, &req.topic).is_warming() {
            let now = Instant::now();
            let parked = self.parked.get_or_insert_with(|| {
                Box::new(Parked {
                    requests: Vec::new(),
                    next_check: now + session::READY_POLL,
                })
            });
            parked.requests.push((req, now + session::TOPIC_READY_WAIT));
            return Ok(());
        }
        let checked = checked.and_then(|c| self.narrowed_allows(&req).map(|()| c));
        let opened = match checked {
            Ok(cursor) => {
                let grants = &self.grants;
                session::open(&self.state, grants, &req, cursor, Arc::clone(&self.outbox)).await
            }
            Err(e) => Err(e),
        };
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(err) => {
                telemetry::client_error(err.code.as_str());
                return self.guarded(send_error(socket, id.as_ref(), &err)).await;
            }
        };
        let subscribed = protocol::subscribed(
            &opened.id,
            &opened.topic_name,
            &opened.cursor,
            opened.recovered,
            opened.snapshot_len,
            opened.partial.map(|p| p.reason),
        );
        self.guarded(send_text(socket, subscribed)).await?;
        if let Some((reason, earliest)) = &opened.gap {
            let gap = protocol::gap(&opened.id, &opened.topic_name, reason, earliest);
            self.guarded(send_text(socket, gap)).await?;
        }
        loop {
            if !opened.catch_up.went_live() {
                // The connection's other subscriptions keep flowing during a
                // long snapshot (until this one goes live, none of its
                // records are in the outbox, so the order holds).
                self.flush_outbox(socket).await?;
            }
            match opened.catch_up.next_batch().await {
                Ok(Some(Step::Records(batch))) => {
                    socket.get_mut().extend(batch);
                    self.guarded(write_queued(socket)).await?
                }
                Ok(Some(Step::Live {
                    replayed,
                    cursor,
                    compacted,
                    skipped,
                })) => {
                    let live = protocol::live(
                        &opened.id,
                        &opened.topic_name,
                        replayed,
                        cursor.as_deref(),
                        compacted,
                        skipped,
                    );
                    self.guarded(send_text(socket, live)).await?
                }
                Ok(None) => break,
                Err(CatchUpError::Closed(reason)) => {
                    let (code, text) = Ending::of(reason);
                    return Err(Ending::Close(code, text));
                }
                Err(CatchUpError::Lost(e)) => {
                    opened.catch_up.span().in_scope(
                        || tracing::warn!(error = %e, "resume lost its range mid-replay"),
                    );
                    return Err(Ending::Close(
                        close::RECOVERY_LOST,
                        "replay range is gone: resubscribe",
                    ));
                }
            }
        }
        // This loop wrote and never read: the client's frames (its pongs among
        // them) wait unread in the socket until it ends, and no ping went out
        // meanwhile. Its silence was ours, so the idle rule (4008) counts from
        // here; during the catch-up every write had to make progress within
        // `limits.write_timeout` instead, which is the liveness a reader of a
        // long snapshot shows.
        self.last_seen = Instant::now();
        self.ever_subscribed = true;
        if self.subs.capacity() == 0 {
            // Most connections hold one subscription: room for one, not Vec's four.
            self.subs.reserve_exact(1);
        }
        self.subs.push(Active {
            id: opened.id,
            topic: opened.topic_name,
            enforced: opened.enforced,
            guard: opened.guard,
        });
        Ok(())
    }
}

/// Maps a read error to the close we send, if any.
fn read_error(error: &WsError) -> Ending {
    match error {
        WsError::Capacity(_) => Ending::Close(close::TOO_BIG, "message too big"),
        WsError::Utf8(_) => Ending::Close(close::BAD_DATA, "text frame is not UTF-8"),
        WsError::Protocol(_) => Ending::Close(close::PROTOCOL, "protocol error"),
        _ => {
            tracing::debug!(error = %error, "websocket read failed");
            Ending::Gone
        }
    }
}

/// Polls `future` once: `Ready` with its output, or `Pending` (then dropped by the caller or polled on).
pub(super) async fn poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
}

/// Resolves with the reason once `outbox` is closed (it is woken on every push, too).
async fn closed(outbox: &Outbox) -> CloseReason {
    loop {
        if let Some(reason) = outbox.closed_reason() {
            return reason;
        }
        outbox.ready().await;
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Writes the record frames queued in the socket, in one vectored write when they fit.
/// tungstenite holds nothing here: each of its sends completed before this runs.
fn write_queued(socket: &mut Socket) -> impl Future<Output = std::io::Result<()>> + '_ {
    let io = socket.get_mut();
    std::future::poll_fn(move |cx| Pin::new(&mut *io).poll_flush(cx))
}

/// Sends a reply of ours, framed by the socket's queue (not by tungstenite).
fn send_text(socket: &mut Socket, text: String) -> impl Future<Output = std::io::Result<()>> + '_ {
    socket.get_mut().push_text(&text);
    write_queued(socket)
}

async fn send_error(
    socket: &mut Socket,
    id: Option<&Value>,
    err: &ClientError,
) -> std::io::Result<()> {
    send_text(socket, protocol::error(id, err)).await
}
