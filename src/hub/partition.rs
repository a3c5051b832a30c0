//! One partition's history on this node: the ring of recent records and the latest value per key (the view), behind one lock.
//!
//! The view keeps at most `view_max_keys` keys per partition and its topic's
//! views at most `view_max_bytes`, evicting the key updated longest ago; a
//! delete or tombstone removes its key. Snapshots are read from it under the
//! partition locks a registration holds; where it evicted keys and the source
//! keeps the latest record per key itself (the embedded log), from there too.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::snapshot::View;
use super::sub::Filter;
use super::Replay;
use crate::cursor::compare_positions;
use crate::record::Record;

pub(super) struct Partition {
    pub(super) id: u32,
    /// Next offset to ingest; written under `state`'s lock after fan-out, read without it.
    pub(super) frontier: AtomicU64,
    /// The source's next offset as it last reported it ([`UNKNOWN`] until
    /// then; Kinesis never does): lag is this minus `frontier`.
    pub(super) high_watermark: AtomicU64,
    pub(super) state: Mutex<PartitionState>,
    /// Topics whose positions are the source's own opaque ones (Kinesis):
    /// the position of each record this node ingested, by ordinal. A leaf lock.
    pub(super) positions: Mutex<Positions>,
}

/// Ordinal -> source position of the records one partition ingested (oldest
/// first, at most a topic's `position_limit`), and whether the partition is
/// closed and read to its end. Positions strictly increase with ordinals, so
/// a position is found again by binary search.
/// A high watermark no source has reported.
pub(super) const UNKNOWN: u64 = u64::MAX;

#[derive(Default)]
pub(super) struct Positions {
    /// Ordinal of `entries[0]`.
    base: u64,
    entries: VecDeque<Box<[u8]>>,
    pub(super) closed: bool,
}

/// Where a client's position falls in what this node has ingested.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Located {
    /// The next ordinal to deliver.
    At(u64),
    /// Beyond what this node has read: it is behind the client.
    Ahead,
    /// Before the oldest position this node holds.
    Older,
}

