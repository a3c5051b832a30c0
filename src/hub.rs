//! The hub: per-topic recent history (ring + latest value per key), the subscription index, and fan-out.
//!
//! Sources call [`Hub::ingest`] once per record, in offset order per partition.
//! Ingest encodes the record once, keeps it in the partition's ring and view,
//! and pushes it to every matching subscription's outbox while holding that
//! partition's lock. [`Hub::register`] takes the locks of all partitions of a
//! topic to insert a subscription and read the positions it starts from, so
//! every record is either before that point (replayed or snapshotted) or after
//! it (delivered live): no gap, no duplicate.
//!
//! The cursor a live record carries is the topic's ingest frontier right after
//! it: every live subscriber has received all matching records up to that
//! point, whatever its filter, so one encoding serves them all.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use dashmap::DashMap;

use crate::cursor::{encode_into, Cursor};
use crate::outbox::{CloseReason, Outbox};
use crate::record::{Framing, LogRecord, Record};
use crate::telemetry;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("unknown topic")]
    UnknownTopic,
}

/// Per-topic memory bounds.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings {
    pub ring_records: usize,
    pub view_max_keys: usize,
}

#[derive(Default)]
pub struct Hub {
    topics: DashMap<Arc<str>, Arc<Topic>>,
}

pub struct Topic {
    pub name: Arc<str>,
    /// Identifies this topic incarnation in cursors.
    pub epoch: u64,
    settings: TopicSettings,
    partitions: RwLock<Vec<Arc<Partition>>>,
    index: SubIndex,
    /// Set by the source once the warm start has filled the ring and view up
    /// to the log's end as it stood: before that, nothing is served from them.
    ready: AtomicBool,
    /// Set once the topic was deleted or replaced: a subscription that
    /// registers after [`Topic::close`] collected the others is closed too.
    closed: AtomicBool,
}

struct Partition {
    id: u32,
    /// Next offset to ingest; written under `state`'s lock after fan-out, read without it.
    frontier: AtomicU64,
    state: Mutex<PartitionState>,
}

#[derive(Default)]
struct PartitionState {
    next_offset: u64,
    ring: VecDeque<Arc<Record>>,
    view: HashMap<Arc<str>, Arc<Record>>,
    /// Offset -> key of every view entry, oldest first, for eviction and ordered snapshots.
    view_order: BTreeMap<u64, Arc<str>>,
}

/// Which keys a subscription receives.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub keys: Option<HashSet<Arc<str>>>,
    pub prefix: Option<Box<str>>,
}

impl Filter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn is_all(&self) -> bool {
        self.keys.is_none() && self.prefix.is_none()
    }

    pub fn matches(&self, key: Option<&str>) -> bool {
        if self.is_all() {
            return true;
        }
        let Some(key) = key else { return false };
        self.keys.as_ref().is_some_and(|k| k.contains(key))
            || self.prefix.as_ref().is_some_and(|p| key.starts_with(&**p))
    }
}

/// One subscription: a filter on one topic, feeding one connection's outbox.
pub struct Sub {
    pub id: u64,
    pub filter: Filter,
    topic: Arc<str>,
    epoch: u64,
    outbox: Arc<Outbox>,
    /// False while the subscription catches up; live records then wait in `backlog`.
    live: AtomicBool,
    backlog: Mutex<Backlog>,
    backlog_limit: usize,
    /// Set when the client's cursor is ahead of this node (another node had read
    /// further): records below these offsets were already delivered.
    skip_below: Option<Box<[u64]>>,
    /// Set once this node's frontier has passed `skip_below` everywhere: from
    /// then on records carry cursors at least as far as the client's.
    ahead_resolved: AtomicBool,
}

#[derive(Default)]
struct Backlog {
    items: Vec<Arc<Record>>,
    bytes: usize,
    overflowed: bool,
}

