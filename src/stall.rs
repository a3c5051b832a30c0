//! Write stalls: an IO wrapper that notes when a client's socket stops taking bytes, and a future that fires when that lasts too long.
//!
//! Every accepted socket is wrapped in [`Watched`]. A write that returns
//! `Pending` marks the connection blocked; any write that moves bytes clears
//! the mark. [`WriteWatch::stalled`] resolves once the mark has stood for a
//! given time, so the WebSocket loop and the HTTP connection (SSE) can race
//! their writes against it: one client that stops reading never holds a task,
//! a connection slot or a drain. The fast path costs one relaxed load per
//! write; the clock is read only when a write blocks.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// During a drain, how long a connection may go without taking a byte of its
/// last words (SSE `retry:`, WebSocket 1012) before it is dropped.
pub const DRAIN_STALL: Duration = Duration::from_millis(200);

/// One connection's write state, shared by the IO wrapper and whoever writes.
#[derive(Clone, Debug, Default)]
pub struct WriteWatch {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Milliseconds (on [`now_ms`]'s clock) since a write has been waiting; 0 = not blocked.
    blocked_since: AtomicU64,
    /// Woken when the connection becomes blocked.
    blocked: Notify,
    /// The TCP socket's descriptor plus one (0: none known, e.g. a pipe in a
    /// test), for [`WriteWatch::last_read`].
    fd: AtomicI32,
    /// Whether bytes written to `fd` reach the client as they are (no TLS).
    cleartext: AtomicBool,
    /// What [`WriteWatch::last_read`] saw last ([`TcpSeen::packed`]; 0 =
    /// not looked yet), and when (on [`now_ms`]'s clock; 0 = never) it last
    /// saw the peer reading.
    seen: AtomicU64,
    read_at: AtomicU64,
}

/// A coarse monotonic clock in milliseconds, never 0.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl WriteWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The connection's TCP socket, which [`Self::last_read`] asks about.
    /// It must outlive every use of this watch: the connection owns both.
    #[cfg(unix)]
    pub fn set_socket(&self, fd: std::os::fd::RawFd) {
        self.inner.fd.store(fd.saturating_add(1), Ordering::Relaxed);
    }

    /// Marks the socket as carrying the client's bytes as they are (no TLS
    /// on it), so a WebSocket may write records to it directly.
    pub fn set_cleartext(&self) {
        self.inner.cleartext.store(true, Ordering::Relaxed);
    }

    /// The socket's descriptor when it is cleartext (see [`Self::set_cleartext`]).
    #[cfg(unix)]
    pub fn cleartext_socket(&self) -> Option<std::os::fd::RawFd> {
        if !self.inner.cleartext.load(Ordering::Relaxed) {
            return None;
        }
        let fd = self.inner.fd.load(Ordering::Relaxed).checked_sub(1)?;
        (fd >= 0).then_some(fd)
    }

