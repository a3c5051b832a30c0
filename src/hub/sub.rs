//! A subscription: its key filter, the outbox it feeds, and the backlog that holds live records while it catches up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::group::{Group, Outcome};
use crate::cursor::Cursor;
use crate::outbox::{CloseReason, Outbox};
use crate::record::{self, Framing, Record};
use crate::shaping::Spec;

/// A subscription's keys. Matched against every record a resume reads from
/// the ring, under the partition locks: foldhash (seeded per process, so
/// still no chosen-collision flood) instead of SipHash, which took a third of
/// a node's CPU in a reconnect storm.
pub type KeySet = HashSet<Arc<str>, foldhash::fast::RandomState>;

/// Which keys a subscription receives.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub keys: Option<KeySet>,
    pub prefix: Option<Box<str>>,
    /// The keys' [`record::key_hash`]es, sorted, made on first use.
    hashes: OnceLock<Box<[u32]>>,
}

impl Filter {
    #[cfg(test)]
    pub fn all() -> Self {
        Self::default()
    }

    pub fn is_all(&self) -> bool {
        self.keys.is_none() && self.prefix.is_none()
    }

    /// A filter of `keys` and `prefix` (either may be absent).
    pub fn new(keys: Option<KeySet>, prefix: Option<Box<str>>) -> Self {
        Self {
            keys,
            prefix,
            hashes: OnceLock::new(),
        }
    }

    /// [`Filter::matches`] for an encoded record: with named keys alone, a
    /// record whose kept key hash is none of theirs is left out without
    /// reading its key.
    pub fn takes(&self, record: &Record) -> bool {
        let (Some(keys), Some(hashes)) = (&self.keys, self.key_hashes()) else {
            return self.matches(record.key.as_deref());
        };
        hashes.binary_search(&record.key_hash()).is_ok()
            && record.key.as_deref().is_some_and(|k| keys.contains(k))
    }

    /// With named keys alone (no prefix): their [`record::key_hash`]es,
    /// sorted. A record whose kept hash is not among them is not taken.
    pub(crate) fn key_hashes(&self) -> Option<&[u32]> {
        let (Some(keys), None) = (&self.keys, &self.prefix) else {
            return None;
        };
        let hashes = self.hashes.get_or_init(|| {
            let mut h: Vec<u32> = keys.iter().map(|k| record::key_hash(k)).collect();
            h.sort_unstable();
            h.into()
        });
        Some(hashes)
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
    /// The group of subscriptions sharing this one's delivery spec; `None`: plain.
    pub(super) group: Option<Arc<Group>>,
    /// With `delta`: per partition, the offset from which this subscription
    /// received every record of the group live; a patch whose base is older
    /// would apply to a value it may not hold, so it gets whole data.
    /// Atomics only because a [resync](super::Topic::resync) moves it (under
    /// the partition locks, like every read of it).
    pub(super) in_step_from: Box<[AtomicU64]>,
    pub(super) topic: Arc<str>,
    pub(super) epoch: u64,
    pub(super) outbox: Arc<Outbox>,
    /// False while the subscription catches up; live records then wait in `backlog`.
    pub(super) live: AtomicBool,
    pub(super) backlog: Mutex<Backlog>,
    pub(super) backlog_limit: usize,
    /// Set when the client's cursor is ahead of this node (another node had read
    /// further): records below these offsets were already delivered.
    pub(super) skip_below: Option<Box<[u64]>>,
    /// Set once this node's frontier has passed `skip_below` everywhere: from
    /// then on records carry cursors at least as far as the client's.
    pub(super) ahead_resolved: AtomicBool,
}

#[derive(Default)]
pub(super) struct Backlog {
    items: Vec<Arc<Record>>,
    bytes: usize,
    overflowed: bool,
}

pub(super) static NEXT_SUB_ID: AtomicU64 = AtomicU64::new(1);

impl Sub {
    /// The delivery spec this subscription shares with its group, if any.
    pub fn spec(&self) -> Option<&Arc<Spec>> {
        self.group.as_ref().map(|g| &g.spec)
    }

    /// See [`Group::filters_values`].
    pub(super) fn filters_values(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.filters_values())
    }

    /// Queues what the group sends for a record: the patch when this
    /// subscription holds its base value, else the whole record.
    pub(super) fn deliver_outcome(&self, out: &Outcome) -> bool {
        match &out.patch {
            Some((patch, base))
                if self
                    .in_step_from
                    .get(patch.partition as usize)
                    .is_some_and(|from| *base >= from.load(Ordering::Relaxed)) =>
            {
                self.deliver(patch)
            }
            _ => self.deliver(&out.whole),
        }
    }

    /// Queues a live record for this subscription. Called under the partition lock.
    pub(super) fn deliver(&self, record: &Arc<Record>) -> bool {
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
            // Not a disconnect: the catch-up reads these records again from
            // the ring or the log (`Topic::resync`) once it gets there.
            backlog.overflowed = true;
            backlog.items = Vec::new();
            return false;
        }
        backlog.items.push(Arc::clone(record));
        true
    }

    /// Ends catch-up: returns the live records that arrived meanwhile, and from
    /// now on records go straight to the outbox. `Ok(None)` if the backlog
    /// overflowed: [resync](super::Topic::resync) first.
    pub fn go_live(&self) -> Result<Option<Vec<Arc<Record>>>, CloseReason> {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        if let Some(reason) = self.outbox.closed_reason() {
            return Err(reason);
        }
        if backlog.overflowed {
            return Ok(None);
        }
        let items = std::mem::take(&mut backlog.items);
        backlog.bytes = 0;
        self.live.store(true, Ordering::Release);
        Ok(Some(items))
    }

    /// Where a replay of each of `partitions` starts for a subscription at
    /// `from`: never below the positions its cursor was ahead of.
    pub(super) fn replay_from(&self, from: &[u64], partitions: usize) -> Vec<u64> {
        (0..partitions)
            .map(|p| {
                let skip = self.skip_below.as_ref().and_then(|s| s.get(p).copied());
                from.get(p).copied().unwrap_or(0).max(skip.unwrap_or(0))
            })
            .collect()
    }

    /// The backlog collects again from `high` (called under every partition
    /// lock, so each record is either before `high` or in the backlog).
    pub(super) fn restart_backlog(&self, high: &[u64]) {
        let mut backlog = self.backlog.lock().expect("backlog lock");
        *backlog = Backlog::default();
        for (slot, h) in self.in_step_from.iter().zip(high) {
            slot.fetch_max(*h, Ordering::Relaxed);
        }
    }
}