/// What a new subscription must be sent before it goes live.
pub struct Registration {
    pub sub: Arc<Sub>,
    /// Next offset per partition at the moment the subscription was inserted.
    pub high: Vec<u64>,
    /// Latest value per requested key, captured at `high`.
    pub snapshot: Vec<Arc<Record>>,
    pub replay: Vec<Replay>,
    /// The cursor cannot be honoured at all (another epoch, unknown partitions).
    pub foreign_cursor: bool,
}

/// Records one partition must replay to bring a resuming subscription up to `high`.
pub enum Replay {
    /// Served from the in-memory ring (already filtered).
    Ring {
        partition: u32,
        records: Vec<Arc<Record>>,
    },
    /// Older than the ring: read `[from, until)` from the source.
    Log {
        partition: u32,
        from: u64,
        until: u64,
    },
}

static NEXT_SUB_ID: AtomicU64 = AtomicU64::new(1);

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces, for a recreated topic) a topic with `partitions` partitions.
    pub fn add_topic(
        &self,
        name: &str,
        epoch: u64,
        partitions: u32,
        settings: TopicSettings,
    ) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            name: Arc::from(name),
            epoch,
            settings,
            partitions: RwLock::new(Vec::new()),
            index: SubIndex::default(),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        topic.ensure_partitions(partitions);
        self.topics
            .insert(Arc::clone(&topic.name), Arc::clone(&topic));
        topic
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, HubError> {
        self.topics
            .get(name)
            .map(|t| Arc::clone(t.value()))
            .ok_or(HubError::UnknownTopic)
    }

    /// Removes `topic` (a topic deleted from the log) if it is still the one
    /// registered under its name, and [closes](Topic::close) it. Returns how
    /// many subscriptions were disconnected.
    pub fn remove_topic(&self, topic: &Arc<Topic>) -> usize {
        self.topics
            .remove_if(&topic.name, |_, current| Arc::ptr_eq(current, topic));
        topic.close()
    }

    pub fn topic_names(&self) -> Vec<Arc<str>> {
        self.topics.iter().map(|t| Arc::clone(t.key())).collect()
    }
}