impl Positions {
    /// The ordinal the next ingested record gets.
    pub(super) fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    pub(super) fn push(&mut self, ordinal: u64, position: Box<[u8]>, limit: usize) {
        if ordinal != self.end() {
            // Not contiguous (never expected from a source): start over from here.
            self.entries.clear();
            self.base = ordinal;
        }
        self.entries.push_back(position);
        while self.entries.len() > limit.max(1) {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// The position of the record at `ordinal`, if still held.
    pub(super) fn get(&self, ordinal: u64) -> Option<&[u8]> {
        let i = ordinal.checked_sub(self.base)?;
        self.entries.get(i as usize).map(|b| &**b)
    }

    /// The oldest ordinal still held.
    pub(super) fn first(&self) -> u64 {
        self.base
    }

    /// The next ordinal after a client that has seen everything up to `position`.
    pub(super) fn after(&self, position: &[u8]) -> Located {
        let Some(last) = self.entries.back() else {
            return Located::Ahead;
        };
        if compare_positions(position, last) == Ordering::Greater {
            return Located::Ahead;
        }
        if compare_positions(position, &self.entries[0]) == Ordering::Less {
            return Located::Older;
        }
        let i = self
            .entries
            .partition_point(|p| compare_positions(p, position) != Ordering::Greater);
        Located::At(self.base + i as u64)
    }

    /// The first ordinal whose position is at or after `position` (`end()` if none).
    pub(super) fn at_or_after(&self, position: &[u8]) -> u64 {
        let i = self
            .entries
            .partition_point(|p| compare_positions(p, position) == Ordering::Less);
        self.base + i as u64
    }
}

#[derive(Default)]
pub(super) struct PartitionState {
    pub(super) next_offset: u64,
    pub(super) ring: VecDeque<Arc<Record>>,
    /// Each ring record's [`Record::key_hash`], in the same order: a resume
    /// naming keys scans these 4-byte hashes under the partition locks, not
    /// thousands of records scattered over the heap. Kept by
    /// [`PartitionState::push_ring`].
    ring_hashes: VecDeque<u32>,
    /// The latest record per key, ordered by key and persistent: a snapshot
    /// is a clone of it (see `hub::snapshot`).
    pub(super) view: View,
    /// Offset -> key of every view entry, oldest first, for eviction and ordered snapshots.
    pub(super) view_order: BTreeMap<u64, Arc<str>>,
    /// Why the view may lack keys the log has (`"view_max_keys"` or
    /// `"view_max_bytes"`: keys were evicted; `"warm_start"`: the source did
    /// not read the partition from its start), if it may.
    pub(super) evicted: Option<&'static str>,
}

impl PartitionState {
    /// Appends `record` to the ring, dropping its oldest records beyond `max`.
    pub(super) fn push_ring(&mut self, record: &Arc<Record>, max: usize) {
        self.ring.push_back(Arc::clone(record));
        self.ring_hashes.push_back(record.key_hash());
        while self.ring.len() > max {
            self.ring_hashes.pop_front();
            if let Some(old) = self.ring.pop_front() {
                old.let_go_of_envelope();
            }
        }
    }

    /// The ring's records from index `start` on that `takes` admits; with
    /// `hashes` (the keys a filter names), only those whose kept key hash is
    /// one of them are looked at.
    fn ring_from(
        &self,
        start: usize,
        hashes: Option<&[u32]>,
        takes: &impl Fn(&Record) -> bool,
    ) -> Vec<Arc<Record>> {
        match hashes {
            Some(hashes) => self
                .ring_hashes
                .range(start..)
                .zip(self.ring.range(start..))
                .filter(|(h, r)| hashes.binary_search(h).is_ok() && takes(r))
                .map(|(_, r)| Arc::clone(r))
                .collect(),
            None => self
                .ring
                .range(start..)
                .filter(|r| takes(r))
                .cloned()
                .collect(),
        }
    }
}

/// What one view entry is counted as: the encoded record (its SSE event,
/// which the WebSocket text is a slice of), its key, and a fixed share for
/// the record's fields and the two map entries.
pub(super) fn view_cost(key: &str, record: &Record) -> usize {
    const ENTRY_OVERHEAD: usize = 192;
    record.cost() + key.len() + ENTRY_OVERHEAD
}

/// What one change to a view of `len` keys lets go of besides the entry: a
/// snapshot's clone shares the view's tree, so the change copies the path
/// from the root to the key's leaf and the clone keeps the old nodes (about
/// 430 bytes each for 16 entries, about 12 to a node in use). Counted at
/// every change; a node already copied since the last clone is not copied
/// again, so this is an upper bound and snapshots move on a little early.
pub(super) fn path_copy_cost(len: usize) -> usize {
    const NODE_BYTES: usize = 432;
    const FANOUT: usize = 12;
    let mut levels = 1;
    let mut n = len;
    while n > FANOUT {
        n /= FANOUT;
        levels += 1;
    }
    levels * NODE_BYTES
}

/// What a topic's views count in bytes ([`view_cost`] of each entry), all partitions.
#[derive(Default)]
pub(super) struct ViewBytes {
    /// Held now (`view_max_bytes`).
    pub(super) used: AtomicU64,
    /// Let go since the topic began: entries replaced, deleted or evicted,
    /// and the tree paths each change copies ([`path_copy_cost`]). A
    /// snapshot's clone taken when this was lower may still hold them.
    pub(super) let_go: AtomicU64,
}

/// A topic's bounds on its views, and the bytes they hold now (all partitions).
pub(super) struct ViewBudget<'a> {
    pub(super) max_keys: usize,
    /// 0: no byte bound.
    pub(super) max_bytes: usize,
    pub(super) bytes: &'a ViewBytes,
}

pub(super) fn update_view(
    state: &mut PartitionState,
    key: &Arc<str>,
    record: &Arc<Record>,
    budget: &ViewBudget<'_>,
) {
    let added = view_cost(key, record);
    budget
        .bytes
        .used
        .fetch_add(added as u64, AtomicOrdering::Relaxed);
    // A new key replaces no entry but still copies its path.
    let path = path_copy_cost(state.view.len());
    let replaced = match state.view.insert(Arc::clone(key), Arc::clone(record)) {
        Some(old) => {
            state.view_order.remove(&old.offset);
            view_cost(key, &old)
        }
        None => 0,
    };
    forget(budget.bytes, replaced, path);
    state.view_order.insert(record.offset, Arc::clone(key));
    loop {
        let reason = if state.view.len() > budget.max_keys {
            "view_max_keys"
        } else if budget.max_bytes > 0
            && budget.bytes.used.load(AtomicOrdering::Relaxed) > budget.max_bytes as u64
        {
            // The topic is over its bytes: the partition being written gives
            // up its oldest keys (the busiest partitions give up the most).
            "view_max_bytes"
        } else {
            break;
        };
        // Evict the key updated longest ago.
        let Some((_, oldest)) = state.view_order.pop_first() else {
            break;
        };
        if let Some(old) = state.view.remove(&oldest) {
            let path = path_copy_cost(state.view.len());
            forget(budget.bytes, view_cost(&oldest, &old), path);
        }
        state.evicted = Some(reason);
    }
}

/// `entry` leaves the view (its [`view_cost`]); `path` is let go besides.
fn forget(bytes: &ViewBytes, entry: usize, path: usize) {
    bytes.used.fetch_sub(entry as u64, AtomicOrdering::Relaxed);
    bytes
        .let_go
        .fetch_add((entry + path) as u64, AtomicOrdering::Relaxed);
}

pub(super) fn remove_from_view(state: &mut PartitionState, key: &str, bytes: &ViewBytes) {
    if let Some(old) = state.view.remove(key) {
        state.view_order.remove(&old.offset);
        forget(
            bytes,
            view_cost(key, &old),
            path_copy_cost(state.view.len()),
        );
    }
}

/// The view entries `filter` takes, unordered (the caller sorts them by key
/// outside the locks), leaving out the partitions `skip` names (read from the
/// source's stored view instead). Only pointers are copied: the snapshot
/// shares the view's encoded records, so taking it costs 8 bytes per key
/// under the locks.
pub(super) fn collect_snapshot(
    guards: &[MutexGuard<'_, PartitionState>],
    filter: &Filter,
    skip: &[u32],
) -> Vec<Arc<Record>> {
    let mut out = Vec::new();
    let taken = || {
        guards
            .iter()
            .enumerate()
            .filter(|(p, _)| !skip.contains(&(*p as u32)))
            .map(|(_, g)| g)
    };
    match (&filter.keys, &filter.prefix) {
        (Some(keys), None) => {
            for key in keys {
                if let Some(rec) = taken().find_map(|g| g.view.get(key)) {
                    out.push(Arc::clone(rec));
                }
            }
        }
        _ => {
            for state in taken() {
                out.reserve(state.view.len());
                for (key, record) in state.view.iter() {
                    if filter.matches(Some(key)) {
                        out.push(Arc::clone(record));
                    }
                }
            }
        }
    }
    out
}

/// What each partition must replay to bring a subscription from `from` to
/// `high`: ring records (filtered by key, and with `upto` only keys up to it)
/// when the ring covers `from`, else a log range. Under the partition locks.
pub(super) fn replays(
    guards: &[MutexGuard<'_, PartitionState>],
    filter: &Filter,
    from: &[u64],
    high: &[u64],
    lookback: bool,
    upto: Option<&str>,
) -> Vec<Replay> {
    let takes = |r: &Record| {
        filter.takes(r) && upto.is_none_or(|upto| r.key.as_deref().is_some_and(|k| k <= upto))
    };
    let mut replay = Vec::new();
    for (p, state) in guards.iter().enumerate() {
        let from = from.get(p).copied().unwrap_or(0);
        if from >= high[p] {
            continue;
        }
        if state.ring.front().is_some_and(|r| r.offset <= from) {
            // The ring is in offset order: a resume from near its end (the
            // usual one) looks at what it missed, not at the whole ring, which
            // matters because this runs under every partition lock.
            let start = state.ring.partition_point(|r| r.offset < from);
            let records = state.ring_from(start, filter.key_hashes(), &takes);
            let lookback = if lookback {
                latest_before(state, start, &takes, filter)
            } else {
                Vec::new()
            };
            replay.push(Replay::Ring {
                partition: p as u32,
                records,
                lookback,
            });
        } else {
            replay.push(Replay::Log {
                partition: p as u32,
                from,
                until: high[p],
            });
        }
    }
    replay
}

/// The latest record of each key `takes` admits among the ring's first `end`
/// records, in ring order: all a value filter needs to know whether the
/// client's values matched at its cursor (a key's earlier records are
/// overwritten by its latest). Read from the end, it stops once each of
/// `keys` keys (a filter naming them) is found, so a resume of a few keys
/// recently written does not read the whole ring under the locks.
fn latest_before<'a>(
    state: &'a PartitionState,
    end: usize,
    takes: &impl Fn(&Record) -> bool,
    filter: &Filter,
) -> Vec<Arc<Record>> {
    let hashes = filter.key_hashes();
    // One hash per named key: how many keys to find before stopping.
    let keys = hashes.map(<[u32]>::len);
    let mut seen: HashSet<&'a str, foldhash::fast::RandomState> = HashSet::default();
    let mut out = Vec::new();
    let candidates = state
        .ring_hashes
        .range(..end)
        .zip(state.ring.range(..end))
        .rev()
        .filter(|(h, _)| hashes.is_none_or(|hashes| hashes.binary_search(h).is_ok()));
    for (_, r) in candidates {
        if !takes(r) || r.key.as_deref().is_some_and(|k| !seen.insert(k)) {
            continue;
        }
        out.push(Arc::clone(r));
        if keys.is_some_and(|n| seen.len() >= n) {
            break;
        }
    }
    out.reverse();
    out
}

/// The view entries of `guards` that `filter` takes and whose key sorts after
/// `after` (all of them when `None`), unordered: from each partition its
/// first `take` such keys in key order (every one when `None`). The topic's
/// first `take` keys are among them; a page is picked from these outside the
/// locks. Each view is ordered by key, so this reads `take` entries per
/// partition from a key range.
pub(super) fn collect_view(
    all: &[MutexGuard<'_, PartitionState>],
    filter: &Filter,
    after: Option<&str>,
    take: Option<usize>,
    skip: &[u32],
) -> Vec<Arc<Record>> {
    // Partitions read from the source's stored view are left out.
    let guards: Vec<&PartitionState> = all
        .iter()
        .enumerate()
        .filter(|(p, _)| !skip.contains(&(*p as u32)))
        .map(|(_, g)| &**g)
        .collect();
    let beyond = |key: &str| after.is_none_or(|after| key > after);
    if let (Some(keys), None) = (&filter.keys, &filter.prefix) {
        // At most `limits.max_keys_per_subscription` lookups.
        return keys
            .iter()
            .filter(|key| beyond(key))
            .flat_map(|key| guards.iter().filter_map(move |g| g.view.get::<str>(key)))
            .cloned()
            .collect();
    }
    let take = take.unwrap_or(usize::MAX);
    // A prefix alone is one key range, from the prefix on.
    let prefix = filter.prefix.as_deref().filter(|_| filter.keys.is_none());
    let start = match (after, prefix) {
        (Some(after), Some(p)) if after < p => Bound::Included(p),
        (Some(after), _) => Bound::Excluded(after),
        (None, Some(p)) => Bound::Included(p),
        (None, None) => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for g in &guards {
        out.extend(
            g.view
                .range::<_, str>((start, Bound::Unbounded))
                .take_while(|(key, _)| prefix.is_none_or(|p| key.starts_with(p)))
                .filter(|(key, _)| filter.matches(Some(key)))
                .take(take)
                .map(|(_, record)| Arc::clone(record)),
        );
    }
    out
}

/// Every partition's state locked, in partition order, with each one's next
/// offset: the topic's frontier at that instant.
pub(super) fn lock_all(
    parts: &[Arc<Partition>],
) -> (Vec<MutexGuard<'_, PartitionState>>, Vec<u64>) {
    let guards: Vec<_> = parts
        .iter()
        .map(|p| p.state.lock().expect("partition lock"))
        .collect();
    let high = guards.iter().map(|g| g.next_offset).collect();
    (guards, high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Framing, LogRecord};

    fn record(offset: u64, key: &str) -> Arc<Record> {
        let log = LogRecord {
            trace: None,
            partition: 0,
            offset,
            timestamp: 0,
            key: Some(key.into()),
            data: "1".into(),
            extra: None,
            delete: false,
            position: None,
        };
        Arc::new(Record::encode("t", &log, "c", Framing::Normal))
    }

    #[test]
    fn the_rings_key_hashes_follow_its_records_and_pick_the_same_ones() {
        let mut state = PartitionState::default();
        let keys = ["a", "b", "c", "a", "d", "b", "a", "e", "c", "a"];
        for (offset, key) in keys.iter().enumerate() {
            state.push_ring(&record(offset as u64, key), 6);
        }
        assert_eq!(state.ring.len(), 6);
        assert_eq!(state.ring_hashes.len(), 6);
        for (h, r) in state.ring_hashes.iter().zip(&state.ring) {
            assert_eq!(*h, r.key_hash());
        }
        let filter = Filter::new(
            Some(["a", "c"].iter().map(|k| Arc::from(*k)).collect()),
            None,
        );
        let takes = |r: &Record| filter.takes(r);
        let offsets = |v: Vec<Arc<Record>>| v.iter().map(|r| r.offset).collect::<Vec<_>>();
        // Ring holds offsets 4..10; from index 1 (offset 5) on, keys a or c.
        assert_eq!(
            offsets(state.ring_from(1, filter.key_hashes(), &takes)),
            vec![6, 8, 9]
        );
        // Without the hashes (a prefix or every key), the same records.
        assert_eq!(offsets(state.ring_from(1, None, &takes)), vec![6, 8, 9]);
        // Looking back from offset 8: a's latest is 6, c's is not in the ring.
        assert_eq!(offsets(latest_before(&state, 4, &takes, &filter)), vec![6]);
    }
}
