//! The view as the log keeps it: where a partition's in-memory view lacks keys, a snapshot reads them from the source.
//!
//! The in-memory view is a cache. A source that keeps the latest record of
//! every key itself (the embedded log's `latest` table) hands registration a
//! [`StoredView`] pinned at exactly the position the hub is at (see
//! `Source::pinned_view`), and the partitions whose view evicted keys, or was
//! never filled from the log's start, are read from it: the snapshot is then
//! complete, and records newer than its position are not in it. A source
//! without one (Kafka, Kinesis) leaves such a snapshot partial.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::partition::PartitionState;
use super::snapshot::{Snapshot, View};
use super::sub::Filter;
use super::{Partial, Registration, Sub, Topic};
use crate::record::{Framing, LogRecord, Record};

/// Snapshots of at least this many records are filtered and ordered off the
/// async workers ([`Registration::complete`]).
const DEFER_SNAPSHOT_AT: usize = 16_384;

/// A storage failure while reading a stored view.
pub type StoredError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The latest record of each key of a topic, as the log keeps it, at one
/// position (a read transaction of the embedded log): what it answers never
/// changes while it is held.
pub trait StoredView: Send + Sync {
    /// The keys of `partition` that `filter` takes, in key order (bytes of
    /// UTF-8), with those `admit` refuses (given key and value) left out.
    fn keys(
        &self,
        partition: u32,
        filter: &Filter,
        admit: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Result<Vec<Arc<str>>, StoredError>;

    /// The latest record of `key` in `partition`, if the key exists.
    fn get(&self, partition: u32, key: &str) -> Result<Option<LogRecord>, StoredError>;

    /// The latest records of `partition` that `filter` takes, keys after
    /// `after`, in key order, at most `take` of them (all when `None`).
    fn page(
        &self,
        partition: u32,
        filter: &Filter,
        after: Option<&str>,
        take: Option<usize>,
    ) -> Result<Vec<LogRecord>, StoredError>;
}

/// A page of the view read at one position ([`Topic::view_after`]): the
/// candidates from memory, the position, and the partitions still to read
/// from the stored view.
pub struct ViewPage {
    /// Unordered across partitions (the caller picks the page from them).
    pub records: Vec<Arc<Record>>,
    pub high: Vec<u64>,
    stored: Option<Arc<dyn StoredView>>,
    from_store: Vec<u32>,
}

impl ViewPage {
    pub(super) fn new(
        records: Vec<Arc<Record>>,
        high: Vec<u64>,
        stored: Option<Arc<dyn StoredView>>,
        from_store: Vec<u32>,
    ) -> Self {
        Self {
            records,
            high,
            stored,
            from_store,
        }
    }

    /// Whether [`complete`](ViewPage::complete) has partitions to read (from
    /// storage: call it on a blocking thread).
    pub fn needs_store(&self) -> bool {
        self.stored.is_some()
    }

    /// Adds the candidates of the partitions read from the stored view (the
    /// same `filter`, `after` and `take` as the memory ones). Blocking I/O.
    pub fn complete(
        &mut self,
        topic: &str,
        filter: &Filter,
        after: Option<&str>,
        take: Option<usize>,
    ) -> Result<(), StoredError> {
        let Some(view) = self.stored.take() else {
            return Ok(());
        };
        for &partition in &self.from_store {
            for log in view.page(partition, filter, after, take)? {
                let record = Record::encode(topic, &log, "", Framing::Normal);
                self.records.push(Arc::new(record));
            }
        }
        Ok(())
    }
}

impl Topic {
    /// The warm start did not read `partition` from its start: its view may
    /// lack keys the log has (a snapshot reads them from the stored view).
    pub fn mark_incomplete(&self, partition: u32) {
        let parts = self.partitions.read().expect("partitions lock");
        if let Some(part) = parts.get(partition as usize) {
            let mut state = part.state.lock().expect("partition lock");
            state.evicted.get_or_insert("warm_start");
        }
    }

    /// Bytes the views of all partitions count for now (`view_max_bytes`).
    pub fn view_bytes(&self) -> u64 {
        self.view_bytes.used.load(Ordering::Relaxed)
    }

