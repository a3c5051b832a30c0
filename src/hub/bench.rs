//! The view's own cost, measured in one process: memory per key, ingest time per update, and what concurrent snapshots add (`examples/view_cost.rs`).

use std::sync::Arc;
use std::time::Instant;

use super::{Filter, Hub, SubscribeOptions, TopicSettings};
use crate::outbox::Outbox;
use crate::record::LogRecord;

/// What [`run`] measured.
#[derive(Debug, Clone, Copy)]
pub struct ViewCost {
    pub keys: usize,
    /// VmRSS growth while the view was filled, per key.
    pub bytes_per_key: f64,
    /// Ingest time of an update of an existing key, no snapshot held (the
    /// mean of the fastest of five rounds).
    pub ns_per_update: f64,
    /// Mean time to register a whole-topic snapshot and make it ready to stream.
    pub ms_per_snapshot: f64,
    /// VmRSS growth from taking the snapshots, per snapshot.
    pub bytes_per_snapshot: f64,
    /// The same while the snapshots are held.
    pub ns_per_update_held: f64,
    /// VmRSS growth from the updates made while the snapshots were held.
    pub bytes_after_updates: f64,
}

fn rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// A 4-partition topic holding `keys` keys of about 200-byte values; then
/// `updates` updates of random keys, `snapshots` snapshots of the whole
/// topic, and `updates` more updates while the snapshots are held.
pub fn run(keys: usize, updates: usize, snapshots: usize) -> ViewCost {
    const PARTITIONS: u32 = 4;
    let hub = Hub::new();
    let topic = hub.add_topic(
        "view",
        1,
        PARTITIONS,
        TopicSettings {
            ring_records: 1024,
            view_max_keys: keys,
            view_max_bytes: 0,
        },
    );
    let mut next = [0u64; PARTITIONS as usize];
    let pad = "x".repeat(180);
    let mut ingest = |k: usize, n: u64| {
        let partition = (k % PARTITIONS as usize) as u32;
        let offset = next[partition as usize];
        next[partition as usize] += 1;
        topic.ingest(&LogRecord {
            partition,
            offset,
            timestamp: 0,
            key: Some(format!("key-{k:08}").into()),
            data: format!("{{\"n\":{n},\"pad\":\"{pad}\"}}").into(),
            extra: None,
            delete: false,
            position: None,
            trace: None,
        });
    };
    let before = rss();
    for k in 0..keys {
        ingest(k, 0);
    }
    let filled = rss();
    // A fixed LCG: the same keys in every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random_key = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % keys
    };
    // The fastest of five rounds: the machine is shared.
    let mut timed = |first: usize| {
        let round = (updates / 5).max(1);
        (0..5)
            .map(|r| {
                let started = Instant::now();
                for n in 0..round {
                    ingest(random_key(), (first + r * round + n) as u64 + 1);
                }
                started.elapsed().as_nanos() as f64 / round as f64
            })
            .fold(f64::MAX, f64::min)
    };
    let ns_per_update = timed(0);

    let taken = rss();
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..snapshots {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let mut reg = topic.register(SubscribeOptions {
            filter: Filter::default(),
            spec: None,
            outbox,
            cursor: None,
            snapshot: true,
            max_snapshot: 0,
            // Live records are dropped at once (a resync would read them).
            backlog_limit: 0,
            stored: None,
        });
        reg.complete().expect("no stored view");
        held.push(reg);
    }
    let ms_per_snapshot = started.elapsed().as_secs_f64() * 1e3 / snapshots.max(1) as f64;
    let with_snapshots = rss();
    let ns_per_update_held = timed(updates);
    let after = rss();
    assert!(held.iter().all(|r| r.snapshot_len() == keys));
    drop(held);
    ViewCost {
        keys,
        bytes_per_key: (filled - before) / keys.max(1) as f64,
        ns_per_update,
        ms_per_snapshot,
        bytes_per_snapshot: (with_snapshots - taken) / snapshots.max(1) as f64,
        ns_per_update_held,
        bytes_after_updates: after - with_snapshots,
    }
}
