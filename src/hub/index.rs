//! The subscription index of one topic: which subscriptions a record with a given key goes to.

use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::sub::Sub;
use crate::record::Record;

/// The subscription index of one topic: exact keys in a sharded map, plus the
/// (usually few) subscriptions to all keys or to key prefixes.
#[derive(Default)]
pub(super) struct SubIndex {
    pub(super) by_key: DashMap<Arc<str>, Vec<Arc<Sub>>>,
    pub(super) all: RwLock<Vec<Arc<Sub>>>,
    pub(super) prefixed: RwLock<Vec<Arc<Sub>>>,
}

impl SubIndex {
    pub(super) fn insert(&self, sub: &Arc<Sub>) {
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

    pub(super) fn remove(&self, sub: &Arc<Sub>) {
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
    pub(super) fn dispatch(&self, record: &Arc<Record>) -> usize {
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
