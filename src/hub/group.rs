//! Groups: the subscriptions of one topic that share a delivery spec, and the per-record dispatch that evaluates each group once.
//!
//! Fan-out meets a group in the index (inside a key's bucket, the all-keys
//! bucket, or through a prefix subscription); [`Dispatch::outcome`] decides
//! for the whole group once per record and remembers it, so every member,
//! in whichever list it sits, gets the same bytes without another evaluation.

use std::sync::Arc;

use serde_json::Value;

use crate::record::Record;
use crate::spec::{self, Spec};

/// Subscriptions with one normalized spec; interned per topic by its canonical text.
pub(crate) struct Group {
    pub(super) id: u64,
    pub(super) spec: Arc<Spec>,
}

impl Group {
    pub(super) fn new(id: u64, spec: Arc<Spec>) -> Self {
        Self { id, spec }
    }
}

/// One record's fan-out: its data parsed at most once, each group's outcome computed at most once.
pub(super) struct Dispatch<'a> {
    record: &'a Arc<Record>,
    /// `None`: not parsed yet; `Some(None)`: not JSON.
    data: Option<Option<Value>>,
    /// (group id, what its members get); few entries, so a list beats a map.
    memo: Vec<(u64, Option<Arc<Record>>)>,
}

impl<'a> Dispatch<'a> {
    pub(super) fn new(record: &'a Arc<Record>) -> Self {
        Self {
            record,
            data: None,
            memo: Vec::new(),
        }
    }

    pub(super) fn record(&self) -> &'a Arc<Record> {
        self.record
    }

    /// What the members of `group` receive for this record (`None`: nothing).
    pub(super) fn outcome(&mut self, group: &Group) -> Option<Arc<Record>> {
        if let Some((_, out)) = self.memo.iter().find(|(id, _)| *id == group.id) {
            return out.clone();
        }
        let out = self.evaluate(group);
        self.memo.push((group.id, out.clone()));
        out
    }

    fn evaluate(&mut self, group: &Group) -> Option<Arc<Record>> {
        #[cfg(test)]
        EVALUATIONS.with(|n| n.set(n.get() + 1));
        let record = self.record;
        if let Some(filter) = &group.spec.filter {
            let data = self
                .data
                .get_or_insert_with(|| spec::parse(record.data()))
                .as_ref();
            if !filter.matches(record.key.as_deref(), data) {
                return None;
            }
        }
        Some(Arc::clone(record))
    }
}

#[cfg(test)]
thread_local! {
    /// Group evaluations on this thread (tests check each group is evaluated once per record).
    pub(super) static EVALUATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
