//! `GET /sse` on the bare socket: an idle event stream that holds no hyper connection and no read or write buffer.
//!
//! hyper keeps an HTTP/1 connection's read and write buffers for as long as
//! the connection lives; for an SSE stream that is idle most of the time they
//! were most of its memory. So the accept loop peeks (consuming nothing) at a
//! cleartext HTTP/1 connection's first bytes and, when that one peek already
//! holds a complete request head for `GET /sse` with no body and no
//! `Upgrade` ([`recognize`]), takes exactly the head's bytes and serves the
//! stream here. Anything else (a head split over several segments, another
//! method or path, TLS, HTTP/2) goes to hyper as before, which then reads the
//! same untouched bytes; both paths share [`sse::prepare`] and
//! [`Ready::events`](sse::Ready::events), so they send the same events.
//!
//! The answer is the one hyper gives: the same status, headers and JSON body
//! for a refusal, and for a stream `200` with the same headers and chunked
//! transfer coding (raw bytes to an HTTP/1.0 client). Both are sent with
//! `connection: close`, and the connection closes after them: a stream ends
//! only when the server ends it (drain, token expiry, a slow client), and
//! nothing is kept to read a second request with.
//!
//! Each batch of frames goes out in one vectored write of the chunk size
//! line, the shared frame bytes and the closing CRLF; nothing is copied or
//! kept between writes. Every write races the connection's
//! [`WriteWatch`]: a client that takes no bytes for `limits.write_timeout`
//! (or [`DRAIN_STALL`] once the drain has started) is dropped. Meanwhile the
//! read half is watched so a client that goes away ends its stream (and
//! frees its slot and subscription) at once; what a client sends after its
//! request is read into a small stack buffer and thrown away, up to
//! [`MAX_DISCARD`] bytes.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::shutdown::Shutdown;
use crate::stall::{Watched, WriteWatch, DRAIN_STALL};
use crate::state::AppState;
use crate::telemetry;
use crate::transport::sse::{self, Chunk};

/// The most the accept loop peeks at: a head longer than this goes to hyper.
pub const PEEK_MAX: usize = 4096;
/// Request headers [`recognize`] parses; a head with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// Bytes a client may send after its request before it is disconnected.
pub const MAX_DISCARD: usize = 4096;

/// A complete `GET /sse` request head, taken from the socket.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head on the wire, the blank line included.
    pub len: usize,
    /// The query string, as hyper's `Uri::query` would give it.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// An HTTP/1.0 client: no chunked coding, the end of the body is the close.
    pub http10: bool,
}

/// `Some` when `buf` begins with a complete request head this module serves:
/// `GET /sse` or `GET /sse?...`, HTTP/1.0 or 1.1, no `Upgrade`, no body, a
/// target hyper would accept. `None` for everything hyper must see
/// (partial heads included).
pub fn recognize(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if req.method != Some("GET") {
        return None;
    }
    let http10 = match req.version {
        Some(0) => true,
        Some(1) => false,
        _ => return None,
    };
    let uri: Uri = req.path?.parse().ok()?;
    // Origin form only, exactly the route's path: anything else is hyper's and the router's to judge.
    if uri.scheme().is_some() || uri.authority().is_some() || uri.path() != "/sse" {
        return None;
    }
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for header in req.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        if name == axum::http::header::UPGRADE || name == axum::http::header::TRANSFER_ENCODING {
            return None;
        }
        if name == axum::http::header::CONTENT_LENGTH
            && std::str::from_utf8(header.value).ok()?.trim() != "0"
        {
            return None;
        }
        map.append(name, HeaderValue::from_bytes(header.value).ok()?);
    }
    Some(Head {
        len,
        query: uri.query().map(str::to_owned),
        headers: map,
        http10,
    })
}

/// Peeks once at `stream`; if that holds a head [`recognize`] takes, reads
/// exactly its bytes and returns it. Otherwise nothing is consumed. The
/// caller bounds this with the header-read timeout.
pub async fn take_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    // On the heap and freed on return: the connection keeps none of it.
    let mut buf = vec![0u8; PEEK_MAX];
    let n = stream.peek(&mut buf).await?;
    let Some(head) = recognize(&buf[..n]) else {
        return Ok(None);
    };
    // Already in the socket (just peeked): this returns at once.
    stream.read_exact(&mut buf[..head.len]).await?;
    Ok(Some(head))
}

