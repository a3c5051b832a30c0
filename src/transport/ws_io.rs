//! The WebSocket socket: our own HTTP/1.1 upgrade, and a write queue that puts
//! each record's frame, encoded once at ingest, on the wire beside tungstenite's.
//!
//! tungstenite reads, answers pings and closes, and frames our replies; record
//! frames skip it. Through tungstenite a delivery was a `Message`, a header
//! formatted and the payload copied into its buffer; here it is two slices of
//! the shared [`Record`] in a vectored write.
//!
//! [`FrameIo`] sits between tungstenite and the socket and keeps one ordered
//! queue of whole frames. It takes each write of tungstenite's whole or not at
//! all, so tungstenite never holds part of a frame, and a record appended to
//! the queue always starts at a frame boundary.
//!
//! On a cleartext connection without compression, the hub may also write a
//! record's frame itself while the connection waits with nothing queued
//! ([`Direct`]): [`FrameIo::open_direct`] allows it, and every write of
//! `FrameIo`'s own first [claims](FrameIo::claim) the socket back, taking
//! over the rest of a frame the hub wrote only in part.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::ws_deflate::{compressed_frame, Inflate};
use crate::outbox::{Direct, Outbox};
use crate::record::Record;
use crate::reply::json_error;

/// An upgraded WebSocket connection.
pub type Socket = WebSocketStream<FrameIo<TokioIo<Upgraded>>>;

/// How many bytes of tungstenite's frames may wait behind queued frames
/// before its writes are refused (a client that sends pings but never reads
/// must not grow the queue with pongs).
const COPIED_LIMIT: usize = 64 * 1024;

/// Frames per vectored write (two slices each). The slice array is set up on
/// every write, so it stays small; a longer queue takes more than one write.
const SLICES: usize = 16;

/// A valid HTTP/1.1 WebSocket upgrade request (RFC 6455 4.2.1).
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The permessage-deflate answer, if the client offered one we can honour.
    deflate: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let refuse = |message| json_error(StatusCode::BAD_REQUEST, "bad_request", message);
        if parts.version != Version::HTTP_11 {
            return Err(refuse("WebSocket needs HTTP/1.1"));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                "not a WebSocket handshake: `Connection: Upgrade` and `Upgrade: websocket` are required",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut response = refuse("only WebSocket version 13 is supported");
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(response);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse("`Sec-WebSocket-Key` is missing"));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            json_error(
                StatusCode::UPGRADE_REQUIRED,
                "bad_request",
                "this connection cannot be upgraded",
            )
        })?;
        let deflate = super::ws_deflate::negotiate(headers);
        Ok(Self {
            accept,
            on_upgrade,
            deflate,
        })
    }
}

impl Upgrade {
    /// The 101 answer, and the socket it leads to once hyper hands the
    /// connection over (`None` if the client left first).
    /// With `compress`, permessage-deflate is accepted when the client offered it.
    pub fn accept(
        self,
        config: WebSocketConfig,
        compress: bool,
    ) -> (Response, impl Future<Output = Option<Socket>> + Send) {
        let deflate = self.deflate.filter(|_| compress);
        let inflate = deflate
            .is_some()
            .then(|| Inflate::new(config.max_message_size.unwrap_or(usize::MAX)));
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response();
        if let Some(value) = deflate {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
        }
        let on_upgrade = self.on_upgrade;
        let socket = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let mut io = FrameIo::new(TokioIo::new(upgraded));
                    io.inflate = inflate.map(Box::new);
                    Some(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    None
                }
            }
        };
        (response, socket)
    }
}

/// Whether the comma-separated header `name` holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// One whole frame waiting for the socket.
enum Frame {
    /// Bytes tungstenite wrote (pongs, a close): whole frames, copied.
    Copied(Vec<u8>),
    /// A reply of ours, framed here.
    Reply(Vec<u8>),
    /// A frame that never changes (our ping).
    Static(&'static [u8]),
    /// A record's text frame, shared with every other subscriber.
    Record(Arc<Record>),
    /// A record's frame for a connection that negotiated permessage-deflate:
    /// compressed once per record, shared by every such connection.
    Deflated(Arc<Record>),
}

impl Frame {
    fn parts(&self) -> [&[u8]; 2] {
        match self {
            Frame::Copied(bytes) | Frame::Reply(bytes) => [bytes, &[]],
            Frame::Static(bytes) => [bytes, &[]],
            Frame::Record(record) => record.ws_frame(),
            Frame::Deflated(record) => match record.ws_deflated(compressed_frame) {
                Some(frame) => [frame, &[]],
                None => record.ws_frame(),
            },
        }
    }