    /// How long ago the peer's application was last seen reading, by its
    /// kernel (`TCP_INFO`) between this call and the previous one: its
    /// receive window grew (it read from its receive buffer), or it
    /// acknowledged more while bytes were on their way to it (its window
    /// was shut until it read). A client reading a backlog sends its replies
    /// (a WebSocket pong) only once it has read up to them; one that stopped
    /// reading shows neither. Seen only at calls, so call it at a steady
    /// pace. None: never seen reading, or the kernel cannot say.
    pub fn last_read(&self) -> Option<Duration> {
        let now = now_ms();
        if let Some(seen) = self.tcp_progress() {
            let before = self.inner.seen.swap(seen.packed(), Ordering::Relaxed);
            if before != 0 && seen.reading_since(TcpSeen::unpacked(before)) {
                self.inner.read_at.store(now, Ordering::Relaxed);
            }
        }
        match self.inner.read_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now.saturating_sub(at))),
        }
    }

    /// What the kernel says of the connection's sending side.
    #[cfg(target_os = "linux")]
    fn tcp_progress(&self) -> Option<TcpSeen> {
        let fd = self.inner.fd.load(Ordering::Relaxed).checked_sub(1)?;
        if fd < 0 {
            return None;
        }
        // SAFETY: `tcp_info` is plain data, and getsockopt writes at most
        // `len` bytes into it (an older kernel fewer: the rest stays 0); the
        // descriptor stays open while its connection (which owns this
        // watch) lives.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(TcpSeen {
            // The low 31 bits: enough to see a change between two calls.
            acked: (info.tcpi_bytes_acked & 0x7fff_ffff) as u32,
            window: info.tcpi_snd_wnd & 0x7fff_ffff,
            in_flight: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn tcp_progress(&self) -> Option<TcpSeen> {
        None
    }

    /// A write could not go out: the socket is full.
    pub fn note_blocked(&self) {
        if self.inner.blocked_since.load(Ordering::Relaxed) == 0 {
            self.inner.blocked_since.store(now_ms(), Ordering::Relaxed);
            self.inner.blocked.notify_one();
        }
    }

    /// A write moved bytes: the client is reading.
    pub fn note_progress(&self) {
        if self.inner.blocked_since.load(Ordering::Relaxed) != 0 {
            self.inner.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// How long writes have been waiting without the socket taking a byte.
    pub fn blocked_for(&self) -> Option<Duration> {
        match self.inner.blocked_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// Resolves once the socket has taken no bytes for `limit` while a write
    /// was waiting. Costs no timer while the connection is not blocked.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            match self.blocked_for() {
                None => self.inner.blocked.notified().await,
                Some(waited) if waited >= limit => return,
                Some(waited) => tokio::time::sleep(limit - waited).await,
            }
        }
    }
}

/// One look at a connection's sending side (`TCP_INFO`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct TcpSeen {
    /// Bytes the peer acknowledged (low 31 bits).
    acked: u32,
    /// The receive window the peer last advertised.
    window: u32,
    /// Bytes unsent or unacknowledged.
    in_flight: bool,
}

impl TcpSeen {
    /// Whether the peer's application read between `before` and this look.
    fn reading_since(self, before: TcpSeen) -> bool {
        self.window > before.window || (before.in_flight && self.acked != before.acked)
    }

    /// Never 0 (the in-flight bit or the marker bit is set).
    fn packed(self) -> u64 {
        (u64::from(self.window) << 32)
            | (u64::from(self.in_flight) << 31)
            | u64::from(self.acked)
            | (1 << 63)
    }

    fn unpacked(v: u64) -> Self {
        Self {
            window: ((v >> 32) & 0x7fff_ffff) as u32,
            in_flight: v & (1 << 31) != 0,
            acked: (v & 0x7fff_ffff) as u32,
        }
    }
}

/// A socket whose writes report to a [`WriteWatch`].
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    watch: WriteWatch,
    /// Whether this wrapper marked the watch blocked: a write that goes
    /// through then clears it, and every other write leaves the shared watch
    /// untouched (one cold cache line less per delivery).
    blocked: bool,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, watch: WriteWatch) -> Self {
        Self {
            io,
            watch,
            blocked: false,
        }
    }

    fn noted(&mut self, poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &poll {
            Poll::Pending => {
                self.blocked = true;
                self.watch.note_blocked();
            }
            Poll::Ready(Ok(n)) if *n > 0 && self.blocked => {
                self.blocked = false;
                self.watch.note_progress();
            }
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.noted(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.noted(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_socket_nobody_reads_is_reported_stalled_and_reading_clears_it() {
        let (client, server) = tokio::io::duplex(64);
        let watch = WriteWatch::new();
        let mut watched = Watched::new(server, watch.clone());
        watched.write_all(&[0; 64]).await.unwrap();
        assert_eq!(
            watch.blocked_for(),
            None,
            "a write with room is not a stall"
        );
        let blocked = tokio::spawn(async move {
            watched.write_all(&[1; 16]).await.unwrap();
            watched
        });
        tokio::time::timeout(
            Duration::from_secs(5),
            watch.stalled(Duration::from_millis(50)),
        )
        .await
        .expect("stall reported");
        assert!(watch.blocked_for().unwrap() >= Duration::from_millis(50));
        // The peer reads: the blocked write completes and the mark clears.
        let mut client = client;
        let mut sink = vec![0; 80];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut sink)
            .await
            .unwrap();
        blocked.await.unwrap();
        assert_eq!(watch.blocked_for(), None);
    }
}
