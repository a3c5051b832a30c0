//! What a topic holds and how far behind its source it is, for `/metrics` and the admin API.
//!
//! Sources report each partition's high watermark (Kafka at each metadata
//! refresh, the embedded log at each append); lag is that minus what this
//! node has ingested. Reading the lag takes no lock.

use std::sync::atomic::Ordering;

use super::partition::UNKNOWN;
use super::Topic;

/// One partition's positions and memory, as the admin API lists them.
#[allow(dead_code)] // read by the admin API
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
}

#[allow(dead_code)]
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

    #[allow(dead_code)]
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
                }
            })
            .collect()
    }
}
