//! What a topic holds and how far behind its source it is, for `/metrics` and the admin API.
//!
//! Sources report each partition's high watermark (Kafka at each metadata
//! refresh, the embedded log at each append); lag is that minus what this
//! node has ingested. Reading the lag takes no lock.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::partition::UNKNOWN;
use super::{Sub, Topic};
use crate::outbox::Outbox;

/// One partition's positions and memory, as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: u32,
    /// The next offset this node will ingest.
    pub next_offset: u64,
    /// The source's next offset, if it reports one.
    pub high_watermark: Option<u64>,
    /// Offsets of the oldest and newest records in the ring.
    pub ring: Option<(u64, u64)>,
    /// Keys in the latest-value view.
    pub view_keys: usize,
    /// The timestamp (Unix milliseconds) of the newest record in the ring.
    pub newest_timestamp: Option<i64>,
}

impl PartitionStats {
    /// Records the source holds that this node has not ingested yet.
    pub fn lag(&self) -> Option<u64> {
        self.high_watermark
            .map(|high| high.saturating_sub(self.next_offset))
    }
}

impl Topic {
    /// The source's next offset in `partition`, as it reads it now.
    pub fn set_high_watermark(&self, partition: u32, high: u64) {
        let parts = self.partitions.read().expect("partitions lock");
        if let Some(part) = parts.get(partition as usize) {
            part.high_watermark.store(high, Ordering::Release);
        }
    }

    /// Each partition's lag, `None` where the source reports no high watermark.
    pub fn lag(&self) -> Vec<Option<u64>> {
        let parts = self.partitions.read().expect("partitions lock");
        parts
            .iter()
            .map(|p| {
                let high = p.high_watermark.load(Ordering::Acquire);
                (high != UNKNOWN).then(|| high.saturating_sub(p.frontier.load(Ordering::Acquire)))
            })
            .collect()
    }

    /// Each partition's positions, ring span and view size (each partition
    /// locked in turn, briefly: for the admin API, not a hot path).
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        let parts = self.partitions.read().expect("partitions lock");
        parts
            .iter()
            .map(|p| {
                let state = p.state.lock().expect("partition lock");
                let high = p.high_watermark.load(Ordering::Acquire);
                PartitionStats {
                    partition: p.id,
                    next_offset: state.next_offset,
                    high_watermark: (high != UNKNOWN).then_some(high),
                    ring: state
                        .ring
                        .front()
                        .zip(state.ring.back())
                        .map(|(first, last)| (first.offset, last.offset)),
                    view_keys: state.view.len(),
                    newest_timestamp: state.ring.back().map(|r| r.timestamp()),
                }
            })
            .collect()
    }
}

impl Topic {
    /// Every subscription to this topic, each once (for the admin API: it
    /// walks the whole index).
    pub fn subscriptions(&self) -> Vec<Arc<Sub>> {
        let mut seen = HashSet::new();
        let mut subs: Vec<Arc<Sub>> = Vec::new();
        let mut add = |sub: &Arc<Sub>| {
            if seen.insert(sub.id) {
                subs.push(Arc::clone(sub));
            }
        };
        self.index
            .all
            .read()
            .expect("index lock")
            .subs()
            .for_each(&mut add);
        self.index
            .prefixed
            .read()
            .expect("index lock")
            .iter()
            .for_each(&mut add);
        for entry in self.index.by_key.iter() {
            entry.value().subs().for_each(&mut add);
        }
        subs.sort_by_key(|s| s.id);
        subs
    }
}

impl Sub {
    /// The connection queue this subscription feeds.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Caught up: everything ingested since is queued to it as it arrives.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}
