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

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
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
}

impl<S> FrameIo<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            queue: Frames::default(),
            written: 0,
            copied: 0,
            inflate: None,
        }
    }

    /// Queues a record's frame behind everything already written or queued.
    /// Nothing is written until the next flush.
    pub fn push_record(&mut self, record: Arc<Record>) {
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
        let (head, used) = crate::record::ws_text_head(text.len());
        let mut frame = Vec::with_capacity(used as usize + text.len());
        frame.extend_from_slice(&head[..used as usize]);
        frame.extend_from_slice(text.as_bytes());
        // Not counted as `copied`: replies are bounded by the client's requests.
        self.queue.push_back(Frame::Reply(frame));
    }

    /// Queues a ping with no payload.
    pub fn push_ping(&mut self) {
        self.queue.push_back(Frame::Static(&[0x89, 0x00]));
    }

    /// Whether frames are waiting for the socket.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    fn push_copy(&mut self, bytes: &[u8]) {
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

    fn flush(
        server: &mut WebSocketStream<FrameIo<DuplexStream>>,
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
}
