//! The hub: per-topic recent history (ring + latest value per key), the subscription index, and fan-out.
//!
//! Sources call [`Topic::ingest`] once per record, in offset order per partition.
//! Ingest encodes the record once, keeps it in the partition's ring and view
//! (a delete or tombstone removes its key from the view instead), and pushes
//! it to every matching subscription's outbox while holding that partition's
//! lock. [`Topic::register`] takes the locks of all partitions of a
//! topic to insert a subscription and read the positions it starts from, so
//! every record is either before that point (replayed or snapshotted) or after
//! it (delivered live): no gap, no duplicate.
//!
//! The cursor a live record carries is the topic's ingest frontier right after
//! it: every live subscriber has received all matching records up to that
//! point, whatever its filter, so one encoding serves them all.
//!
//! Parts: `partition` (ring and view of one partition), `index` (which
//! subscriptions a key goes to), `sub` (a subscription's filter and its
//! catch-up backlog), `group` and `rate` (subscriptions sharing a delivery
//! spec; `max_rate` conflation), `stored` (keys read from a source's stored
//! view). Lock order (docs/ARCHITECTURE.md): a source's pinned view, a topic's
//! groups lock (taken alone), its partitions lock, partition states in
//! partition order, a partition's positions (one at a time), the index (a
//! DashMap shard or an RwLock), a group's rate lock, then its delta lock (each
//! released before the next), a subscription's backlog, then its outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use dashmap::DashMap;
use smallvec::SmallVec;

#[doc(hidden)]
pub mod bench;
mod cursors;
mod group;
mod index;
mod partition;
mod rate;
mod snapshot;
mod stats;
mod stored;
mod sub;

use self::group::Group;
use self::index::SubIndex;
use self::partition::{
    collect_snapshot, collect_view, lock_all, remove_from_view, replays, update_view, Located,
    Partition, PartitionState, Positions, ViewBudget, ViewBytes,
};
pub use self::snapshot::Snapshot;
pub use self::stats::PartitionStats;
pub use self::stored::{read_stored, Snap, StoredError, StoredView, ViewPage};
use self::stored::{Pending, Taken};
use self::sub::{Backlog, NEXT_SUB_ID};
pub use self::sub::{Filter, KeySet, Sub};
use crate::cursor::{decimal_to_position, encode_into, encode_shards_into, Cursor, ShardPos};
use crate::outbox::{CloseReason, Outbox};
use crate::record::{Framing, LogRecord, Record};
use crate::shaping::Spec;
use crate::telemetry;

static NEXT_GROUP_ID: AtomicU64 = AtomicU64::new(1);

/// What [`Topic::register`] is asked for, by name.
pub struct SubscribeOptions<'a> {
    /// Which keys.
    pub filter: Filter,
    /// The delivery spec (value filter, fields, delta, max_rate), if any.
    pub spec: Option<Arc<Spec>>,
    /// The connection's queue the subscription delivers into.
    pub outbox: Arc<Outbox>,
    /// Where the client resumes from, if it brought a cursor.
    pub cursor: Option<&'a Cursor>,
    /// Capture the latest value of the requested keys (also taken with a
    /// cursor, in case the cursor turns out to be unrecoverable, and always
    /// for a cursor with a snapshot position)...
    pub snapshot: bool,
    /// ...at most this many of them (0: all; a cut is signalled as partial).
    pub max_snapshot: usize,
    /// Bytes of live records held while the subscription catches up.
    pub backlog_limit: usize,
    /// The source's own latest record per key, pinned at the hub's current
    /// position (the embedded log): partitions whose view lacks keys are
    /// read from it, so the snapshot is complete.
    pub stored: Option<Arc<dyn StoredView>>,
}

#[cfg(test)]
impl SubscribeOptions<'_> {
    /// Every key, no spec, no cursor, no snapshot (the tests' starting point).
    pub fn plain(filter: Filter, outbox: Arc<Outbox>) -> Self {
        Self {
            filter,
            spec: None,
            outbox,
            cursor: None,
            snapshot: false,
            max_snapshot: 10,
            backlog_limit: 1 << 20,
            stored: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("unknown topic")]
    UnknownTopic,
}

/// Why a version 2 cursor cannot be turned into this node's ordinals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// The cursor is of another kind (version 1 on a shard topic, or the reverse).
    #[error("the cursor is not of this topic's kind")]
    Foreign,
    /// The client has seen positions this node has not read yet: retry shortly.
    #[error("this node has not read as far as the cursor yet")]
    Ahead,
    /// A position older than anything this node holds (past retention when it started).
    #[error("the cursor's position is older than retention")]
    Retention,
}

/// Per-topic memory bounds.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings {
    pub ring_records: usize,
    /// Keys per partition's view at most.
    pub view_max_keys: usize,
    /// Bytes of all the topic's views at most (0: no byte bound).
    pub view_max_bytes: usize,
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
    /// Bytes the views of all partitions count for now (`view_max_bytes`), and have let go.
    view_bytes: ViewBytes,
    partitions: RwLock<Vec<Arc<Partition>>>,
    index: SubIndex,
    /// Groups by canonical spec, so equal specs share one (see `hub::group`).
    groups: Mutex<HashMap<Box<str>, Weak<Group>>>,
    /// Set by the source once the warm start has filled the ring and view up
    /// to the log's end as it stood: before that, nothing is served from them.
    ready: AtomicBool,
    /// Wakes those [waiting](Topic::wait_ready) for `ready`.
    became_ready: tokio::sync::Notify,
    /// Set once the topic was deleted or replaced: a subscription that
    /// registers after [`Topic::close`] collected the others is closed too.
    closed: AtomicBool,
    /// Positions are the source's own opaque ones (Kinesis sequence numbers):
    /// `offset`s in the hub are this node's ordinals, cursors are version 2,
    /// and each partition keeps up to this many ordinal -> position entries.
    /// `None` for integer offsets (embedded log, Kafka).
    position_limit: Option<usize>,
}