impl Topic {
    /// The warm start is done: subscriptions may be served.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.read().expect("partitions lock").len() as u32
    }

    /// Grows the topic to `count` partitions (partitions are never removed).
    pub fn ensure_partitions(&self, count: u32) {
        let mut parts = self.partitions.write().expect("partitions lock");
        while (parts.len() as u32) < count {
            let id = parts.len() as u32;
            parts.push(Arc::new(Partition {
                id,
                frontier: AtomicU64::new(0),
                state: Mutex::new(PartitionState::default()),
            }));
        }
    }

    /// Moves a partition's position forward without a record (an empty or
    /// retention-trimmed partition at start, or offsets a source skips).
    pub fn advance(&self, partition: u32, next_offset: u64) {
        let parts = self.partitions.read().expect("partitions lock");
        if let Some(part) = parts.get(partition as usize) {
            let mut state = part.state.lock().expect("partition lock");
            if next_offset > state.next_offset {
                state.next_offset = next_offset;
                part.frontier.store(next_offset, Ordering::Release);
            }
        }
    }

    /// Next offset per partition, as far as this node has ingested.
    pub fn frontier(&self) -> Vec<u64> {
        let parts = self.partitions.read().expect("partitions lock");
        parts
            .iter()
            .map(|p| p.frontier.load(Ordering::Acquire))
            .collect()
    }

    /// The cursor right after (`partition`, `offset`): that partition at
    /// `offset + 1`, the others at this node's frontier.
    pub fn cursor_after(&self, partition: u32, offset: u64) -> String {
        let mut offsets = self.frontier();
        if let Some(slot) = offsets.get_mut(partition as usize) {
            *slot = offset + 1;
        }
        Cursor::new(self.epoch, offsets).encode()
    }

    /// The latest value of `key`, if the view holds one.
    pub fn latest(&self, key: &str) -> Option<Arc<Record>> {
        let parts = self.partitions.read().expect("partitions lock");
        parts.iter().find_map(|p| {
            let state = p.state.lock().expect("partition lock");
            state.view.get(key).cloned()
        })
    }

    /// Takes in one record from the source; records must come in offset order per
    /// partition. Returns how many subscriptions it was delivered to.
    pub fn ingest(&self, log: &LogRecord) -> usize {
        let parts = self.partitions.read().expect("partitions lock");
        let Some(part) = parts.get(log.partition as usize) else {
            tracing::warn!(topic = %self.name, partition = log.partition, "record for an unknown partition dropped");
            return 0;
        };
        let mut state = part.state.lock().expect("partition lock");
        if log.offset < state.next_offset {
            // Already seen (a source re-reading after a reconnect): never deliver twice.
            return 0;
        }
        let next = log.offset + 1;
        let mut cursor = String::with_capacity(16 + parts.len() * 4);
        let offsets: Vec<u64> = parts
            .iter()
            .map(|q| {
                if q.id == part.id {
                    next
                } else {
                    q.frontier.load(Ordering::Acquire)
                }
            })
            .collect();
        encode_into(self.epoch, &offsets, &mut cursor);
        let record = Arc::new(Record::encode(&self.name, log, &cursor, Framing::Normal));

        state.ring.push_back(Arc::clone(&record));
        while state.ring.len() > self.settings.ring_records {
            state.ring.pop_front();
        }
        if let Some(key) = &record.key {
            if self.settings.view_max_keys > 0 {
                update_view(&mut state, key, &record, self.settings.view_max_keys);
            }
        }
        state.next_offset = next;
        let delivered = self.index.dispatch(&record);
        // Published only after fan-out: a record that reads this frontier into its
        // cursor is queued behind every record the frontier covers.
        part.frontier.store(next, Ordering::Release);
        drop(state);
        telemetry::record_ingested(delivered);
        delivered
    }

    /// Inserts a subscription and captures what it needs before going live.
    ///
    /// `cursor`: resume point, if the client brought one. `snapshot`: capture the
    /// latest value of the requested keys (also taken with a cursor, in case the
    /// cursor turns out to be unrecoverable).
    pub fn register(
        &self,
        filter: Filter,
        outbox: Arc<Outbox>,
        cursor: Option<&Cursor>,
        snapshot: bool,
        max_snapshot: usize,
        backlog_limit: usize,
    ) -> Registration {
        let parts = self.partitions.read().expect("partitions lock");
        let guards: Vec<MutexGuard<'_, PartitionState>> = parts
            .iter()
            .map(|p| p.state.lock().expect("partition lock"))
            .collect();
        let high: Vec<u64> = guards.iter().map(|g| g.next_offset).collect();

        let mut replay = Vec::new();
        let mut skip_below = None;
        let foreign_cursor =
            cursor.is_some_and(|c| c.epoch != self.epoch || c.offsets.len() > parts.len());
        if let (Some(cursor), false) = (cursor, foreign_cursor) {
            if (0..parts.len()).any(|p| cursor.offset(p) > high[p]) {
                skip_below = Some(
                    (0..parts.len())
                        .map(|p| cursor.offset(p))
                        .collect::<Box<[u64]>>(),
                );
            }
            for (p, state) in guards.iter().enumerate() {
                let from = cursor.offset(p);
                if from >= high[p] {
                    continue;
                }
                let ring_covers = state.ring.front().is_some_and(|r| r.offset <= from);
                if ring_covers {
                    let records = state
                        .ring
                        .iter()
                        .filter(|r| r.offset >= from && filter.matches(r.key.as_deref()))
                        .cloned()
                        .collect();
                    replay.push(Replay::Ring {
                        partition: p as u32,
                        records,
                    });
                } else {
                    replay.push(Replay::Log {
                        partition: p as u32,
                        from,
                        until: high[p],
                    });
                }
            }
        }

        let needs_snapshot = snapshot && (cursor.is_none() || foreign_cursor || has_log(&replay));
        let snapshot = if needs_snapshot {
            collect_snapshot(&guards, &filter, max_snapshot)
        } else {
            Vec::new()
        };

        let sub = Arc::new(Sub {
            id: NEXT_SUB_ID.fetch_add(1, Ordering::Relaxed),
            filter,
            topic: Arc::clone(&self.name),
            epoch: self.epoch,
            outbox,
            live: AtomicBool::new(false),
            backlog: Mutex::new(Backlog::default()),
            backlog_limit,
            skip_below,
            ahead_resolved: AtomicBool::new(false),
        });
        self.index.insert(&sub);
        drop(guards);
        telemetry::subscription_opened();
        // Closed meanwhile (deleted or replaced): `close` may have collected the
        // subscriptions before this one was inserted, so close it here.
        if self.closed.load(Ordering::SeqCst) {
            sub.outbox.close(CloseReason::TopicReset);
        }
        Registration {
            sub,
            high,
            snapshot,
            replay,
            foreign_cursor,
        }
    }

    /// Closes the connection queue of every subscription to this topic (used when
    /// a source replaces the topic, e.g. a Kafka topic that was recreated): the
    /// clients reconnect and resume with their cursor, whose epoch is then
    /// foreign, and are told `recovered:false`. Returns how many were closed.
    pub fn disconnect_all(&self) -> usize {
        let mut subs: Vec<Arc<Sub>> = self.index.all.read().expect("index lock").clone();
        subs.extend(
            self.index
                .prefixed
                .read()
                .expect("index lock")
                .iter()
                .cloned(),
        );
        for entry in self.index.by_key.iter() {
            subs.extend(entry.value().iter().cloned());
        }
        for sub in &subs {
            sub.outbox.close(CloseReason::TopicReset);
        }
        subs.len()
    }

    /// This incarnation of the topic is gone (deleted, or replaced by a
    /// recreated one): its subscribers are disconnected (close 4004) and any
    /// that registers later is too. Returns how many were disconnected.
    pub fn close(&self) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        self.disconnect_all()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Removes a subscription from the index; nothing more is queued for it.
    pub fn unregister(&self, sub: &Arc<Sub>) {
        self.index.remove(sub);
        telemetry::subscription_closed();
    }
}