    /// Bytes of view entries let go (replaced, deleted, evicted) since the topic began.
    pub fn view_let_go(&self) -> u64 {
        self.view_bytes.let_go.load(Ordering::Relaxed)
    }
}

/// The partitions whose view lacks keys: all of them to read from the store
/// when `from_store`, else none and why the first one lacks keys.
pub(super) fn lacking(
    guards: &[MutexGuard<'_, PartitionState>],
    from_store: bool,
) -> (Vec<u32>, Option<&'static str>) {
    let mut lacking = guards
        .iter()
        .enumerate()
        .filter_map(|(p, g)| g.evicted.map(|why| (p as u32, why)));
    if from_store {
        (lacking.map(|(p, _)| p).collect(), None)
    } else {
        (Vec::new(), lacking.next().map(|(_, why)| why))
    }
}

/// One record of a snapshot: the view's own (a pointer), or a key read from
/// the stored view when its page is sent.
#[derive(Clone)]
pub enum Snap {
    Held(Arc<Record>),
    Stored { partition: u32, key: Arc<str> },
}

impl Snap {
    pub fn key(&self) -> Option<&str> {
        match self {
            Snap::Held(r) => r.key.as_deref(),
            Snap::Stored { key, .. } => Some(key),
        }
    }
}

/// What a registration still has to read from the stored view: the
/// partitions, the view pinned at `high`, and the snapshot's cap.
pub(super) struct Pending {
    /// The view's entries taken under the locks, to filter and order.
    pub(super) list: Vec<Snap>,
    /// None: a large snapshot held in memory, only to filter and order.
    pub(super) view: Option<Arc<dyn StoredView>>,
    pub(super) partitions: Vec<u32>,
    pub(super) max_snapshot: usize,
    /// Why the view lacks keys, when none are read from a stored view.
    pub(super) evicted: Option<&'static str>,
}

/// What registration took from the partitions' views under the locks.
pub(super) enum Taken {
    /// Clones of every partition's view (a whole topic or a key prefix, no
    /// value filter, nothing read from a stored view): streamed from them;
    /// and the topic's count of view bytes let go when they were taken.
    Shared(Vec<View>, u64),
    /// The entries `filter` takes, unordered: listed, sorted and capped.
    Collected(Vec<Arc<Record>>),
}

impl Registration {
    /// Whether [`complete`](Registration::complete) has work left: keys to read
    /// from storage, or a large snapshot to filter and order (CPU-bound: call it
    /// on a blocking thread).
    pub fn needs_store(&self) -> bool {
        self.pending.is_some()
    }

    /// How many records the snapshot holds (after [`complete`](Registration::complete)).
    pub fn snapshot_len(&self) -> usize {
        self.snapshot.len()
    }

    /// The view the snapshot reads from, if any of it is stored.
    pub fn stored_view(&self) -> Option<Arc<dyn StoredView>> {
        self.stored.clone()
    }

    /// Adds the keys of the partitions read from the stored view to the
    /// snapshot, then orders and caps it as `register` does. Blocking I/O.
    pub fn complete(&mut self) -> Result<(), StoredError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut list = pending.list;
        let spec = self.sub.spec().cloned();
        if let Some(spec) = &spec {
            list.retain(|s| match s {
                Snap::Held(r) => spec.admits(r.key.as_deref(), r.data()),
                Snap::Stored { .. } => true,
            });
        }
        if let Some(view) = &pending.view {
            let mut admit =
                |key: &str, data: &str| spec.as_ref().is_none_or(|s| s.admits(Some(key), data));
            for &partition in &pending.partitions {
                for key in view.keys(partition, &self.sub.filter, &mut admit)? {
                    list.push(Snap::Stored { partition, key });
                }
            }
        }
        self.partial = finish(&mut list, pending.max_snapshot, pending.evicted);
        self.snapshot = Snapshot::listed(list);
        Ok(())
    }
}

/// A registration's snapshot as taken under the locks, made ready outside
/// them: shared views counted (a key prefix is counted by its key range); a
/// small list filtered by the subscription's spec and ordered now; a large
/// one, or one with partitions to read from the stored view, left to
/// [`Registration::complete`] on a blocking thread (done here, a crowd of
/// subscribers to a big view would hold the runtime's workers).
pub(super) fn prepare(
    taken: Taken,
    sub: &Sub,
    stored: Option<&Arc<dyn StoredView>>,
    from_store: Vec<u32>,
    max_snapshot: usize,
    evicted: Option<&'static str>,
) -> (Snapshot, Option<Partial>, Option<Pending>) {
    let snapshot = match taken {
        Taken::Shared(views, let_go_at) => {
            let prefix = sub.filter.prefix.clone();
            let (snapshot, cut) = Snapshot::shared(views, let_go_at, prefix, max_snapshot);
            return (snapshot, partial_of(cut, evicted), None);
        }
        Taken::Collected(snapshot) => snapshot,
    };
    let view = stored.filter(|_| !from_store.is_empty());
    let mut snapshot = snapshot;
    if snapshot.len() < DEFER_SNAPSHOT_AT && view.is_none() {
        if let Some(spec) = sub.spec() {
            snapshot.retain(|r| spec.admits(r.key.as_deref(), r.data()));
        }
        let mut list: Vec<Snap> = snapshot.into_iter().map(Snap::Held).collect();
        let partial = finish(&mut list, max_snapshot, evicted);
        return (Snapshot::listed(list), partial, None);
    }
    let pending = Pending {
        list: snapshot.into_iter().map(Snap::Held).collect(),
        view: view.cloned(),
        partitions: from_store,
        max_snapshot,
        evicted: if view.is_some() { None } else { evicted },
    };
    (Snapshot::empty(), None, Some(pending))
}

/// Orders `snapshot` by key and cuts it at `max_snapshot` (0: no cap);
/// returns why it is partial, if it is (`evicted`: why the view lacks keys).
pub(super) fn finish(
    snapshot: &mut Vec<Snap>,
    max_snapshot: usize,
    evicted: Option<&'static str>,
) -> Option<Partial> {
    // Key order (bytes of UTF-8): a snapshot position is then one key.
    sort_by_key(snapshot);
    let mut cut = 0;
    if max_snapshot > 0 && snapshot.len() > max_snapshot {
        cut = snapshot.len() - max_snapshot;
        snapshot.truncate(max_snapshot);
    }
    partial_of(cut, evicted)
}

/// Why a snapshot is partial: `cut` keys beyond its cap, or keys its view evicted.
fn partial_of(cut: usize, evicted: Option<&'static str>) -> Option<Partial> {
    match (cut, evicted) {
        (0, None) => None,
        (0, Some(reason)) => Some(Partial { reason, skipped: 0 }),
        (skipped, _) => Some(Partial {
            reason: "max_snapshot_records",
            skipped,
        }),
    }
}

/// Sorts entries by key (None first, then the bytes of UTF-8). Each entry is
/// paired with its key's first 8 bytes as one integer, so most comparisons touch
/// neither the records nor their keys (for a million-key snapshot the cache
/// misses of following each pointer to its key were the cost).
fn sort_by_key(entries: &mut Vec<Snap>) {
    fn prefix(key: Option<&str>) -> u64 {
        let mut bytes = [0u8; 8];
        if let Some(k) = key {
            let n = k.len().min(8);
            bytes[..n].copy_from_slice(&k.as_bytes()[..n]);
        }
        u64::from_be_bytes(bytes)
    }
    let mut keyed: Vec<(u64, Snap)> = entries.drain(..).map(|e| (prefix(e.key()), e)).collect();
    // Equal prefixes (a short key padded with zeros among them) fall back to the keys.
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key().cmp(&b.1.key())));
    entries.extend(keyed.into_iter().map(|(_, e)| e));
}