    fn len(&self) -> usize {
        Self::sum(self.parts())
    }

    fn sum([a, b]: [&[u8]; 2]) -> usize {
        a.len() + b.len()
    }
}

/// The frames waiting for the socket, in order. A record's frame that finds
/// the queue empty waits in `head`, a pointer's room, and allocates nothing:
/// a subscriber that gets a record now and then (one a second in the fan-out
/// scenario) allocated and freed a `VecDeque` buffer per delivery, because an
/// idle connection keeps no buffer. `head`, when set, is the front.
#[derive(Default)]
struct Frames {
    head: Option<Arc<Record>>,
    rest: VecDeque<Frame>,
}

impl Frames {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.rest.is_empty()
    }

    fn push_back(&mut self, frame: Frame) {
        match frame {
            Frame::Record(record) if self.is_empty() => self.head = Some(record),
            frame => self.rest.push_back(frame),
        }
    }

    /// Each frame's two slices, front first.
    fn parts(&self) -> impl Iterator<Item = [&[u8]; 2]> {
        let head = self.head.as_deref().map(Record::ws_frame);
        head.into_iter().chain(self.rest.iter().map(Frame::parts))
    }

    fn front_len(&self) -> Option<usize> {
        match &self.head {
            Some(record) => Some(Frame::sum(record.ws_frame())),
            None => self.rest.front().map(Frame::len),
        }
    }

    fn pop_front(&mut self) -> Option<Frame> {
        match self.head.take() {
            Some(record) => Some(Frame::Record(record)),
            None => self.rest.pop_front(),
        }
    }

    /// Gives back the buffer of a burst: an idle connection holds none.
    fn release(&mut self) {
        if self.rest.is_empty() {
            self.rest = VecDeque::new();
        }
    }
}

/// The socket under tungstenite, with the frame queue in front of it.
pub struct FrameIo<S> {
    io: S,
    queue: Frames,
    /// Bytes of the front frame already written (below a frame's length).
    written: u32,
    /// Bytes of `Copied` frames in the queue (at most [`COPIED_LIMIT`] and one write).
    copied: u32,
    /// Set when permessage-deflate was negotiated: inbound compressed
    /// messages are inflated here before tungstenite reads them, and records
    /// go out compressed.
    inflate: Option<Box<Inflate>>,
    /// The outbox whose pushes may write to this socket (see [`FrameIo::attach`]).
    direct: Option<Arc<Outbox>>,
    /// Whether this side holds the socket: no push writes to it until
    /// [`FrameIo::open_direct`] hands it out again.
    claimed: bool,
}