fn has_log(replay: &[Replay]) -> bool {
    replay.iter().any(|r| matches!(r, Replay::Log { .. }))
}

fn update_view(state: &mut PartitionState, key: &Arc<str>, record: &Arc<Record>, max_keys: usize) {
    if let Some(old) = state.view.insert(Arc::clone(key), Arc::clone(record)) {
        state.view_order.remove(&old.offset);
    }
    state.view_order.insert(record.offset, Arc::clone(key));
    while state.view.len() > max_keys {
        // Evict the key updated longest ago.
        let Some((_, oldest)) = state.view_order.pop_first() else {
            break;
        };
        state.view.remove(&oldest);
    }
}

fn collect_snapshot(
    guards: &[MutexGuard<'_, PartitionState>],
    filter: &Filter,
    max: usize,
) -> Vec<Arc<Record>> {
    let mut out = Vec::new();
    match (&filter.keys, &filter.prefix) {
        (Some(keys), None) => {
            for key in keys {
                if let Some(rec) = guards.iter().find_map(|g| g.view.get(key)) {
                    out.push(Arc::clone(rec));
                }
            }
            out.sort_by_key(|r| (r.partition, r.offset));
        }
        _ => {
            for state in guards {
                for key in state.view_order.values() {
                    if filter.matches(Some(key)) {
                        out.push(Arc::clone(&state.view[key]));
                    }
                }
            }
        }
    }
    out.truncate(max);
    out
}

impl Sub {
    /// Queues a live record for this subscription. Called under the partition lock.
    fn deliver(&self, record: &Arc<Record>) -> bool {
        if let Some(skip) = &self.skip_below {
            if record.offset < skip.get(record.partition as usize).copied().unwrap_or(0) {
                return false;
            }
            if !self.ahead_resolved.load(Ordering::Relaxed) {
                if let Some(merged) = self.merge_cursor(record, skip) {
                    return self.enqueue(&Arc::new(merged));
                }
                self.ahead_resolved.store(true, Ordering::Relaxed);
            }
        }
        self.enqueue(record)
    }

    /// While this node is behind the client's cursor in some partition, a live
    /// record's cursor (this node's frontier) would send the client back: it
    /// gets a copy whose cursor is the larger of the two, per partition. Rare
    /// (a resume on a lagging node), and only until the node catches up.
    fn merge_cursor(&self, record: &Record, skip: &[u64]) -> Option<Record> {
        let carried = Cursor::decode(record.cursor()).ok()?;
        if skip
            .iter()
            .enumerate()
            .all(|(p, &at)| carried.offset(p) >= at)
        {
            return None;
        }
        let offsets = (0..carried.offsets.len().max(skip.len()))
            .map(|p| carried.offset(p).max(skip.get(p).copied().unwrap_or(0)))
            .collect();
        let cursor = Cursor::new(self.epoch, offsets).encode();
        Some(record.reframe(&self.topic, &cursor, Framing::Normal))
    }

    fn enqueue(&self, record: &Arc<Record>) -> bool {
        if self.live.load(Ordering::Acquire) {
            return self.outbox.push(record);
        }
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if self.live.load(Ordering::Acquire) {
            drop(backlog);
            return self.outbox.push(record);
        }
        if backlog.overflowed {
            return false;
        }
        backlog.bytes += record.cost();
        if backlog.bytes > self.backlog_limit {
            backlog.overflowed = true;
            backlog.items = Vec::new();
            drop(backlog);
            self.outbox.close(CloseReason::Slow);
            return false;
        }
        backlog.items.push(Arc::clone(record));
        true
    }

    /// Ends catch-up: returns the live records that arrived meanwhile, and from
    /// now on records go straight to the outbox. `Err` if the backlog overflowed.
    pub fn go_live(&self) -> Result<Vec<Arc<Record>>, CloseReason> {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if backlog.overflowed {
            return Err(CloseReason::Slow);
        }
        if let Some(reason) = self.outbox.closed_reason() {
            return Err(reason);
        }
        let items = std::mem::take(&mut backlog.items);
        backlog.bytes = 0;
        self.live.store(true, Ordering::Release);
        Ok(items)
    }
}

/// The subscription index of one topic: exact keys in a sharded map, plus the
/// (usually few) subscriptions to all keys or to key prefixes.
#[derive(Default)]
struct SubIndex {
    by_key: DashMap<Arc<str>, Vec<Arc<Sub>>>,
    all: RwLock<Vec<Arc<Sub>>>,
    prefixed: RwLock<Vec<Arc<Sub>>>,
}

impl SubIndex {
    fn insert(&self, sub: &Arc<Sub>) {
        if sub.filter.is_all() {
            self.all.write().expect("index lock").push(Arc::clone(sub));
            return;
        }
        if let Some(keys) = &sub.filter.keys {
            for key in keys {
                self.by_key
                    .entry(Arc::clone(key))
                    .or_default()
                    .push(Arc::clone(sub));
            }
        }
        if sub.filter.prefix.is_some() {
            self.prefixed
                .write()
                .expect("index lock")
                .push(Arc::clone(sub));
        }
    }

    fn remove(&self, sub: &Arc<Sub>) {
        if sub.filter.is_all() {
            self.all
                .write()
                .expect("index lock")
                .retain(|s| s.id != sub.id);
            return;
        }
        if let Some(keys) = &sub.filter.keys {
            for key in keys {
                if let Some(mut list) = self.by_key.get_mut(key) {
                    list.retain(|s| s.id != sub.id);
                }
                self.by_key.remove_if(key, |_, list| list.is_empty());
            }
        }
        if sub.filter.prefix.is_some() {
            self.prefixed
                .write()
                .expect("index lock")
                .retain(|s| s.id != sub.id);
        }
    }

    /// Pushes `record` to every matching subscription, once each.
    fn dispatch(&self, record: &Arc<Record>) -> usize {
        let mut delivered = 0;
        for sub in self.all.read().expect("index lock").iter() {
            delivered += usize::from(sub.deliver(record));
        }
        let Some(key) = record.key.as_deref() else {
            return delivered;
        };
        if let Some(list) = self.by_key.get(key) {
            for sub in list.iter() {
                delivered += usize::from(sub.deliver(record));
            }
        }
        for sub in self.prefixed.read().expect("index lock").iter() {
            let prefix = sub.filter.prefix.as_deref().unwrap_or("");
            // A key the subscription also names exactly was delivered above.
            let exact = sub.filter.keys.as_ref().is_some_and(|k| k.contains(key));
            if key.starts_with(prefix) && !exact {
                delivered += usize::from(sub.deliver(record));
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TopicSettings {
        TopicSettings {
            ring_records: 4,
            view_max_keys: 2,
        }
    }

    fn log(partition: u32, offset: u64, key: &str) -> LogRecord {
        LogRecord {
            partition,
            offset,
            timestamp: 0,
            key: Some(key.into()),
            data: format!("{offset}").into(),
            extra: None,
        }
    }

    fn drain(outbox: &Outbox) -> Vec<u64> {
        let mut out = Vec::new();
        outbox.drain_into(&mut out).unwrap();
        out.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn fans_out_by_key_prefix_and_all_once_each() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let keyed = Arc::new(Outbox::new(1 << 20));
        let both = Arc::new(Outbox::new(1 << 20));
        let all = Arc::new(Outbox::new(1 << 20));
        let keys = |k: &[&str]| Some(k.iter().map(|s| Arc::from(*s)).collect());
        let filter = Filter {
            keys: keys(&["a"]),
            prefix: None,
        };
        topic
            .register(filter, keyed.clone(), None, false, 10, 1 << 20)
            .sub
            .go_live()
            .unwrap();
        let filter = Filter {
            keys: keys(&["ab"]),
            prefix: Some("a".into()),
        };
        topic
            .register(filter, both.clone(), None, false, 10, 1 << 20)
            .sub
            .go_live()
            .unwrap();
        topic
            .register(Filter::all(), all.clone(), None, false, 10, 1 << 20)
            .sub
            .go_live()
            .unwrap();
        topic.ingest(&log(0, 0, "a"));
        topic.ingest(&log(0, 1, "ab"));
        topic.ingest(&log(0, 2, "b"));
        topic.ingest(&log(0, 2, "b")); // a repeat is ignored
        assert_eq!(drain(&keyed), vec![0]);
        assert_eq!(drain(&both), vec![0, 1]);
        assert_eq!(drain(&all), vec![0, 1, 2]);
    }

    #[test]
    fn view_is_bounded_and_ring_is_bounded() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        for (i, key) in ["a", "b", "c", "a", "d", "e"].iter().enumerate() {
            topic.ingest(&log(0, i as u64, key));
        }
        assert!(topic.latest("a").is_none(), "a was evicted by newer keys");
        assert_eq!(topic.latest("e").unwrap().offset, 5);
        let out = Arc::new(Outbox::new(1 << 20));
        let cursor = Cursor::new(9, vec![1]);
        let reg = topic.register(Filter::all(), out, Some(&cursor), false, 10, 1 << 20);
        assert!(matches!(
            reg.replay[0],
            Replay::Log {
                from: 1,
                until: 6,
                ..
            }
        ));
        let out = Arc::new(Outbox::new(1 << 20));
        let cursor = Cursor::new(9, vec![3]);
        let reg = topic.register(Filter::all(), out, Some(&cursor), false, 10, 1 << 20);
        match &reg.replay[0] {
            Replay::Ring { records, .. } => {
                assert_eq!(
                    records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    vec![3, 4, 5]
                )
            }
            Replay::Log { .. } => panic!("ring covers offset 3"),
        }
    }

    #[test]
    fn catch_up_backlog_then_live_in_order() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        topic.ingest(&log(0, 0, "a"));
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(Filter::all(), out.clone(), None, true, 10, 1 << 20);
        assert_eq!(reg.snapshot.len(), 1);
        assert_eq!(reg.high, vec![1]);
        topic.ingest(&log(0, 1, "a"));
        assert!(drain(&out).is_empty(), "held back until live");
        let backlog = reg.sub.go_live().unwrap();
        assert_eq!(
            backlog.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![1]
        );
        topic.ingest(&log(0, 2, "a"));
        assert_eq!(drain(&out), vec![2]);
    }

    #[test]
    fn a_client_ahead_of_this_node_never_gets_a_cursor_behind_its_own() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 2, settings());
        // The client read partition 1 up to offset 10 on another node; this one has nothing yet.
        let out = Arc::new(Outbox::new(1 << 20));
        let ahead = Cursor::new(9, vec![0, 10]);
        let reg = topic.register(Filter::all(), out.clone(), Some(&ahead), false, 10, 1 << 20);
        reg.sub.go_live().unwrap();
        topic.ingest(&log(0, 0, "a"));
        for offset in 0..11 {
            topic.ingest(&log(1, offset, "b"));
        }
        topic.ingest(&log(0, 1, "a"));
        let mut got = Vec::new();
        out.drain_into(&mut got).unwrap();
        let seen: Vec<(u32, u64, Vec<u64>)> = got
            .iter()
            .map(|r| {
                (
                    r.partition,
                    r.offset,
                    Cursor::decode(r.cursor()).unwrap().offsets,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 0, vec![1, 10]),  // merged: this node's frontier for p1 was 0
                (1, 10, vec![1, 11]), // offsets 0..=9 were already delivered elsewhere
                (0, 1, vec![2, 11]),  // caught up: the shared encoding again
            ]
        );
        assert!(
            Arc::ptr_eq(&got[2], &topic.latest("a").unwrap()),
            "no copy once caught up"
        );
    }

    #[test]
    fn a_removed_topic_disconnects_its_subscribers_and_later_ones() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let before = Arc::new(Outbox::new(1 << 20));
        topic
            .register(Filter::all(), before.clone(), None, false, 10, 1 << 20)
            .sub
            .go_live()
            .unwrap();
        assert_eq!(hub.remove_topic(&topic), 1);
        assert!(hub.topic("t").is_err(), "no longer listed");
        assert!(hub.topic_names().is_empty());
        assert_eq!(before.closed_reason(), Some(CloseReason::TopicReset));
        // A client that looked the topic up just before the removal.
        let late = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(Filter::all(), late.clone(), None, false, 10, 1 << 20);
        assert_eq!(late.closed_reason(), Some(CloseReason::TopicReset));
        assert!(matches!(reg.sub.go_live(), Err(CloseReason::TopicReset)));
    }

    #[test]
    fn removing_a_replaced_topic_keeps_the_new_one() {
        let hub = Hub::new();
        let old = hub.add_topic("t", 1, 1, settings());
        let new = hub.add_topic("t", 2, 1, settings());
        hub.remove_topic(&old);
        assert!(Arc::ptr_eq(&hub.topic("t").unwrap(), &new));
        assert!(old.is_closed() && !new.is_closed());
    }

    #[test]
    fn cursor_carries_frontier_of_other_partitions() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 2, settings());
        topic.ingest(&log(0, 0, "a"));
        topic.ingest(&log(1, 0, "b"));
        topic.ingest(&log(0, 1, "a"));
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(Filter::all(), out, None, false, 10, 1 << 20);
        assert_eq!(reg.high, vec![2, 1]);
        let rec = topic.latest("a").unwrap();
        assert_eq!(Cursor::decode(rec.cursor()).unwrap().offsets, vec![2, 1]);
    }
}
