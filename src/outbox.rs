//! The per-connection outbound queue: bounded in bytes, filled by the hub, drained by one writer.
//!
//! Pushing never blocks and never allocates per record beyond one pointer: the
//! queue holds `Arc<Record>`s whose bytes every subscriber shares. A push that
//! would take the queue past its byte limit closes the outbox as
//! [`CloseReason::Slow`]; the writer then disconnects the client, which resumes
//! from its cursor.
//!
//! A writer may open a [`Direct`] path while it waits with nothing queued: a
//! push then writes the record to the socket at once, from the fan-out loop,
//! and the writer's task is not woken at all. Only what the socket does not
//! take (all of it, or the rest of a frame) is queued and wakes the writer,
//! which first [claims](Outbox::claim) the socket back. The queue's lock
//! orders the two: a direct write happens under it, only while the queue is
//! empty and the writer has said it is idle.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::traces::TraceParent;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::record::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client fell more than the queue limit behind.
    Slow,
    /// The topic was recreated (a new epoch) or deleted: the client must resubscribe.
    TopicReset,
    /// Closed by an operator (the admin API): reconnect, as after a drain.
    Closed,
    /// The token's subject or `jti` was revoked (the control topic): do not reconnect with it.
    Revoked,
    /// SSE and gRPC (one subscription per stream): the subject's grants were
    /// narrowed and no longer allow the stream's subscription.
    Unsubscribed,
}

#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    limit: usize,
    /// Set by a push into an empty queue (or a close), taken by the writer.
    /// A flag and one waker, not a `Notify`: the queue has a single writer, and
    /// a wake-up per delivery should not take a second lock.
    pending: AtomicBool,
    waker: AtomicWaker,
    /// The connection's span when traces are on and it is sampled: the
    /// parent of its subscriptions' catch-up spans.
    trace: OnceLock<TraceParent>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Arc<Record>>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// The socket pushes may write to, while `open`.
    direct: Option<Box<dyn Direct>>,
    /// Set by the writer when it waits with nothing queued; cleared by
    /// [`Outbox::claim`] and by a push the socket did not take whole.
    open: bool,
    /// Bytes of the queue's front record already written by a push: the
    /// writer must send the rest of that frame before anything else.
    partial: u32,
}

/// A socket a push may write a record's frame to at once (a cleartext
/// WebSocket). Implemented by the transport, which knows the framing.
pub trait Direct: Send + Sync {
    /// Writes as much of `record`'s frame as the socket takes now, without
    /// blocking. `Err` with the bytes written when that was not the whole
    /// frame (0 when it would block or failed: the writer then meets the
    /// error itself).
    fn write_now(&self, record: &Record) -> Result<(), usize>;
}

impl fmt::Debug for dyn Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Direct")
    }
}

