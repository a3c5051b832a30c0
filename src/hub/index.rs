//! The subscription index of one topic: which subscriptions a record with a given key goes to.

use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::group::{Dispatch, Group, Outcome};
use super::sub::Sub;
use crate::record::Record;

/// The subscription index of one topic: exact keys in a sharded map, plus the
/// (usually few) subscriptions to all keys or to key prefixes.
#[derive(Default)]
pub(super) struct SubIndex {
    pub(super) by_key: DashMap<Arc<str>, Bucket>,
    pub(super) all: RwLock<Bucket>,
    pub(super) prefixed: RwLock<Vec<Arc<Sub>>>,
}

/// The subscriptions of one list: plain ones one by one, grouped ones by
/// group, so a group's outcome is looked up once for all its members here.
#[derive(Default)]
pub(super) struct Bucket {
    plain: Vec<Arc<Sub>>,
    grouped: Vec<(Arc<Group>, Vec<Arc<Sub>>)>,
}

impl Bucket {
    fn insert(&mut self, sub: &Arc<Sub>) {
        match &sub.group {
            None => self.plain.push(Arc::clone(sub)),
            Some(group) => match self.grouped.iter_mut().find(|(g, _)| g.id == group.id) {
                Some((_, members)) => members.push(Arc::clone(sub)),
                None => self
                    .grouped
                    .push((Arc::clone(group), vec![Arc::clone(sub)])),
            },
        }
    }

    fn remove(&mut self, sub: &Sub) {
        match &sub.group {
            None => self.plain.retain(|s| s.id != sub.id),
            Some(group) => {
                if let Some(i) = self.grouped.iter().position(|(g, _)| g.id == group.id) {
                    self.grouped[i].1.retain(|s| s.id != sub.id);
                    if self.grouped[i].1.is_empty() {
                        self.grouped.swap_remove(i);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.grouped.is_empty()
    }

    pub(super) fn subs(&self) -> impl Iterator<Item = &Arc<Sub>> {
        self.plain
            .iter()
            .chain(self.grouped.iter().flat_map(|(_, members)| members.iter()))
    }

    fn dispatch(&self, dispatch: &mut Dispatch<'_>) -> usize {
        let record = dispatch.record();
        let mut delivered = 0;
        for sub in &self.plain {
            delivered += usize::from(sub.deliver(record));
        }
        for (group, members) in &self.grouped {
            if let Some(out) = dispatch.outcome(group) {
                for sub in members {
                    delivered += usize::from(sub.deliver_outcome(&out));
                }
            }
        }
        delivered
    }
}

impl SubIndex {
    /// Pushes `record` (already shaped for `group`) to the members of `group`
    /// whose keys it matches, once each: a conflated record sent by the timer.
    pub(super) fn dispatch_group(&self, out: &Outcome, group: &Group) -> usize {
        let record = &out.whole;
        let members = |bucket: &Bucket| -> Vec<Arc<Sub>> {
            bucket
                .grouped
                .iter()
                .find(|(g, _)| g.id == group.id)
                .map(|(_, m)| m.clone())
                .unwrap_or_default()
        };
        let mut subs = members(&self.all.read().expect("index lock"));
        if let Some(key) = record.key.as_deref() {
            if let Some(bucket) = self.by_key.get(key) {
                subs.extend(members(&bucket));
            }
            for sub in self.prefixed.read().expect("index lock").iter() {
                let is_member = sub.group.as_ref().is_some_and(|g| g.id == group.id);
                let prefix = sub.filter.prefix.as_deref().unwrap_or("");
                let exact = sub.filter.keys.as_ref().is_some_and(|k| k.contains(key));
                if is_member && key.starts_with(prefix) && !exact {
                    subs.push(Arc::clone(sub));
                }
            }
        }
        // Pushed with no index lock held (the lists were copied).
        subs.iter()
            .map(|s| usize::from(s.deliver_outcome(out)))
            .sum()
    }

    pub(super) fn insert(&self, sub: &Arc<Sub>) {
        if sub.filter.is_all() {
            self.all.write().expect("index lock").insert(sub);
            return;
        }
        if let Some(keys) = &sub.filter.keys {
            for key in keys {
                self.by_key.entry(Arc::clone(key)).or_default().insert(sub);
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
            self.all.write().expect("index lock").remove(sub);
            return;
        }
        if let Some(keys) = &sub.filter.keys {
            for key in keys {
                if let Some(mut bucket) = self.by_key.get_mut(key) {
                    bucket.remove(sub);
                }
                self.by_key.remove_if(key, |_, bucket| bucket.is_empty());
            }
        }
        if sub.filter.prefix.is_some() {
            self.prefixed
                .write()
                .expect("index lock")
                .retain(|s| s.id != sub.id);
        }
    }

    /// Pushes `record` to every matching subscription, once each. `view`
    /// still holds the key's previous value (for `enter` and `leave`).
    pub(super) fn dispatch(
        &self,
        topic: &str,
        epoch: u64,
        record: &Arc<Record>,
        view: &super::snapshot::View,
    ) -> usize {
        let mut dispatch = Dispatch::new(topic, epoch, record, view);
        let mut delivered = self.all.read().expect("index lock").dispatch(&mut dispatch);
        let Some(key) = record.key.as_deref() else {
            return delivered;
        };
        if let Some(bucket) = self.by_key.get(key) {
            delivered += bucket.dispatch(&mut dispatch);
        }
        for sub in self.prefixed.read().expect("index lock").iter() {
            let prefix = sub.filter.prefix.as_deref().unwrap_or("");
            // A key the subscription also names exactly was delivered above.
            let exact = sub.filter.keys.as_ref().is_some_and(|k| k.contains(key));
            if key.starts_with(prefix) && !exact {
                match &sub.group {
                    None => delivered += usize::from(sub.deliver(record)),
                    Some(group) => {
                        if let Some(out) = dispatch.outcome(group) {
                            delivered += usize::from(sub.deliver_outcome(&out));
                        }
                    }
                }
            }
        }
        delivered
    }
}
