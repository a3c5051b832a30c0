//! Delivery counting and latency histograms shared by all subscriber tasks.
//!
//! Subscribers record into one of a few mutex-guarded shards (chosen by
//! connection number) so two worker threads rarely contend; the progress
//! ticker takes the shards once a second and merges them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 32;
/// Highest latency tracked: 10 minutes, in microseconds.
const MAX_US: u64 = 600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("histogram bounds")
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Shard {
    hist: Histogram<u64>,
    deliveries: u64,
}

pub struct Stats {
    shards: Vec<Mutex<Shard>>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        hist: new_histogram(),
                        deliveries: 0,
                    })
                })
                .collect(),
        }
    }

    /// One delivery of a payload stamped `sent_us`, received now, on connection `conn`.
    pub fn record(&self, conn: usize, sent_us: u64) {
        let latency = now_us().saturating_sub(sent_us).max(1);
        let mut shard = self.shards[conn % SHARDS].lock().expect("stats shard");
        shard.hist.saturating_record(latency);
        shard.deliveries += 1;
    }

    /// Takes (and resets) everything recorded since the last call.
    pub fn take(&self) -> (Histogram<u64>, u64) {
        let mut total = new_histogram();
        let mut deliveries = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().expect("stats shard");
            total.add(&shard.hist).expect("same bounds");
            shard.hist.reset();
            deliveries += shard.deliveries;
            shard.deliveries = 0;
        }
        (total, deliveries)
    }
}

/// Error and connection counters.
#[derive(Default)]
pub struct Counters {
    /// TCP connect or handshake failures.
    pub connect_errors: AtomicU64,
    /// A non-success HTTP status on a subscribe request.
    pub status_errors: AtomicU64,
    /// A subscriber stream that ended or failed while the run was still going.
    pub disconnects: AtomicU64,
    /// Publish requests that failed or got a non-2xx answer (counted in messages).
    pub publish_errors: AtomicU64,
    /// Messages the pacer could not hand to a publisher because all were busy.
    pub publish_dropped: AtomicU64,
    /// Messages published successfully.
    pub published: AtomicU64,
    /// Subscribers whose subscription is confirmed.
    pub ready: AtomicUsize,
    /// Subscriber sockets open right now.
    pub open: AtomicUsize,
    /// Resume runs: connections dropped on purpose and resumed.
    pub resumes: AtomicU64,
    /// Resumes the server could not honour (pushgate `recovered: false`,
    /// Centrifugo `recovered: false`): the missed records were lost.
    pub not_recovered: AtomicU64,
    /// Deliveries of a `seq` the subscriber had already seen (resume runs).
    pub duplicates: AtomicU64,
    /// `ws-deflate` runs: deliveries that arrived as permessage-deflate frames.
    pub compressed: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        count: h.len(),
    }
}

pub fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