impl<S> FrameIo<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            queue: Frames::default(),
            written: 0,
            copied: 0,
            inflate: None,
            direct: None,
            claimed: true,
        }
    }

    /// Lets `outbox`'s pushes write records straight to `fd`, the socket
    /// under `io`, while the connection waits (not with compression: records
    /// go out deflated then). The path is closed again when this drops,
    /// before the socket does. The caller vouches that `fd` is the cleartext
    /// TCP socket `io` writes to.
    pub fn attach(&mut self, outbox: &Arc<Outbox>, fd: RawFd) -> bool {
        if self.inflate.is_some() || self.direct.is_some() {
            return false;
        }
        outbox.set_direct(Some(Box::new(DirectSocket { fd })));
        self.direct = Some(Arc::clone(outbox));
        self.claimed = true;
        true
    }

    /// The connection is about to wait: with nothing queued here, pushes may
    /// write to the socket until the next [`FrameIo::claim`].
    pub fn open_direct(&mut self) {
        if let Some(outbox) = &self.direct {
            if self.claimed && self.queue.is_empty() && outbox.open_direct() {
                self.claimed = false;
            }
        }
    }

    /// Takes the socket back from the pushes before anything else is written
    /// or queued here; the rest of a frame a push wrote in part goes first.
    pub fn claim(&mut self) {
        if self.claimed {
            return;
        }
        self.claimed = true;
        let Some(outbox) = &self.direct else { return };
        if let Some((record, written)) = outbox.claim() {
            // The path was open only while this queue was empty.
            debug_assert!(self.queue.is_empty());
            self.queue.push_back(Frame::Record(record));
            self.written = written as u32;
        }
    }

    /// Queues a record's frame behind everything already written or queued.
    /// Nothing is written until the next flush.
    pub fn push_record(&mut self, record: Arc<Record>) {
        self.claim();
        super::first_write(&record, crate::record::Transport::Ws);
        if self.inflate.is_some() {
            self.queue.push_back(Frame::Deflated(record));
        } else {
            self.queue.push_back(Frame::Record(record));
        }
    }

    /// Queues a text message of ours (a reply), framed here: tungstenite's
    /// write buffer is then never allocated for a connection that only
    /// gets replies, records and pings.
    pub fn push_text(&mut self, text: &str) {
        self.claim();
        let (head, used) = crate::record::ws_text_head(text.len());
        let mut frame = Vec::with_capacity(used as usize + text.len());
        frame.extend_from_slice(&head[..used as usize]);
        frame.extend_from_slice(text.as_bytes());
        // Not counted as `copied`: replies are bounded by the client's requests.
        self.queue.push_back(Frame::Reply(frame));
    }

    /// Queues a ping with no payload.
    pub fn push_ping(&mut self) {
        self.claim();
        self.queue.push_back(Frame::Static(&[0x89, 0x00]));
    }

    /// Whether frames are waiting for the socket.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    fn push_copy(&mut self, bytes: &[u8]) {
        self.claim();
        self.copied += bytes.len() as u32;
        self.queue.push_back(Frame::Copied(bytes.to_vec()));
    }

    /// Marks `n` more bytes written, dropping the frames that are done.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let front = self
                .queue
                .front_len()
                .expect("written bytes came from the queue");
            let left = front - self.written as usize;
            if n < left {
                self.written += n as u32;
                return;
            }
            n -= left;
            self.written = 0;
            if let Some(Frame::Copied(bytes)) = self.queue.pop_front() {
                self.copied -= bytes.len() as u32;
            }
        }
        // An idle connection holds no queue at all; a burst allocates one.
        self.queue.release();
    }
}

impl<S> Drop for FrameIo<S> {
    /// Closes the direct path before `io` (and its descriptor) goes.
    fn drop(&mut self) {
        if let Some(outbox) = self.direct.take() {
            outbox.set_direct(None);
        }
    }
}

/// A cleartext WebSocket's TCP socket, written by the fan-out loop.
struct DirectSocket {
    fd: RawFd,
}

impl Direct for DirectSocket {
    fn write_now(&self, record: &Record) -> Result<(), usize> {
        let [head, payload] = record.ws_frame();
        // SAFETY: the descriptor is the connection's open socket for as long
        // as this exists: the outbox writes only under its lock, and its
        // `FrameIo` removes this under that lock before the socket closes.
        // `ManuallyDrop`: borrowed, never closed here.
        let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(self.fd) });
        // Non-blocking (tokio set it so): a full socket answers `WouldBlock`.
        let written = (&*socket)
            .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
            .unwrap_or(0);
        if written > 0 {
            super::first_write(record, crate::record::Transport::Ws);
        }
        if written == head.len() + payload.len() {
            Ok(())
        } else {
            Err(written)
        }
    }
}

/// Records drained from an outbox go straight into the queue.
impl<S> Extend<Arc<Record>> for FrameIo<S> {
    fn extend<I: IntoIterator<Item = Arc<Record>>>(&mut self, records: I) {
        for record in records {
            self.push_record(record);
        }
    }
}