/// The records of `keys` (stored entries of one snapshot page) read from
/// `view`, encoded like a view record. Blocking I/O. A key the pinned view
/// listed is always there; its absence means damaged storage.
pub fn read_stored(
    topic: &str,
    view: &dyn StoredView,
    keys: &[(u32, Arc<str>)],
) -> Result<Vec<Arc<Record>>, StoredError> {
    keys.iter()
        .map(|(partition, key)| match view.get(*partition, key)? {
            Some(log) => Ok(Arc::new(Record::encode(topic, &log, "", Framing::Normal))),
            None => Err(format!(
                "key `{key}` of partition {partition} vanished from the stored view"
            )
            .into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_order_is_the_order_of_the_keys_bytes() {
        // Shared 8-byte prefixes, keys shorter than 8 bytes (padded with zeros,
        // so "a" and "a\0" tie on the prefix), multi-byte UTF-8, no key, and
        // stored entries beside held ones.
        let keys: Vec<Option<&str>> = vec![
            Some("order-0000012"),
            Some("order-0000002"),
            Some("a"),
            Some("a\0"),
            Some(""),
            None,
            Some("ä"),
            Some("z"),
            Some("order-000001"),
            Some("ab"),
            Some("order-0000012x"),
            Some("\u{7f}"),
            Some("aaaaaaaab"),
            Some("aaaaaaaa"),
        ];
        let mut entries: Vec<Snap> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| match (i % 2, k) {
                (0, Some(k)) => Snap::Stored {
                    partition: 0,
                    key: (*k).into(),
                },
                _ => {
                    let log = LogRecord {
                        partition: 0,
                        offset: i as u64,
                        timestamp: 0,
                        key: k.map(Into::into),
                        data: "1".into(),
                        extra: None,
                        delete: false,
                        position: None,
                        trace: None,
                    };
                    Snap::Held(Arc::new(Record::encode("t", &log, "c", Framing::Normal)))
                }
            })
            .collect();
        let mut expected = keys.clone();
        expected.sort();
        finish(&mut entries, 0, None);
        let got: Vec<Option<&str>> = entries.iter().map(Snap::key).collect();
        assert_eq!(got, expected);
    }
}
