//! One partition's history on this node: the ring of recent records and the latest value per key (the view), behind one lock.
//!
//! The view keeps at most `view_max_keys` keys, evicting the key updated
//! longest ago; a delete or tombstone removes its key. Snapshots are read from
//! it under the partition locks a registration holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use super::sub::Filter;
use crate::record::Record;

pub(super) struct Partition {
    pub(super) id: u32,
    /// Next offset to ingest; written under `state`'s lock after fan-out, read without it.
    pub(super) frontier: AtomicU64,
    pub(super) state: Mutex<PartitionState>,
}

#[derive(Default)]
pub(super) struct PartitionState {
    pub(super) next_offset: u64,
    pub(super) ring: VecDeque<Arc<Record>>,
    pub(super) view: HashMap<Arc<str>, Arc<Record>>,
    /// Offset -> key of every view entry, oldest first, for eviction and ordered snapshots.
    pub(super) view_order: BTreeMap<u64, Arc<str>>,
}

pub(super) fn update_view(
    state: &mut PartitionState,
    key: &Arc<str>,
    record: &Arc<Record>,
    max_keys: usize,
) {
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

pub(super) fn remove_from_view(state: &mut PartitionState, key: &str) {
    if let Some(old) = state.view.remove(key) {
        state.view_order.remove(&old.offset);
    }
}

pub(super) fn collect_snapshot(
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
