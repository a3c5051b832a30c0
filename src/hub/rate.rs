//! Conflation for groups with `max_rate`: per key at most that many records a second, the latest always delivered, with one timer task per group.
//!
//! The first record of a key goes out at once; one arriving sooner than
//! `1 / max_rate` after the last one sent waits as the key's pending record,
//! and a newer one replaces it (the older is conflated away). The group's
//! timer sends each pending record when its key is due. Cursors stay exact:
//! while records wait, every cursor the group hands out is capped below the
//! oldest waiting record of each partition, so a resume from it never skips
//! a value the client has not received; a flushed record carries the
//! frontier at its sending (capped the same way), which covers what was
//! conflated away before it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::group::Group;
use super::Topic;
use crate::cursor::Cursor;
use crate::record::{Framing, Record};

pub(crate) struct Rate {
    interval: Duration,
    state: Mutex<RateState>,
    /// Wakes the group's timer: a record began to wait, or the group is gone.
    pub(super) wake: Arc<Notify>,
}

#[derive(Default)]
struct RateState {
    keys: HashMap<Arc<str>, KeyRate>,
    /// (partition, offset) of every waiting record: cursors stay below them.
    waiting: BTreeSet<(u32, u64)>,
}

#[derive(Default)]
struct KeyRate {
    last_sent: Option<Instant>,
    pending: Option<Arc<Record>>,
}

/// (partition, offset) of the records still waiting.
type Waiting = BTreeSet<(u32, u64)>;

/// Keys remembered before idle ones (sent long enough ago, nothing waiting) are swept.
const SWEEP_ABOVE: usize = 4096;

impl Rate {
    pub(super) fn new(max_rate: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / max_rate),
            state: Mutex::new(RateState::default()),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Called once per record for the group: the record to send now (its
    /// cursor capped while others wait), or `None` when it waits.
    pub(super) fn admit(
        &self,
        topic: &str,
        epoch: u64,
        record: Arc<Record>,
    ) -> Option<Arc<Record>> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("rate lock");
        if let Some(key) = &record.key {
            let entry = state.keys.entry(Arc::clone(key)).or_default();
            let due = entry.last_sent.is_none_or(|t| now >= t + self.interval);
            if entry.pending.is_some() || !due {
                if let Some(old) = entry.pending.replace(Arc::clone(&record)) {
                    state.waiting.remove(&(old.partition, old.offset));
                } else {
                    // A key began to wait: the timer must know when it is due.
                    self.wake.notify_one();
                }
                state.waiting.insert((record.partition, record.offset));
                return None;
            }
            entry.last_sent = Some(now);
        }
        let capped = cap(&state.waiting, record.cursor());
        drop(state);
        Some(match capped {
            Some(cursor) => Arc::new(reframed(topic, epoch, &record, cursor)),
            None => record,
        })
    }

    /// Takes the waiting records that are due; returns them with the cursor
    /// limits of what still waits, and when the next one is due.
    fn take_due(&self) -> (Vec<Arc<Record>>, Waiting, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("rate lock");
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let interval = self.interval;
        let RateState { keys, waiting } = &mut *state;
        for entry in keys.values_mut() {
            if entry.pending.is_none() {
                continue;
            }
            let at = entry.last_sent.map_or(now, |t| t + interval);
            if at <= now {
                let record = entry.pending.take().expect("checked");
                waiting.remove(&(record.partition, record.offset));
                entry.last_sent = Some(now);
                due.push(record);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if keys.len() > SWEEP_ABOVE {
            keys.retain(|_, e| {
                e.pending.is_some() || e.last_sent.is_some_and(|t| now < t + interval)
            });
        }
        // Offset order within a partition, as they were ingested.
        due.sort_by_key(|r| (r.partition, r.offset));
        (due, waiting.clone(), next)
    }
}

/// The cursor `cursor` lowered below the oldest waiting record of each
/// partition; `None` when nothing needs lowering.
fn cap(waiting: &BTreeSet<(u32, u64)>, cursor: &str) -> Option<Vec<u64>> {
    if waiting.is_empty() {
        return None;
    }
    let mut offsets = Cursor::decode(cursor).ok()?.offsets;
    lower(&mut offsets, waiting).then_some(offsets)
}

/// Lowers `offsets` to the oldest waiting offset per partition; true if any moved.
fn lower(offsets: &mut [u64], waiting: &BTreeSet<(u32, u64)>) -> bool {
    let mut moved = false;
    let mut from = (0u32, 0u64);
    while let Some(&(p, o)) = waiting.range(from..).next() {
        if let Some(slot) = offsets.get_mut(p as usize) {
            if o < *slot {
                *slot = o;
                moved = true;
            }
        }
        let Some(next) = p.checked_add(1) else { break };
        from = (next, 0);
    }
    moved
}

fn reframed(topic: &str, epoch: u64, record: &Record, offsets: Vec<u64>) -> Record {
    let cursor = Cursor::new(epoch, offsets).encode();
    record.reframe(topic, &cursor, Framing::Normal)
}

/// The group's one timer: sends waiting records when their keys are due.
/// Ends when the group or the topic is gone.
pub(super) fn spawn_timer(topic: Weak<Topic>, group: Weak<Group>, wake: Arc<Notify>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime (a unit test driving the hub by hand): nothing is sent later.
        return;
    };
    runtime.spawn(async move {
        let mut next: Option<Instant> = None;
        loop {
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
            let (Some(topic), Some(group)) = (topic.upgrade(), group.upgrade()) else {
                return;
            };
            let Some(rate) = &group.rate else { return };
            let (due, waiting, due_next) = rate.take_due();
            next = due_next;
            if due.is_empty() {
                continue;
            }
            // Everything below the frontier was dispatched: delivered, waiting
            // (then below a cap) or left out by the filter.
            let frontier = topic.frontier();
            for record in due {
                let mut offsets = frontier.clone();
                lower(&mut offsets, &waiting);
                let record = Arc::new(reframed(&topic.name, topic.epoch, &record, offsets));
                let out = group.finish(&topic.name, record);
                topic.index.dispatch_group(&out, &group);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_lower_each_partition_to_its_oldest_waiting_record() {
        let waiting: BTreeSet<(u32, u64)> = [(0, 7), (0, 9), (2, 3)].into_iter().collect();
        let mut offsets = vec![10, 5, 10];
        assert!(lower(&mut offsets, &waiting));
        assert_eq!(offsets, vec![7, 5, 3]);
        let mut offsets = vec![2, 2, 2];
        assert!(!lower(&mut offsets, &waiting));
    }
}