impl Inner {
    /// Drops what is queued on close, except a frame a push began to write:
    /// the writer finishes it, so its close frame starts at a frame boundary.
    fn discard(&mut self) {
        let started = (self.partial > 0).then(|| self.queue.pop_front()).flatten();
        self.queue = VecDeque::new();
        self.bytes = 0;
        self.open = false;
        if let Some(record) = started {
            self.bytes = record.cost();
            self.queue.push_back(record);
        }
    }
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limit,
            pending: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            trace: OnceLock::new(),
        }
    }

    /// Records the connection's span (see [`Outbox::trace`]).
    pub fn set_trace(&self, parent: Option<TraceParent>) {
        if let Some(parent) = parent {
            let _ = self.trace.set(parent);
        }
    }

    /// The connection's span, if traced.
    pub fn trace(&self) -> Option<&TraceParent> {
        self.trace.get()
    }

    /// Queues `record`; false when the outbox is (now) closed.
    pub fn push(&self, record: &Arc<Record>) -> bool {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.closed.is_some() {
            return false;
        }
        let cost = record.cost();
        // One record larger than the whole limit still goes through an empty queue.
        if inner.bytes + cost > self.limit && !inner.queue.is_empty() {
            inner.closed = Some(CloseReason::Slow);
            inner.discard();
            drop(inner);
            crate::telemetry::slow_disconnect();
            self.signal();
            return false;
        }
        if inner.open {
            if let Some(direct) = &inner.direct {
                // The writer is idle and nothing is queued (see `open_direct`).
                let Err(written) = direct.write_now(record) else {
                    crate::telemetry::direct_write();
                    return true;
                };
                inner.open = false;
                inner.partial = written as u32;
            }
        }
        inner.bytes += cost;
        inner.queue.push_back(Arc::clone(record));
        let was_empty = inner.queue.len() == 1;
        drop(inner);
        // Only the first record of a burst needs to wake the writer.
        if was_empty {
            self.signal();
        }
        true
    }

    /// Closes the outbox with `reason` (a catch-up backlog overflowed, or the topic was recreated).
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.closed.is_none() {
            inner.closed = Some(reason);
            inner.discard();
            drop(inner);
            if reason == CloseReason::Slow {
                crate::telemetry::slow_disconnect();
            }
            self.signal();
        }
    }

    /// Wakes the writer with nothing queued: it has something else to look
    /// at (a WebSocket connection's grants were narrowed).
    pub fn wake(&self) {
        self.signal();
    }

    /// Lets pushes write to `direct` (see [`Outbox::open_direct`]), or no
    /// longer (`None`: before the socket closes, so no push writes to a
    /// descriptor that may be reused).
    pub fn set_direct(&self, direct: Option<Box<dyn Direct>>) {
        let mut inner = self.inner.lock().expect("outbox lock");
        inner.open = false;
        inner.direct = direct;
    }

    /// The writer is about to wait with nothing of its own queued: pushes may
    /// write to the socket until the next [`Outbox::claim`]. False (and not
    /// opened) when records are queued, the outbox is closed or no socket is set.
    pub fn open_direct(&self) -> bool {
        let mut inner = self.inner.lock().expect("outbox lock");
        inner.open = inner.direct.is_some() && inner.queue.is_empty() && inner.closed.is_none();
        inner.open
    }

    /// The writer takes the socket back before it writes anything itself: no
    /// push writes to it from now on. Returns the record whose frame a push
    /// wrote only in part, with the bytes written: it must go first.
    pub fn claim(&self) -> Option<(Arc<Record>, usize)> {
        let mut inner = self.inner.lock().expect("outbox lock");
        inner.open = false;
        if inner.partial == 0 {
            return None;
        }
        let written = std::mem::take(&mut inner.partial) as usize;
        let record = inner.queue.pop_front()?;
        inner.bytes -= record.cost().min(inner.bytes);
        Some((record, written))
    }

    /// Moves everything queued into `out`. `Err` once the outbox is closed.
    /// A writer with a direct path [claims](Outbox::claim) first.
    pub fn drain_into(&self, out: &mut impl Extend<Arc<Record>>) -> Result<(), CloseReason> {
        let mut inner = self.inner.lock().expect("outbox lock");
        debug_assert_eq!(inner.partial, 0, "claimed before draining");
        if let Some(reason) = inner.closed {
            return Err(reason);
        }
        out.extend(inner.queue.drain(..));
        inner.bytes = 0;
        if inner.queue.capacity() > 64 {
            // Give back the memory of a burst so idle connections stay small.
            inner.queue.shrink_to(16);
        }
        Ok(())
    }

    /// Bytes of records waiting for the writer.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().expect("outbox lock").bytes
    }

    pub fn closed_reason(&self) -> Option<CloseReason> {
        self.inner.lock().expect("outbox lock").closed
    }

    fn signal(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves when something was pushed (or the outbox closed) since the
    /// last time this resolved. For the one task that drains the outbox.
    pub async fn ready(&self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A push between the check and the registration woke nobody: look again.
        if self.pending.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