/// Serves one `GET /sse` whose head was taken by [`take_head`]: the refusal,
/// or the event stream until it ends, the client goes away or stalls.
///
/// This future is the whole of an idle stream's task, so what it keeps
/// between events is small: the admission, the refusal and every write are
/// boxed futures that exist only while they run.
pub async fn serve(
    mut stream: TcpStream,
    head: Box<Head>,
    peer: SocketAddr,
    state: AppState,
    watch: WriteWatch,
    write_timeout: Duration,
) {
    let chunked = !head.http10;
    let Some(ready) = Box::pin(open(&mut stream, head, peer, &state, &watch, write_timeout)).await
    else {
        return;
    };
    let events = ready.events(&state);
    static SIZE: std::sync::Once = std::sync::Once::new();
    SIZE.call_once(|| {
        tracing::debug!(
            bytes = std::mem::size_of_val(&events),
            "bare SSE event stream"
        )
    });
    tokio::pin!(events);
    let (reader, writer) = stream.split();
    let mut writer = Watched::new(writer, watch.clone());
    let mut discarded = 0usize;
    loop {
        let chunk = tokio::select! {
            biased;
            chunk = events.next() => chunk,
            readable = reader.as_ref().readable() => {
                if readable.is_err() {
                    return;
                }
                // Not held across an await: costs the task nothing.
                let mut sink = [0u8; 512];
                match reader.as_ref().try_read(&mut sink) {
                    Ok(0) => {
                        tracing::debug!(%peer, "SSE client went away");
                        return;
                    }
                    Ok(n) => {
                        discarded += n;
                        if discarded > MAX_DISCARD {
                            tracing::debug!(%peer, "SSE client kept sending after its request; dropped");
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
        };
        let Some(chunk) = chunk else {
            // The stream ended (drain, token expiry, a slow client): the last chunk, then close.
            let write = async {
                if chunked {
                    write_all(&mut writer, &mut [IoSlice::new(b"0\r\n\r\n")]).await?;
                }
                writer.shutdown().await
            };
            let _ = Box::pin(unstalled(&watch, &state.shutdown, write_timeout, write)).await;
            return;
        };
        let write = write_chunk(&mut writer, &chunk, chunked);
        if Box::pin(unstalled(&watch, &state.shutdown, write_timeout, write))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Admission and subscription, then the refusal (and `None`) or the
/// stream's response head (and the subscription, ready for its events).
async fn open(
    stream: &mut TcpStream,
    head: Box<Head>,
    peer: SocketAddr,
    state: &AppState,
    watch: &WriteWatch,
    write_timeout: Duration,
) -> Option<sse::Ready> {
    let shutdown = &state.shutdown;
    let mut writer = Watched::new(stream, watch.clone());
    let prepared = tokio::select! {
        prepared = sse::prepare(state, peer, head.query.as_deref(), &head.headers) => prepared,
        _ = shutdown.triggered() => return None,
    };
    let chunked = !head.http10;
    drop(head);
    match prepared {
        Ok(ready) => {
            let response_head = stream_head(chunked);
            let mut slices = [IoSlice::new(response_head.as_bytes())];
            let write = write_all(&mut writer, &mut slices);
            unstalled(watch, shutdown, write_timeout, write)
                .await
                .ok()?;
            Some(ready)
        }
        Err(response) => {
            let answer = refusal(response).await.ok()?;
            let write = async {
                write_all(&mut writer, &mut [IoSlice::new(&answer)]).await?;
                writer.shutdown().await
            };
            let _ = unstalled(watch, shutdown, write_timeout, write).await;
            None
        }
    }
}

/// Why a write was abandoned.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the client took no bytes in time")]
    Stalled,
}

/// Runs `write` against the connection's write deadline: `limits.write_timeout`
/// without a byte taken, or [`DRAIN_STALL`] once the drain has started.
async fn unstalled(
    watch: &WriteWatch,
    shutdown: &Shutdown,
    write_timeout: Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> Result<(), WriteError> {
    tokio::select! {
        // The write first: one that completes at once (a socket with room)
        // returns before the stall and drain waiters are ever registered.
        biased;
        wrote = write => Ok(wrote?),
        _ = watch.stalled(write_timeout) => {
            telemetry::write_timeout("http");
            tracing::debug!("SSE client took no bytes within the write timeout; dropped");
            Err(WriteError::Stalled)
        }
        _ = async {
            shutdown.triggered().await;
            watch.stalled(DRAIN_STALL).await
        } => {
            tracing::debug!("SSE client stalled during the drain; dropped");
            Err(WriteError::Stalled)
        }
    }
}

/// Writes every byte of `slices`, in as few writes as the socket allows.
async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = writer.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// One chunk (size line, every frame of `chunk`, CRLF) in one vectored write.
async fn write_chunk<W: AsyncWrite + Unpin>(
    writer: &mut W,
    chunk: &Chunk,
    chunked: bool,
) -> io::Result<()> {
    let mut len = 0;
    let mut count = 0;
    chunk.for_each_frame(|frame| {
        len += frame.len();
        count += 1;
    });
    if len == 0 {
        // A zero-size chunk would end the body.
        return Ok(());
    }
    // On the stack: no allocation for it per write.
    let mut line = [0u8; 18];
    let line_len = {
        let mut cursor = io::Cursor::new(&mut line[..]);
        io::Write::write_fmt(&mut cursor, format_args!("{len:X}\r\n"))?;
        cursor.position() as usize
    };
    // Inline for up to two frames (a record's frame and the chunk framing
    // fit four): this future is boxed per write, and that box is the only allocation.
    let mut slices: SmallVec<[IoSlice<'_>; 4]> = SmallVec::with_capacity(count + 2);
    if chunked {
        slices.push(IoSlice::new(&line[..line_len]));
    }
    chunk.for_each_frame(|frame| slices.push(IoSlice::new(frame)));
    if chunked {
        slices.push(IoSlice::new(b"\r\n"));
    }
    write_all(writer, &mut slices).await
}

/// The head of a `200` event stream: [`sse::STREAM_HEADERS`], the framing, `connection: close`.
fn stream_head(chunked: bool) -> String {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in sse::STREAM_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    }
    head.push_str(&format!(
        "connection: close\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    ));
    head
}

/// A refusal as bytes on the wire: status line, its headers, `content-length`,
/// `connection: close`, and the collected body.
async fn refusal(response: Response) -> Result<Vec<u8>, axum::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
            body.len(),
            httpdate::fmt_http_date(std::time::SystemTime::now())
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_only_complete_bodiless_sse_gets() {
        let head = b"GET /sse?topic=t&key=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n";
        let got = recognize(head).expect("a complete GET /sse");
        assert_eq!(got.len, head.len());
        assert_eq!(got.query.as_deref(), Some("topic=t&key=a"));
        assert_eq!(got.headers["last-event-id"], "5");
        assert!(!got.http10);
        // Bytes after the head are not part of it.
        let mut more = head.to_vec();
        more.extend_from_slice(b"extra");
        assert_eq!(recognize(&more).unwrap().len, head.len());

        let plain = recognize(b"GET /sse HTTP/1.0\r\n\r\n").unwrap();
        assert!(plain.http10);
        assert_eq!(plain.query, None);
        assert!(recognize(b"GET /sse HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());

        for other in [
            // Partial heads: hyper waits for the rest.
            &b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r",
            b"GET /sse",
            b"",
            // Other methods and paths.
            b"HEAD /sse HTTP/1.1\r\n\r\n",
            b"POST /sse HTTP/1.1\r\n\r\n",
            b"GET /ssex HTTP/1.1\r\n\r\n",
            b"GET /sse/ HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\n\r\n",
            b"GET http://x/sse HTTP/1.1\r\n\r\n",
            // Upgrades and bodies.
            b"GET /sse HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /sse HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Not HTTP/1.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                recognize(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        let mut many = b"GET /sse HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(
            recognize(&many).is_none(),
            "too many headers: hyper's to judge"
        );
    }

    #[test]
    fn a_chunk_is_one_size_line_the_frames_and_crlf() {
        let chunk = Chunk::Frame(bytes::Bytes::from_static(b"data: x\n\n"));
        let mut out = Vec::new();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(write_chunk(&mut out, &chunk, true))
            .unwrap();
        assert_eq!(out, b"9\r\ndata: x\n\n\r\n");
    }
}