/// What a new subscription must be sent before it goes live.
pub struct Registration {
    pub sub: Arc<Sub>,
    /// Next offset per partition at the moment the subscription was inserted.
    pub high: Vec<u64>,
    /// Latest value per requested key, captured at `high`, streamed by page
    /// in key order: clones of the partitions' persistent views, or a list of
    /// the view's own records (pointers) and of keys read from the stored
    /// view when their page is sent (see `hub::snapshot`).
    pub snapshot: Snapshot,
    pub replay: Vec<Replay>,
    /// The cursor cannot be honoured at all (another epoch, unknown partitions).
    pub foreign_cursor: bool,
    /// The snapshot lacks keys of the view, and why.
    pub partial: Option<Partial>,
    /// Keys still to list from the stored view ([`Registration::complete`]).
    pending: Option<Pending>,
    /// The stored view the snapshot's stored entries are read from.
    stored: Option<Arc<dyn StoredView>>,
}

/// Why a snapshot was cut short: `reason` is `"max_snapshot_records"`
/// (`skipped` keys matched beyond the cap), or `"view_max_keys"` or
/// `"view_max_bytes"` (a partition evicted keys from its view and the source
/// keeps no latest record per key to read them from: how many of them still
/// exist is not known, `skipped` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub reason: &'static str,
    pub skipped: usize,
}

