//! The per-connection outbound queue: bounded in bytes, filled by the hub, drained by one writer.
//!
//! Pushing never blocks and never allocates per record beyond one pointer: the
//! queue holds `Arc<Record>`s whose bytes every subscriber shares. A push that
//! would take the queue past its byte limit closes the outbox as
//! [`CloseReason::Slow`]; the writer then disconnects the client, which resumes
//! from its cursor.

use std::collections::VecDeque;
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
            inner.queue = VecDeque::new();
            inner.bytes = 0;
            drop(inner);
            crate::telemetry::slow_disconnect();
            self.signal();
            return false;
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
            inner.queue = VecDeque::new();
            inner.bytes = 0;
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

    /// Moves everything queued into `out`. `Err` once the outbox is closed.
    pub fn drain_into(&self, out: &mut impl Extend<Arc<Record>>) -> Result<(), CloseReason> {
        let mut inner = self.inner.lock().expect("outbox lock");
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