impl<S: AsyncWrite + Unpin> FrameIo<S> {
    /// Writes queued frames until the queue is empty (`Ready`) or the socket is full (`Pending`).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.claim();
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES * 2];
            let mut count = 0;
            let mut skip = self.written as usize;
            for parts in self.queue.parts().take(SLICES) {
                for part in parts {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inflate) = this.inflate.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        // Frames are parsed whole here; tungstenite reads what they became.
        loop {
            let pending = inflate.pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                inflate.consume(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 4096];
            let mut raw = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut raw) {
                Poll::Ready(Ok(())) if raw.filled().is_empty() => {
                    return Poll::Ready(Ok(())); // end of stream
                }
                Poll::Ready(Ok(())) => inflate.feed(raw.filled()),
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameIo<S> {
    /// tungstenite's writes: taken whole (written, or copied into the queue)
    /// or refused whole, never in part.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.claim();
        if this.has_queued() {
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if this.has_queued() {
            if this.copied as usize + buf.len() > COPIED_LIMIT {
                // The drain above registered for the socket's next room.
                return Poll::Pending;
            }
            this.push_copy(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Nothing ahead of it: straight to the socket; what it does not take is queued.
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n < buf.len() {
                    this.push_copy(&buf[n..]);
                }
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.push_copy(buf);
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::CloseReason;
    use crate::record::{Framing, LogRecord};
    use crate::transport::ws::poll_once;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::Message;

    fn record(offset: u64, size: usize) -> Arc<Record> {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset,
            timestamp: 0,
            key: Some("k".into()),
            data: format!("\"{}\"", "v".repeat(size)).into(),
            extra: None,
            delete: false,
            position: None,
        };
        Arc::new(Record::encode(
            "t",
            &log,
            &format!("c{offset}"),
            Framing::Normal,
        ))
    }

    async fn pair(
        buffer: usize,
    ) -> (
        WebSocketStream<FrameIo<DuplexStream>>,
        WebSocketStream<DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(buffer);
        let server = WebSocketStream::from_raw_socket(FrameIo::new(a), Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (server, client)
    }

    fn flush<S: AsyncRead + AsyncWrite + Unpin>(
        server: &mut WebSocketStream<FrameIo<S>>,
    ) -> impl Future<Output = io::Result<()>> + '_ {
        let io = server.get_mut();
        std::future::poll_fn(move |cx| Pin::new(&mut *io).poll_flush(cx))
    }

    /// A record's frame that finds the queue empty takes no buffer (one
    /// delivery, no allocation); what follows queues behind it, in order.
    #[test]
    fn a_lone_record_waits_without_a_buffer() {
        let mut io = FrameIo::new(());
        let first = record(1, 10);
        io.push_record(Arc::clone(&first));
        assert!(io.queue.head.is_some());
        assert_eq!(io.queue.rest.capacity(), 0, "no buffer for one frame");
        io.push_ping();
        io.push_record(record(2, 20));
        let fronts: Vec<Vec<u8>> = io.queue.parts().map(|[a, b]| [a, b].concat()).collect();
        assert_eq!(fronts.len(), 3);
        assert_eq!(fronts[0], first.ws_frame().concat());
        assert_eq!(fronts[1], vec![0x89, 0x00]);
        assert_eq!(io.queue.front_len(), Some(fronts[0].len()));
        assert!(matches!(io.queue.pop_front(), Some(Frame::Record(r)) if Arc::ptr_eq(&r, &first)));
        assert!(matches!(io.queue.pop_front(), Some(Frame::Static(_))));
        assert!(matches!(io.queue.pop_front(), Some(Frame::Record(_))));
        assert!(io.queue.is_empty());
        io.queue.release();
        assert_eq!(
            io.queue.rest.capacity(),
            0,
            "an idle connection keeps no buffer"
        );
    }

    /// Record frames and tungstenite's frames reach a client (tungstenite's own
    /// client, which checks every frame) whole and in the order they were sent,
    /// through a pipe far smaller than one frame, so every write is partial.
    #[tokio::test]
    async fn frames_stay_whole_and_in_order_through_a_tiny_pipe() {
        let (mut server, mut client) = pair(7).await;
        let records: Vec<_> = (0..40)
            .map(|i| record(i, (i as usize * 37) % 300))
            .collect();
        let expected: Vec<String> = {
            let mut e = vec!["hello".to_string()];
            for (i, r) in records.iter().enumerate() {
                e.push(r.ws.as_str().to_string());
                if i % 10 == 9 {
                    e.push(format!("reply {i}"));
                }
            }
            e
        };
        let writer = async move {
            server.send(Message::text("hello")).await.unwrap();
            for (i, r) in records.iter().enumerate() {
                server.get_mut().push_record(Arc::clone(r));
                if i % 3 == 0 {
                    flush(&mut server).await.unwrap();
                }
                if i % 10 == 9 {
                    // tungstenite's write lands behind the queued records.
                    server
                        .send(Message::text(format!("reply {i}")))
                        .await
                        .unwrap();
                }
            }
            flush(&mut server).await.unwrap();
            assert!(!server.get_ref().has_queued());
            server
        };
        let reader = async move {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                match client.next().await.unwrap().unwrap() {
                    Message::Text(t) => got.push(t.to_string()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, expected);
        };
        let (_server, ()) = tokio::join!(writer, reader);
    }

    /// A client that sends pings and never reads: the pongs tungstenite
    /// writes stop being taken at the copy limit, so the queue stays bounded.
    #[tokio::test]
    async fn pongs_for_a_client_that_never_reads_are_bounded() {
        let (mut server, mut client) = pair(4096).await;
        // Fill the pipe and queue a record behind it, so tungstenite's writes queue too.
        server.get_mut().push_record(record(0, 8000));
        let _ = poll_once(flush(&mut server)).await;
        assert!(server.get_ref().has_queued());
        let ping = Message::Ping(vec![b'p'; 100].into());
        let pinger = async {
            for _ in 0..2000 {
                if client.send(ping.clone()).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            // Reads the pings; each one makes tungstenite try to write a pong.
            for _ in 0..2000 {
                match tokio::time::timeout(std::time::Duration::from_millis(200), server.next())
                    .await
                {
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
        };
        tokio::join!(pinger, reader);
        let copied = server.get_ref().copied as usize;
        assert!(copied > 0, "pongs were queued");
        assert!(copied <= COPIED_LIMIT, "queued {copied} bytes of pongs");
    }

    /// A loopback TCP pair: the server side under `FrameIo` (with a small
    /// send buffer, so it fills), the client as tungstenite's client.
    async fn tcp_pair() -> (
        WebSocketStream<FrameIo<tokio::net::TcpStream>>,
        RawFd,
        WebSocketStream<tokio::net::TcpStream>,
    ) {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        let client = client.unwrap();
        // As the server sets it for every connection (Nagle would hold small frames).
        server.set_nodelay(true).unwrap();
        client.set_nodelay(true).unwrap();
        let small = 4096i32;
        {
            let fd = server.as_raw_fd();
            // SAFETY: a valid socket and an int option of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&small as *const i32).cast(),
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
        }
        let fd = server.as_raw_fd();
        let server =
            WebSocketStream::from_raw_socket(FrameIo::new(server), Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (server, fd, client)
    }

    /// A TCP pair whose server side has lent its socket to a new outbox.
    async fn lent(
        limit: usize,
    ) -> (
        WebSocketStream<FrameIo<tokio::net::TcpStream>>,
        WebSocketStream<tokio::net::TcpStream>,
        Arc<Outbox>,
    ) {
        let (mut server, fd, client) = tcp_pair().await;
        let outbox = Arc::new(Outbox::new(limit));
        assert!(server.get_mut().attach(&outbox, fd));
        server.get_mut().open_direct();
        (server, client, outbox)
    }

    /// Reads `n` text messages, past pings (tungstenite's client checks every frame).
    async fn read_texts(
        client: &mut WebSocketStream<tokio::net::TcpStream>,
        n: usize,
    ) -> Vec<String> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout(std::time::Duration::from_secs(10), client.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                Ok(Some(Ok(Message::Ping(_)))) => {}
                other => panic!("after {} messages: {other:?}", got.len()),
            }
        }
        got
    }

    /// While the connection waits, a push writes the record's frame itself:
    /// the writer is not woken and nothing is queued. Once the connection
    /// claims the socket, pushes queue again.
    #[tokio::test]
    async fn an_idle_socket_takes_a_push_directly() {
        let (mut server, mut client, outbox) = lent(1 << 20).await;
        let first = record(1, 10);
        assert!(outbox.push(&first));
        assert_eq!(outbox.queued_bytes(), 0, "written, not queued");
        assert!(
            poll_once(Box::pin(outbox.ready())).await.is_pending(),
            "the writer was not woken"
        );
        assert_eq!(
            read_texts(&mut client, 1).await,
            vec![first.ws.as_str().to_string()]
        );
        server.get_mut().claim();
        let second = record(2, 10);
        assert!(outbox.push(&second));
        assert!(outbox.queued_bytes() > 0, "claimed: the push queued");
        assert!(poll_once(Box::pin(outbox.ready())).await.is_ready());
        // Frames of its own still queued: the path stays shut.
        let mut batch = Vec::new();
        outbox.drain_into(&mut batch).unwrap();
        server.get_mut().extend(batch);
        server.get_mut().open_direct();
        assert!(outbox.push(&record(3, 10)));
        assert!(
            outbox.queued_bytes() > 0,
            "queued behind the writer's own frame"
        );
        // Dropping the socket's `FrameIo` closes the path before the descriptor.
        drop(server);
        assert!(!outbox.open_direct(), "no socket to write to any more");
    }

    /// A socket that turns full in the middle of a frame: the push queues the
    /// record with the bytes it wrote, the writer claims it and sends only the
    /// rest, and every frame (records, replies, pings) reaches the client
    /// whole and in order. A close after that keeps the started frame.
    #[tokio::test]
    async fn a_socket_that_fills_mid_frame_hands_the_rest_to_the_writer() {
        let (mut server, mut client, outbox) = lent(64 << 20).await;
        let records: Vec<_> = (0..8).map(|i| record(i, 50_000 + i as usize)).collect();
        for r in &records {
            assert!(outbox.push(r));
        }
        assert!(
            outbox.queued_bytes() > 0,
            "the socket did not take everything"
        );
        assert!(
            poll_once(Box::pin(outbox.ready())).await.is_ready(),
            "the writer was woken"
        );
        server.get_mut().claim();
        assert!(
            server.get_ref().written > 0,
            "the rest of a started frame goes first"
        );
        // The slow-client close drops the queue but keeps the started frame.
        outbox.close(CloseReason::Slow);
        assert!(server.get_ref().has_queued());
        let started = match server.get_ref().queue.head.as_ref() {
            Some(r) => records.iter().position(|x| Arc::ptr_eq(x, r)).unwrap(),
            None => panic!("the started frame is at the front"),
        };
        server.get_mut().push_text("after");
        let writer = async {
            flush(&mut server).await.unwrap();
            server
        };
        let expected: Vec<String> = records[..=started]
            .iter()
            .map(|r| r.ws.as_str().to_string())
            .chain(["after".to_string()])
            .collect();
        let n = expected.len();
        let (_server, got) = tokio::join!(writer, read_texts(&mut client, n));
        assert_eq!(got, expected);
    }

    /// Pushes from another thread race the connection's own writes (replies
    /// and pings between claims, like the connection's loop): every frame
    /// reaches the client whole, records in push order, replies intact, and
    /// both paths were taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_and_the_writers_own_frames_stay_in_order_under_contention() {
        let (mut server, fd, mut client) = tcp_pair().await;
        let outbox = Arc::new(Outbox::new(64 << 20));
        assert!(server.get_mut().attach(&outbox, fd));
        const RECORDS: u64 = 3000;
        // Mostly small, every fifth large: large frames are the ones a full socket cuts.
        fn size_of(i: u64) -> usize {
            (i as usize * 53) % 3000 + if i % 5 == 0 { 6_000 } else { 0 }
        }
        let pusher = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || {
                for i in 0..RECORDS {
                    assert!(outbox.push(&record(i, size_of(i))));
                    if i % 2 == 0 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
            })
        };
        let writer = async move {
            let mut drained = 0usize;
            let mut replies = 0usize;
            let mut turn = 0u64;
            loop {
                server.get_mut().open_direct();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(1), outbox.ready()).await;
                server.get_mut().claim();
                let mut batch = Vec::new();
                outbox.drain_into(&mut batch).unwrap();
                drained += batch.len();
                server.get_mut().extend(batch);
                turn += 1;
                if turn % 7 == 0 {
                    server.get_mut().push_text(&format!("reply {replies}"));
                    replies += 1;
                }
                if turn % 11 == 0 {
                    server.get_mut().push_ping();
                }
                flush(&mut server).await.unwrap();
                if pusher.is_finished()
                    && outbox.queued_bytes() == 0
                    && !server.get_ref().has_queued()
                {
                    break;
                }
            }
            server.get_mut().push_text("end");
            flush(&mut server).await.unwrap();
            // Kept open until the client has read everything (closing it
            // with the client's pongs unread would reset the connection).
            (server, drained, replies)
        };
        let reader = async move {
            let mut next_record = 0u64;
            let mut next_reply = 0usize;
            loop {
                // Pauses now and then, so the small socket fills mid-frame.
                if next_record % 500 == 499 {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                let text = read_texts(&mut client, 1).await.pop().unwrap();
                if text == "end" {
                    return (next_record, next_reply);
                }
                if let Some(n) = text.strip_prefix("reply ") {
                    assert_eq!(n.parse::<usize>().unwrap(), next_reply);
                    next_reply += 1;
                    continue;
                }
                assert_eq!(text, record(next_record, size_of(next_record)).ws.as_str());
                next_record += 1;
            }
        };
        let ((_server, drained, replies), (records, got_replies)) = tokio::join!(writer, reader);
        assert_eq!(records, RECORDS, "every record, in order");
        assert_eq!(got_replies, replies);
        assert!(drained > 0, "some records went through the writer");
        assert!(
            (drained as u64) < RECORDS,
            "some records were written by the pushes"
        );
    }
}