/// Records one partition must replay to bring a resuming subscription up to `high`.
pub enum Replay {
    /// Served from the in-memory ring (already filtered by key).
    Ring {
        partition: u32,
        records: Vec<Arc<Record>>,
        /// With a value filter: the latest ring record of each of those keys
        /// from before the cursor, which tells whether the client's value matched.
        lookback: Vec<Arc<Record>>,
    },
    /// Older than the ring: read `[from, until)` from the source.
    Log {
        partition: u32,
        from: u64,
        until: u64,
    },
}

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
        self.insert_topic(name, epoch, partitions, settings, None)
    }

    /// Adds (or replaces) a topic whose positions are the source's own opaque
    /// ones (a Kinesis stream: shards as partitions, sequence numbers as
    /// positions). `position_limit`: ordinal -> position entries kept per partition.
    pub fn add_shard_topic(
        &self,
        name: &str,
        epoch: u64,
        partitions: u32,
        settings: TopicSettings,
        position_limit: usize,
    ) -> Arc<Topic> {
        self.insert_topic(name, epoch, partitions, settings, Some(position_limit))
    }

    fn insert_topic(
        &self,
        name: &str,
        epoch: u64,
        partitions: u32,
        settings: TopicSettings,
        position_limit: Option<usize>,
    ) -> Arc<Topic> {
        let topic = Arc::new(Topic {
            name: Arc::from(name),
            epoch,
            settings,
            view_bytes: ViewBytes::default(),
            partitions: RwLock::new(Vec::new()),
            index: SubIndex::default(),
            groups: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            became_ready: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            position_limit,
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

/// How long a subscribe or a publish that meets its topic still warming on
/// this node waits for it before it is answered `unavailable`. A restarted
/// node accepts sockets at once and warms its topics within moments; clients
/// that reconnect in that window are answered when the topic is ready, not
/// sent back to their retry backoff.
pub const TOPIC_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Topic {
    /// The warm start is done: subscriptions may be served.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.became_ready.notify_waiters();
    }

    /// Waits until the topic is [ready](Topic::mark_ready), for at most `limit`.
    /// Returns whether it is.
    pub async fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let became_ready = self.became_ready.notified();
        tokio::pin!(became_ready);
        // Registered before the check, so a `mark_ready` in between is not missed.
        became_ready.as_mut().enable();
        if self.is_ready() {
            return true;
        }
        let _ = tokio::time::timeout(limit, became_ready).await;
        self.is_ready()
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
                high_watermark: AtomicU64::new(partition::UNKNOWN),
                state: Mutex::new(PartitionState::default()),
                positions: Mutex::new(Positions::default()),
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
        // Scratch kept per thread: the text is copied into the record's encodings.
        let mut cursor = CURSOR_TEXT.take();
        cursor.clear();
        let offsets: SmallVec<[u64; 8]> = parts
            .iter()
            .map(|q| {
                if q.id == part.id {
                    next
                } else {
                    q.frontier.load(Ordering::Acquire)
                }
            })
            .collect();
        match self.position_limit {
            None => encode_into(self.epoch, &offsets, &mut cursor),
            Some(limit) => {
                let Some(position) = log.position.as_deref().and_then(decimal_to_position) else {
                    tracing::warn!(topic = %self.name, partition = log.partition, "record without a valid position dropped");
                    return 0;
                };
                let this = (part.id, &*position);
                let shards = cursors::shard_positions(&parts, &offsets, Some(this));
                part.positions
                    .lock()
                    .expect("positions lock")
                    .push(log.offset, position, limit);
                encode_shards_into(self.epoch, &shards, &mut cursor);
            }
        }
        // Traces on: the ingest and fan-out spans (the one branch when off).
        let spans =
            crate::traces::ingest(&self.name, log.partition, log.offset, log.trace.as_ref());
        let trace = spans.as_ref().and_then(|s| s.record.clone());
        let record = Arc::new(
            Record::encode(&self.name, log, &cursor, Framing::Normal)
                .live()
                .traced(trace),
        );
        CURSOR_TEXT.set(cursor);

        state.push_ring(&record, self.settings.ring_records);
        state.next_offset = next;
        // Fan-out before the view takes the record: groups with a value
        // filter compare the new value with the key's previous one.
        let delivered = self
            .index
            .dispatch(&self.name, self.epoch, &record, &state.view);
        if let Some(key) = &record.key {
            if log.delete {
                // The entity is gone: a snapshot lists only keys that exist. The
                // ring keeps the record, so a resume across it replays it.
                remove_from_view(&mut state, key, &self.view_bytes);
            } else if self.settings.view_max_keys > 0 {
                let budget = ViewBudget {
                    max_keys: self.settings.view_max_keys,
                    max_bytes: self.settings.view_max_bytes,
                    bytes: &self.view_bytes,
                };
                update_view(&mut state, key, &record, &budget);
            }
        }
        // Published only after fan-out: a record that reads this frontier into its
        // cursor is queued behind every record the frontier covers.
        part.frontier.store(next, Ordering::Release);
        drop(state);
        telemetry::record_ingested(delivered);
        if let Some(spans) = spans {
            spans.fanned_out(delivered);
        }
        delivered
    }

    /// The group for `spec`: the existing one with the same canonical text, or a new one.
    fn group_for(self: &Arc<Self>, spec: Arc<Spec>) -> Arc<Group> {
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(group) = groups.get(spec.canonical()).and_then(Weak::upgrade) {
            return group;
        }
        if groups.len() >= 64 && groups.len().is_power_of_two() {
            // Forget groups whose last member left, now and then.
            groups.retain(|_, g| g.strong_count() > 0);
        }
        let group = Arc::new(Group::new(
            NEXT_GROUP_ID.fetch_add(1, Ordering::Relaxed),
            Arc::clone(&spec),
        ));
        groups.insert(spec.canonical().into(), Arc::downgrade(&group));
        if let Some(rate) = &group.rate {
            rate::spawn_timer(
                Arc::downgrade(self),
                Arc::downgrade(&group),
                Arc::clone(&rate.wake),
            );
        }
        group
    }

    /// The view at one position: the latest record of each key `filter`
    /// takes whose key sorts after `after` (at most `take` per partition, the
    /// first in key order; unordered across partitions), and the next offset
    /// of each partition, read under the same partition locks as [`register`]
    /// reads its snapshot and `high`, so a resume from `high` continues exactly.
    ///
    /// With the source's `stored` view (pinned at this position), the
    /// partitions whose view lacks keys are left out and named in the
    /// answer, to be read from it ([`ViewPage::complete`]).
    ///
    /// [`register`]: Topic::register
    pub fn view_after(
        &self,
        filter: &Filter,
        after: Option<&str>,
        take: Option<usize>,
        stored: Option<Arc<dyn StoredView>>,
    ) -> ViewPage {
        let parts = self.partitions.read().expect("partitions lock");
        let (guards, high) = lock_all(&parts);
        let (from_store, _) = stored::lacking(&guards, stored.is_some());
        let records = collect_view(&guards, filter, after, take, &from_store);
        let stored = stored.filter(|_| !from_store.is_empty());
        ViewPage::new(records, high, stored, from_store)
    }

    /// Inserts a subscription and captures what it needs before going live.
    ///
    /// With a delivery spec the subscription joins the group of its spec, and
    /// its snapshot and ring replay hold only records the spec admits.
    pub fn register(self: &Arc<Self>, options: SubscribeOptions<'_>) -> Registration {
        let SubscribeOptions {
            filter,
            spec,
            outbox,
            cursor,
            snapshot,
            max_snapshot,
            backlog_limit,
            stored,
        } = options;
        let group = spec.map(|spec| self.group_for(spec));
        let parts = self.partitions.read().expect("partitions lock");
        let (guards, high) = lock_all(&parts);

        let mut replay = Vec::new();
        let mut skip_below = None;
        let foreign_cursor =
            cursor.is_some_and(|c| c.epoch != self.epoch || c.offsets.len() > parts.len());
        // Mid-snapshot resume: only the keys the client already holds are replayed.
        let upto = cursor
            .filter(|_| !foreign_cursor)
            .and_then(|c| c.snapshot_after.as_deref());
        if let (Some(cursor), false) = (cursor, foreign_cursor) {
            if (0..parts.len()).any(|p| cursor.offset(p) > high[p]) {
                skip_below = Some(
                    (0..parts.len())
                        .map(|p| cursor.offset(p))
                        .collect::<Box<[u64]>>(),
                );
            }
            let from: Vec<u64> = (0..parts.len()).map(|p| cursor.offset(p)).collect();
            let values = group.as_ref().is_some_and(|g| g.filters_values());
            replay = replays(&guards, &filter, &from, &high, values, upto);
        }

        let needs_snapshot = (snapshot && (cursor.is_none() || foreign_cursor || has_log(&replay)))
            || upto.is_some();
        // Partitions whose view lacks keys: read from the stored view if the
        // source pinned one, else the snapshot may be partial.
        let (from_store, lacking) = stored::lacking(&guards, needs_snapshot && stored.is_some());
        // A whole topic or a key prefix, without a value filter, from memory
        // alone: one clone of each partition's view (no copy per key).
        let shares = from_store.is_empty()
            && filter.keys.is_none()
            && group.as_ref().is_none_or(|g| g.spec.filter.is_none());
        let (snapshot, found) = match (needs_snapshot, shares) {
            (false, _) => (Taken::Collected(Vec::new()), 0),
            (true, true) => {
                let views = guards.iter().map(|g| g.view.clone()).collect();
                let let_go = self.view_bytes.let_go.load(Ordering::Relaxed);
                (Taken::Shared(views, let_go), 0)
            }
            (true, false) => {
                let collected = collect_snapshot(&guards, &filter, &from_store);
                let found = collected.len();
                (Taken::Collected(collected), found)
            }
        };
        // Evicted keys matter to a snapshot of all (or some) keys, or of named keys not all found.
        let evicted = lacking
            .filter(|_| needs_snapshot && filter.keys.as_ref().is_none_or(|k| found < k.len()));

        let sub = Arc::new(Sub {
            id: NEXT_SUB_ID.fetch_add(1, Ordering::Relaxed),
            filter,
            in_step_from: high
                .iter()
                .enumerate()
                .map(|(p, h)| {
                    let skip = skip_below.as_ref().and_then(|s| s.get(p).copied());
                    AtomicU64::new((*h).max(skip.unwrap_or(0)))
                })
                .collect(),
            group,
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
        // Outside the locks: parsing values and sorting must not hold up ingest.
        let (snapshot, partial, pending) = stored::prepare(
            snapshot,
            &sub,
            stored.as_ref(),
            from_store,
            max_snapshot,
            evicted,
        );
        telemetry::subscription_opened(&self.name);
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
            partial,
            pending,
            stored,
        }
    }

    /// Closes the connection queue of every subscription to this topic (used when
    /// a source replaces the topic, e.g. a Kafka topic that was recreated): the
    /// clients reconnect and resume with their cursor, whose epoch is then
    /// foreign, and are told `recovered:false`. Returns how many were closed.
    pub fn disconnect_all(&self) -> usize {
        let mut subs: Vec<Arc<Sub>> = self
            .index
            .all
            .read()
            .expect("index lock")
            .subs()
            .cloned()
            .collect();
        subs.extend(
            self.index
                .prefixed
                .read()
                .expect("index lock")
                .iter()
                .cloned(),
        );
        for entry in self.index.by_key.iter() {
            subs.extend(entry.value().subs().cloned());
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

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A subscription whose backlog overflowed while it caught up (a long
    /// snapshot under heavy writes) starts over its live part: under the
    /// partition locks its backlog is emptied and collects again from the
    /// frontier `high`, and what it dropped, `[from, high)`, is read again from
    /// the ring or the log like a resume. Nothing is lost and nothing waits
    /// beyond the backlog's bound. Returns `high` and the replays.
    pub fn resync(&self, sub: &Sub, from: &[u64]) -> (Vec<u64>, Vec<Replay>) {
        let parts = self.partitions.read().expect("partitions lock");
        let (guards, high) = lock_all(&parts);
        let from = sub.replay_from(from, high.len());
        let replay = replays(
            &guards,
            &sub.filter,
            &from,
            &high,
            sub.filters_values(),
            None,
        );
        sub.restart_backlog(&high);
        drop(guards);
        (high, replay)
    }

    /// Moves a streaming snapshot that sent every key through `after` onto the
    /// views as they are now: the new position, the replays that bring the
    /// keys it already sent from `from` (its position) to there, and the rest
    /// of it, from new clones. Its backlog restarts there, as in a resync. The
    /// client sees what a resume mid-snapshot shows (`snapshot_after`); the
    /// old clones, and what the views let go that only they held, are freed.
    /// `None` (it stays as it is) for a capped snapshot, when the partitions
    /// changed, or when a view lacks keys now (they would be left out).
    pub fn rebase(
        &self,
        sub: &Sub,
        snapshot: &Snapshot,
        after: &str,
        from: &[u64],
    ) -> Option<(Vec<u64>, Vec<Replay>, Snapshot)> {
        let parts = self.partitions.read().expect("partitions lock");
        let (guards, high) = lock_all(&parts);
        if high.len() != from.len() || guards.iter().any(|g| g.evicted.is_some()) {
            return None;
        }
        let views = guards.iter().map(|g| g.view.clone()).collect();
        let let_go = self.view_bytes.let_go.load(Ordering::Relaxed);
        let rest = snapshot.moved_to(views, let_go)?;
        let from = sub.replay_from(from, high.len());
        let filter = &sub.filter;
        let replay = replays(
            &guards,
            filter,
            &from,
            &high,
            sub.filters_values(),
            Some(after),
        );
        sub.restart_backlog(&high);
        drop(guards);
        Some((high, replay, rest))
    }

    /// Removes a subscription from the index; nothing more is queued for it.
    pub fn unregister(&self, sub: &Arc<Sub>) {
        self.index.remove(sub);
        telemetry::subscription_closed(&self.name);
    }
}

thread_local! {
    /// [`Topic::ingest`]'s cursor text, reused from record to record on the
    /// source's thread instead of allocated for each.
    static CURSOR_TEXT: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

fn has_log(replay: &[Replay]) -> bool {
    replay.iter().any(|r| matches!(r, Replay::Log { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TopicSettings {
        TopicSettings {
            ring_records: 4,
            view_max_keys: 2,
            view_max_bytes: 0,
        }
    }

    fn log(partition: u32, offset: u64, key: &str) -> LogRecord {
        LogRecord {
            trace: None,
            partition,
            offset,
            timestamp: 0,
            key: Some(key.into()),
            data: format!("{offset}").into(),
            extra: None,
            delete: false,
            position: None,
        }
    }

    fn drain(outbox: &Outbox) -> Vec<u64> {
        let mut out = Vec::new();
        outbox.drain_into(&mut out).unwrap();
        out.iter().map(|r| r.offset).collect()
    }

    #[tokio::test]
    async fn waiting_for_readiness_ends_when_marked_or_at_the_limit() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let limit = std::time::Duration::from_millis(50);
        let started = std::time::Instant::now();
        assert!(!topic.wait_ready(limit).await, "never marked");
        assert!(started.elapsed() >= limit);
        let marker = Arc::clone(&topic);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            marker.mark_ready();
        });
        assert!(topic.wait_ready(std::time::Duration::from_secs(30)).await);
        assert!(
            topic.wait_ready(std::time::Duration::ZERO).await,
            "already ready"
        );
    }

    #[test]
    fn fans_out_by_key_prefix_and_all_once_each() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let keyed = Arc::new(Outbox::new(1 << 20));
        let both = Arc::new(Outbox::new(1 << 20));
        let all = Arc::new(Outbox::new(1 << 20));
        let keys = |k: &[&str]| Some(k.iter().map(|s| Arc::from(*s)).collect());
        let filter = Filter::new(keys(&["a"]), None);
        topic
            .register(SubscribeOptions::plain(filter, keyed.clone()))
            .sub
            .go_live()
            .unwrap();
        let filter = Filter::new(keys(&["ab"]), Some("a".into()));
        topic
            .register(SubscribeOptions::plain(filter, both.clone()))
            .sub
            .go_live()
            .unwrap();
        topic
            .register(SubscribeOptions::plain(Filter::all(), all.clone()))
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
    fn one_encoding_is_shared_by_every_subscriber() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        for outbox in &outboxes {
            topic
                .register(SubscribeOptions::plain(Filter::all(), Arc::clone(outbox)))
                .sub
                .go_live()
                .unwrap();
        }
        topic.ingest(&log(0, 0, "a"));
        let got: Vec<Arc<Record>> = outboxes
            .iter()
            .map(|o| {
                let mut out = Vec::new();
                o.drain_into(&mut out).unwrap();
                out.pop().unwrap()
            })
            .collect();
        assert!(
            got.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
            "one record, shared"
        );
        assert!(
            Arc::ptr_eq(&got[0], &topic.latest("a").unwrap()),
            "the view holds the same bytes"
        );
    }

    #[test]
    fn a_record_that_left_the_ring_lets_go_of_its_grpc_envelope() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        topic.ingest(&log(0, 0, "a"));
        let built = std::cell::Cell::new(0);
        let envelope = |_: &Record| {
            built.set(built.get() + 1);
            bytes::Bytes::from_static(b"envelope")
        };
        let a = topic.latest("a").unwrap();
        a.grpc_envelope(envelope);
        a.grpc_envelope(envelope);
        assert_eq!(built.get(), 1, "built once while in the ring");
        // Four more records push "a" out of the ring (4); the view keeps it.
        for offset in 1..=4 {
            topic.ingest(&log(0, offset, "b"));
        }
        let still = topic.latest("a").unwrap();
        assert!(Arc::ptr_eq(&a, &still), "the view holds the same record");
        still.grpc_envelope(envelope);
        assert_eq!(built.get(), 2, "the envelope was let go, so built again");
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
        let reg = topic.register(SubscribeOptions {
            cursor: Some(&cursor),
            ..SubscribeOptions::plain(Filter::all(), out)
        });
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
        let reg = topic.register(SubscribeOptions {
            cursor: Some(&cursor),
            ..SubscribeOptions::plain(Filter::all(), out)
        });
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
    fn views_are_bounded_in_bytes_per_topic_and_eviction_without_a_store_is_partial() {
        let hub = Hub::new();
        let unbounded = TopicSettings {
            view_max_bytes: 0,
            ..settings()
        };
        // What one entry of these (same-sized) records counts for.
        let probe = hub.add_topic("t", 9, 2, unbounded);
        probe.ingest(&log(0, 0, "a"));
        let cost = probe.view_bytes() as usize;
        assert!(cost > 192);
        let topic = hub.add_topic(
            "t",
            9,
            2,
            TopicSettings {
                ring_records: 4,
                view_max_keys: 100,
                // Room for three entries across both partitions.
                view_max_bytes: cost * 3 + cost / 2,
            },
        );
        topic.ingest(&log(0, 0, "a"));
        topic.ingest(&log(1, 0, "b"));
        topic.ingest(&log(0, 1, "c"));
        assert_eq!(topic.view_bytes(), 3 * cost as u64);
        // A new value of a key replaces its cost.
        topic.ingest(&log(0, 2, "c"));
        assert_eq!(topic.view_bytes(), 3 * cost as u64);
        topic.ingest(&log(0, 3, "d"));
        assert!(
            topic.latest("a").is_none(),
            "the oldest key of the written partition"
        );
        assert!(
            topic.latest("b").is_some(),
            "the other partition keeps its keys"
        );
        assert_eq!(topic.view_bytes(), 3 * cost as u64);
        topic.ingest(&LogRecord {
            delete: true,
            ..log(1, 1, "b")
        });
        assert_eq!(
            topic.view_bytes(),
            2 * cost as u64,
            "a delete frees its bytes"
        );
        // No stored view (Kafka, Kinesis): the snapshot says why it lacks keys.
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions {
            snapshot: true,
            max_snapshot: 0,
            ..SubscribeOptions::plain(Filter::all(), out)
        });
        assert_eq!(reg.snapshot.len(), 2);
        assert_eq!(
            reg.partial,
            Some(Partial {
                reason: "view_max_bytes",
                skipped: 0
            })
        );
        assert!(!reg.needs_store());
        // Keys evicted for `view_max_keys` are told as such.
        let hub = Hub::new();
        let topic = hub.add_topic("k", 9, 1, settings());
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            topic.ingest(&log(0, i as u64, key));
        }
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions {
            snapshot: true,
            ..SubscribeOptions::plain(Filter::all(), out)
        });
        assert_eq!(reg.partial.map(|p| p.reason), Some("view_max_keys"));
    }

    #[test]
    fn catch_up_backlog_then_live_in_order() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        topic.ingest(&log(0, 0, "a"));
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions {
            snapshot: true,
            ..SubscribeOptions::plain(Filter::all(), out.clone())
        });
        assert_eq!(reg.snapshot.len(), 1);
        assert_eq!(reg.high, vec![1]);
        topic.ingest(&log(0, 1, "a"));
        assert!(drain(&out).is_empty(), "held back until live");
        let backlog = reg.sub.go_live().unwrap().unwrap();
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
        let reg = topic.register(SubscribeOptions {
            cursor: Some(&ahead),
            ..SubscribeOptions::plain(Filter::all(), out.clone())
        });
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
            .register(SubscribeOptions::plain(Filter::all(), before.clone()))
            .sub
            .go_live()
            .unwrap();
        assert_eq!(hub.remove_topic(&topic), 1);
        assert!(hub.topic("t").is_err(), "no longer listed");
        assert!(hub.topic_names().is_empty());
        assert_eq!(before.closed_reason(), Some(CloseReason::TopicReset));
        // A client that looked the topic up just before the removal.
        let late = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions::plain(Filter::all(), late.clone()));
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
    fn a_delete_leaves_the_view_but_is_delivered_and_replayed() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let live = Arc::new(Outbox::new(1 << 20));
        topic
            .register(SubscribeOptions::plain(Filter::all(), live.clone()))
            .sub
            .go_live()
            .unwrap();
        topic.ingest(&log(0, 0, "a"));
        topic.ingest(&log(0, 1, "b"));
        topic.ingest(&LogRecord {
            delete: true,
            position: None,
            ..log(0, 2, "a")
        });
        // A second delete of a key already gone (a tombstone after a delete event).
        topic.ingest(&LogRecord {
            delete: true,
            position: None,
            ..log(0, 3, "a")
        });
        assert_eq!(
            drain(&live),
            vec![0, 1, 2, 3],
            "live subscribers get the deletes"
        );
        assert!(topic.latest("a").is_none(), "a deleted key leaves the view");
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions {
            snapshot: true,
            ..SubscribeOptions::plain(Filter::all(), out.clone())
        });
        assert_eq!(
            reg.snapshot.keys(),
            vec!["b"],
            "the snapshot lists only keys that exist"
        );
        let keyed = Filter::new(Some([Arc::from("a")].into_iter().collect()), None);
        let reg = topic.register(SubscribeOptions {
            snapshot: true,
            ..SubscribeOptions::plain(keyed, out.clone())
        });
        assert!(reg.snapshot.is_empty());
        // A cursor from before the delete replays it from the ring.
        let reg = topic.register(SubscribeOptions {
            cursor: Some(&Cursor::new(9, vec![1])),
            snapshot: true,
            ..SubscribeOptions::plain(Filter::all(), out)
        });
        match &reg.replay[0] {
            Replay::Ring { records, .. } => {
                assert_eq!(
                    records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    vec![1, 2, 3]
                )
            }
            Replay::Log { .. } => panic!("ring covers offset 1"),
        }
        // The key comes back with its next value; the view order stays consistent.
        topic.ingest(&log(0, 4, "a"));
        assert_eq!(topic.latest("a").unwrap().offset, 4);
        topic.ingest(&log(0, 5, "c"));
        topic.ingest(&log(0, 6, "d"));
        assert!(
            topic.latest("b").is_none(),
            "eviction still takes the oldest key"
        );
        assert!(topic.latest("a").is_none());
    }

    fn spec(filter: serde_json::Value) -> Arc<Spec> {
        let f = crate::shaping::ValueFilter::compile(&filter, &Default::default()).unwrap();
        Arc::new(Spec::new(Some(f), None, None, false).unwrap())
    }

    #[test]
    fn a_filter_takes_a_record_as_it_matches_its_key() {
        let record = |key: Option<&str>| {
            Record::encode(
                "t",
                &LogRecord {
                    key: key.map(Into::into),
                    ..log(0, 0, "")
                },
                "c",
                Framing::Normal,
            )
        };
        let keys = |k: &[&str]| Some(k.iter().map(|s| Arc::from(*s)).collect());
        let filters = [
            Filter::new(keys(&["a", "bb"]), None),
            Filter::new(None, Some("b".into())),
            Filter::new(keys(&["a"]), Some("b".into())),
            Filter::all(),
        ];
        for key in [Some("a"), Some("bb"), Some("b"), Some("c"), Some(""), None] {
            let r = record(key);
            for f in &filters {
                assert_eq!(f.takes(&r), f.matches(key), "{key:?} {f:?}");
            }
        }
    }

    #[test]
    fn a_value_filtered_resume_looks_back_at_each_keys_latest_record_only() {
        let hub = Hub::new();
        let topic = hub.add_topic(
            "t",
            9,
            1,
            TopicSettings {
                ring_records: 16,
                ..settings()
            },
        );
        let keys = |k: &[&str]| Some(k.iter().map(|s| Arc::from(*s)).collect());
        // a b a c b a | from 6: d a
        for (offset, key) in ["a", "b", "a", "c", "b", "a", "d", "a"].iter().enumerate() {
            topic.ingest(&log(0, offset as u64, key));
        }
        let cursor = Cursor::new(9, vec![6]);
        let replay_of = |filter: Filter, spec: Option<Arc<Spec>>| {
            let reg = topic.register(SubscribeOptions {
                spec,
                cursor: Some(&cursor),
                ..SubscribeOptions::plain(filter, Arc::new(Outbox::new(1 << 20)))
            });
            match reg.replay.into_iter().next() {
                Some(Replay::Ring {
                    records, lookback, ..
                }) => (
                    records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    lookback.iter().map(|r| r.offset).collect::<Vec<_>>(),
                ),
                _ => panic!("a ring replay"),
            }
        };
        let ab = || Filter::new(keys(&["a", "b"]), None);
        let filtered = || Some(spec(serde_json::json!({"n": {"gte": 1}})));
        // a's latest before 6 is 5, b's is 4, in ring order.
        assert_eq!(replay_of(ab(), filtered()), (vec![7], vec![4, 5]));
        // Every key of the topic: the latest of each.
        assert_eq!(
            replay_of(Filter::all(), filtered()),
            (vec![6, 7], vec![3, 4, 5])
        );
        // No value filter (or no spec): no look back at all.
        assert_eq!(replay_of(ab(), None), (vec![7], vec![]));
        let fields = crate::shaping::Fields::new(&["n".to_owned()], 10).unwrap();
        let projected = Arc::new(Spec::new(None, Some(fields), None, false).unwrap());
        assert_eq!(replay_of(ab(), Some(projected)), (vec![7], vec![]));
    }

    #[test]
    fn a_group_is_evaluated_once_per_record_and_shares_the_bytes() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let keys = |k: &[&str]| Some(k.iter().map(|s| Arc::from(*s)).collect());
        let register = |filter: Filter, spec: Arc<Spec>| {
            let out = Arc::new(Outbox::new(1 << 20));
            let reg = topic.register(SubscribeOptions {
                spec: Some(spec),
                ..SubscribeOptions::plain(filter, out.clone())
            });
            reg.sub.go_live().unwrap();
            (out, reg.sub)
        };
        // The same filter written two ways, in the all-keys list, a key's
        // list and the prefix list: one group.
        let (all, s1) = register(Filter::all(), spec(serde_json::json!({"n": {"gte": 1}})));
        let (keyed, s2) = register(
            Filter::new(keys(&["a"]), None),
            spec(serde_json::json!({"and": [{"n": {"gte": 1}}]})),
        );
        let (prefixed, s3) = register(
            Filter::new(None, Some("a".into())),
            spec(serde_json::json!({"n": {"gte": 1}})),
        );
        let (other, s4) = register(Filter::all(), spec(serde_json::json!({"n": {"lt": 1}})));
        assert!(Arc::ptr_eq(
            s1.group.as_ref().unwrap(),
            s2.group.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            s1.group.as_ref().unwrap(),
            s3.group.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(
            s1.group.as_ref().unwrap(),
            s4.group.as_ref().unwrap()
        ));
        group::EVALUATIONS.with(|n| n.set(0));
        let ingest = |offset: u64, n: i64| {
            topic.ingest(&LogRecord {
                data: format!("{{\"n\":{n}}}").into(),
                ..log(0, offset, "a")
            })
        };
        assert_eq!(ingest(0, 5), 3);
        // 5 -> 0: the first group's members get one shared `leave`, the other an `enter`.
        assert_eq!(ingest(1, 0), 4);
        assert_eq!(
            group::EVALUATIONS.with(|n| n.get()),
            4,
            "two groups, two records: four evaluations for eight deliveries"
        );
        let mut got = Vec::new();
        for out in [&all, &keyed, &prefixed] {
            let mut batch = Vec::new();
            out.drain_into(&mut batch).unwrap();
            assert_eq!(batch.len(), 2);
            got.push(batch);
        }
        for (a, (b, c)) in got[0].iter().zip(got[1].iter().zip(&got[2])) {
            assert!(Arc::ptr_eq(a, b) && Arc::ptr_eq(a, c));
        }
        let first = Arc::clone(
            &topic.partitions.read().unwrap()[0]
                .state
                .lock()
                .unwrap()
                .ring[0],
        );
        assert!(
            Arc::ptr_eq(&got[0][0], &first),
            "the ingest encoding itself"
        );
        assert!(got[0][1].ws.as_str().contains("\"op\":\"leave\""));
        let mut other_got = Vec::new();
        other.drain_into(&mut other_got).unwrap();
        assert_eq!(other_got.len(), 1);
        assert!(other_got[0].ws.as_str().contains("\"op\":\"enter\""));
        assert_eq!(topic.groups.lock().unwrap().len(), 2);
    }

    #[test]
    fn groups_with_one_projection_share_its_encoding() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 1, settings());
        let fields = || crate::shaping::Fields::new(&["a".to_owned()], 10).unwrap();
        let compile = |v: serde_json::Value| {
            crate::shaping::ValueFilter::compile(&v, &Default::default()).unwrap()
        };
        let specs = [
            Spec::new(
                Some(compile(serde_json::json!({"b": 1}))),
                Some(fields()),
                None,
                false,
            ),
            Spec::new(
                Some(compile(serde_json::json!({"b": {"lt": 5}}))),
                Some(fields()),
                None,
                false,
            ),
            Spec::new(None, Some(fields()), None, false),
        ];
        let mut outs = Vec::new();
        let mut subs = Vec::new();
        for spec in specs {
            let out = Arc::new(Outbox::new(1 << 20));
            let reg = topic.register(SubscribeOptions {
                spec: Some(Arc::new(spec.unwrap())),
                ..SubscribeOptions::plain(Filter::all(), out.clone())
            });
            reg.sub.go_live().unwrap();
            subs.push(reg.sub);
            outs.push(out);
        }
        topic.ingest(&LogRecord {
            data: "{\"a\":{\"x\":1},\"b\":1,\"c\":2}".into(),
            ..log(0, 0, "k")
        });
        let got: Vec<Arc<Record>> = outs
            .iter()
            .map(|o| {
                let mut batch = Vec::new();
                o.drain_into(&mut batch).unwrap();
                batch.pop().unwrap()
            })
            .collect();
        assert_eq!(got[0].data(), "{\"a\":{\"x\":1}}");
        assert!(Arc::ptr_eq(&got[0], &got[1]) && Arc::ptr_eq(&got[0], &got[2]));
    }

    #[test]
    fn cursor_carries_frontier_of_other_partitions() {
        let hub = Hub::new();
        let topic = hub.add_topic("t", 9, 2, settings());
        topic.ingest(&log(0, 0, "a"));
        topic.ingest(&log(1, 0, "b"));
        topic.ingest(&log(0, 1, "a"));
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = topic.register(SubscribeOptions::plain(Filter::all(), out));
        assert_eq!(reg.high, vec![2, 1]);
        let rec = topic.latest("a").unwrap();
        assert_eq!(Cursor::decode(rec.cursor()).unwrap().offsets, vec![2, 1]);
    }

    fn shard_log(partition: u32, ordinal: u64, seq: &str, key: &str) -> LogRecord {
        LogRecord {
            position: Some(seq.into()),
            ..log(partition, ordinal, key)
        }
    }

    fn seq(n: u64) -> String {
        // Wider than 64 bits, like a Kinesis sequence number.
        format!("4959033827149025660855969253836157109592157598913{n:07}")
    }

    #[test]
    fn shard_topics_resume_by_the_sources_positions_on_any_node() {
        // Two nodes: A read the shard from its start, B started later and
        // numbers the same records differently (its ordinal 0 is A's 2).
        let hub_a = Hub::new();
        let a = hub_a.add_shard_topic("s", 5, 2, settings(), 100);
        let hub_b = Hub::new();
        let b = hub_b.add_shard_topic("s", 5, 2, settings(), 100);
        for i in 0..6u64 {
            a.ingest(&shard_log(0, i, &seq(i * 10), "a"));
            if i >= 2 {
                b.ingest(&shard_log(0, i - 2, &seq(i * 10), "a"));
            }
        }
        a.ingest(&shard_log(1, 0, &seq(7), "b"));
        b.ingest(&shard_log(1, 0, &seq(7), "b"));
        let rec = a.latest("a").unwrap();
        assert_eq!(rec.offset, 5, "the hub's offset is A's ordinal");
        assert!(
            rec.ws
                .as_str()
                .contains(&format!("\"offset\":\"{}\"", seq(50))),
            "clients see the sequence number"
        );
        // A client that saw A's record 3 (seq 30).
        let made_by_a = a.encode_cursor(&[4, 1]);
        let cursor = Cursor::decode(&made_by_a).unwrap();
        assert_eq!(a.resolve_cursor(&cursor).unwrap().offsets, vec![4, 1]);
        assert_eq!(
            b.resolve_cursor(&cursor).unwrap().offsets,
            vec![2, 1],
            "B's own ordinals"
        );
        // The same position reads back as the same cursor text on both nodes.
        assert_eq!(b.encode_cursor(&[2, 1]), made_by_a);
        // Ahead of B, older than B, foreign kinds.
        let ahead = Cursor::with_shards(
            5,
            vec![ShardPos::After(decimal_to_position(&seq(60)).unwrap())],
        );
        assert_eq!(b.resolve_cursor(&ahead), Err(ResolveError::Ahead));
        let older = Cursor::with_shards(
            5,
            vec![ShardPos::After(decimal_to_position(&seq(10)).unwrap())],
        );
        assert_eq!(b.resolve_cursor(&older), Err(ResolveError::Retention));
        assert_eq!(a.resolve_cursor(&older).unwrap().offsets, vec![2, 0]);
        assert_eq!(
            b.resolve_cursor(&Cursor::new(5, vec![1, 1])),
            Err(ResolveError::Foreign)
        );
        let kafka = hub_a.add_topic("k", 5, 1, settings());
        assert_eq!(kafka.resolve_cursor(&ahead), Err(ResolveError::Foreign));
        assert_eq!(
            kafka.resolve_cursor(&Cursor::new(5, vec![3])).unwrap(),
            Cursor::new(5, vec![3])
        );
        // A cursor naming a shard this node has not seen: retry, never a gap.
        let three = Cursor::with_shards(5, vec![ShardPos::Start, ShardPos::Start, ShardPos::Start]);
        assert_eq!(b.resolve_cursor(&three), Err(ResolveError::Ahead));
    }

    #[test]
    fn closed_parents_are_marked_in_cursors_and_resume_into_their_children() {
        let hub = Hub::new();
        let t = hub.add_shard_topic("s", 5, 1, settings(), 100);
        t.ingest(&shard_log(0, 0, &seq(1), "a"));
        let mid = Cursor::decode(&t.encode_cursor(&t.frontier())).unwrap();
        // Before the parent is closed, a client claiming it closed is ahead.
        let closed = Cursor::with_shards(5, vec![ShardPos::Closed]);
        assert_eq!(t.resolve_cursor(&closed), Err(ResolveError::Ahead));
        t.ingest(&shard_log(0, 1, &seq(2), "a"));
        t.close_partition(0);
        // A child (shard 1) appears and is read after the parent.
        t.ensure_partitions(2);
        t.ingest(&shard_log(1, 0, &seq(3), "c"));
        let rec = t.latest("c").unwrap();
        let carried = Cursor::decode(rec.cursor()).unwrap();
        assert_eq!(carried.shards.as_ref().unwrap()[0], ShardPos::Closed);
        assert_eq!(t.resolve_cursor(&carried).unwrap().offsets, vec![2, 1]);
        // The cursor from the middle of the parent: the rest of it, then the child.
        let from_mid = t.resolve_cursor(&mid).unwrap();
        assert_eq!(from_mid.offsets, vec![1, 0]);
        let out = Arc::new(Outbox::new(1 << 20));
        let reg = t.register(SubscribeOptions {
            cursor: Some(&from_mid),
            ..SubscribeOptions::plain(Filter::all(), out)
        });
        let replayed: Vec<(u32, u64)> = reg
            .replay
            .iter()
            .flat_map(|r| match r {
                Replay::Ring { records, .. } => records
                    .iter()
                    .map(|r| (r.partition, r.offset))
                    .collect::<Vec<_>>(),
                Replay::Log { .. } => panic!("the ring covers it"),
            })
            .collect();
        assert_eq!(
            replayed,
            vec![(0, 1), (1, 0)],
            "parent first, then the child"
        );
        assert_eq!(t.resolve_cursor(&closed).unwrap().offsets, vec![2, 0]);
    }
}
