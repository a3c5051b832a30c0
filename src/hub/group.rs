//! Groups: the subscriptions of one topic that share a delivery spec, and the per-record dispatch that evaluates each group once.
//!
//! Fan-out meets a group in the index (inside a key's bucket, the all-keys
//! bucket, or through a prefix subscription); [`Dispatch::outcome`] decides
//! for the whole group once per record and remembers it, so every member,
//! in whichever list it sits, gets the same bytes without another evaluation.
//! The record's data and the key's previous value (read from the view, which
//! still holds it during fan-out) are parsed at most once per record, and an
//! `enter` or `leave` variant is encoded at most once, whatever the groups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::rate::Rate;
use crate::record::{Body, Record};
use crate::shaping::{self, Spec, Verdict};

/// Subscriptions with one normalized spec; interned per topic by its canonical text.
pub(crate) struct Group {
    pub(super) id: u64,
    pub(super) spec: Arc<Spec>,
    /// Conflation state and timer hook, with `max_rate`.
    pub(super) rate: Option<Rate>,
    /// With `delta`: the last whole record the group sent per key, the base
    /// of the next patch (keys are partition-local: one lock serves all).
    delta: Option<Mutex<HashMap<Arc<str>, Arc<Record>>>>,
}

/// What a group's members get for one record: the whole record, and with
/// `delta` a patch from the key's previous value, for the members that hold
/// that value (those that were live at its `base` offset).
#[derive(Clone)]
pub(super) struct Outcome {
    pub(super) whole: Arc<Record>,
    pub(super) patch: Option<(Arc<Record>, u64)>,
}

impl Group {
    /// Its spec has a value filter: a replay then needs the keys' values
    /// from before the cursor.
    pub(super) fn filters_values(&self) -> bool {
        self.spec.filter.is_some()
    }

    pub(super) fn new(id: u64, spec: Arc<Spec>) -> Self {
        let rate = spec.max_rate.map(Rate::new);
        let delta = spec.delta.then(|| Mutex::new(HashMap::new()));
        Self {
            id,
            spec,
            rate,
            delta,
        }
    }

    /// Turns the record the group sends into its outcome: with `delta`, a
    /// patch against the key's previous value, built once for all members.
    pub(super) fn finish(&self, topic: &str, whole: Arc<Record>) -> Outcome {
        let (Some(last), Some(key)) = (&self.delta, whole.key.clone()) else {
            return Outcome { whole, patch: None };
        };
        let mut last = last.lock().expect("delta lock");
        // An `enter` (or a leave or delete before it) starts over with whole data.
        let fresh = whole.body() != Body::Data
            || whole.delete
            || whole.ws.as_str().contains(",\"op\":\"enter\",");
        if whole.body() != Body::Data || whole.delete {
            last.remove(&key);
            return Outcome { whole, patch: None };
        }
        let base = last.insert(key, Arc::clone(&whole));
        drop(last);
        let patch = match base {
            Some(base) if !fresh => {
                let (Some(before), Some(after)) =
                    (shaping::parse(base.data()), shaping::parse(whole.data()))
                else {
                    return Outcome { whole, patch: None };
                };
                let text = crate::shaping::delta::bounded(&before, &after, whole.data());
                let patch = whole.with_body(topic, (Body::Patch, &text));
                Some((Arc::new(patch), base.offset))
            }
            _ => None,
        };
        Outcome { whole, patch }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Lets the group's timer see it is gone and end.
        if let Some(rate) = &self.rate {
            rate.wake.notify_one();
        }
    }
}

/// A lazily computed value: not looked at yet, or what was found.
enum Lazy<T> {
    Unread,
    Read(T),
}

/// One record's fan-out: its data parsed at most once, each group's outcome computed at most once.
pub(super) struct Dispatch<'a> {
    topic: &'a str,
    epoch: u64,
    record: &'a Arc<Record>,
    /// The partition's latest value per key, not yet updated with `record`.
    view: &'a super::snapshot::View,
    /// `None` inside: not JSON.
    data: Lazy<Option<Value>>,
    /// The key's previous value: `None` when the view has none.
    prev: Lazy<Option<Option<Value>>>,
    enter: Option<Arc<Record>>,
    leave: Option<Arc<Record>>,
    stripped: Option<Arc<Record>>,
    /// (group id, what its members get); few entries, so a list beats a map.
    memo: Vec<(u64, Option<Outcome>)>,
    /// (projection, record projected, the projection of it): one encoding
    /// per distinct `fields` per record, whatever the filters around it.
    shaped: Vec<(Arc<str>, *const Record, Arc<Record>)>,
}

impl<'a> Dispatch<'a> {
    pub(super) fn new(
        topic: &'a str,
        epoch: u64,
        record: &'a Arc<Record>,
        view: &'a super::snapshot::View,
    ) -> Self {
        Self {
            topic,
            epoch,
            record,
            view,
            data: Lazy::Unread,
            prev: Lazy::Unread,
            enter: None,
            leave: None,
            stripped: None,
            memo: Vec::new(),
            shaped: Vec::new(),
        }
    }

    pub(super) fn record(&self) -> &'a Arc<Record> {
        self.record
    }

    /// What the members of `group` receive for this record (`None`: nothing).
    pub(super) fn outcome(&mut self, group: &Group) -> Option<Outcome> {
        if let Some((_, out)) = self.memo.iter().find(|(id, _)| *id == group.id) {
            return out.clone();
        }
        let mut out = self.evaluate(group).map(|out| self.shape(group, out));
        if let Some(rate) = &group.rate {
            out = out.and_then(|record| rate.admit(self.topic, self.epoch, record));
        }
        let out = out.map(|whole| group.finish(self.topic, whole));
        self.memo.push((group.id, out.clone()));
        out
    }

    /// `out` as the group's projection makes it, encoded once per projection.
    fn shape(&mut self, group: &Group, out: Arc<Record>) -> Arc<Record> {
        let Some(key) = &group.spec.fields_key else {
            return out;
        };
        let source = Arc::as_ptr(&out);
        if let Some((_, _, done)) = self
            .shaped
            .iter()
            .find(|(k, s, _)| *s == source && **k == **key)
        {
            return Arc::clone(done);
        }
        let Some(shaped) = group.spec.shape(self.topic, &out) else {
            return out;
        };
        let shaped = Arc::new(shaped);
        self.shaped
            .push((Arc::clone(key), source, Arc::clone(&shaped)));
        shaped
    }

    fn evaluate(&mut self, group: &Group) -> Option<Arc<Record>> {
        #[cfg(test)]
        EVALUATIONS.with(|n| n.set(n.get() + 1));
        let record = self.record;
        let Some(filter) = &group.spec.filter else {
            return Some(Arc::clone(record));
        };
        let key = record.key.as_deref();
        if let Lazy::Unread = self.data {
            self.data = Lazy::Read(shaping::parse(record.data()));
        }
        let Lazy::Read(data) = &self.data else {
            unreachable!("read above")
        };
        let now = filter.matches(key, data.as_ref());
        if let Lazy::Unread = self.prev {
            let prev = key
                .and_then(|k| self.view.get(k))
                .map(|p| shaping::parse(p.data()));
            self.prev = Lazy::Read(prev);
        }
        let Lazy::Read(prev) = &self.prev else {
            unreachable!("read above")
        };
        let before = prev.as_ref().map(|p| filter.matches(key, p.as_ref()));
        let data_is_null = matches!(data, Some(Value::Null));
        match shaping::classify(now, before, record.delete, data_is_null) {
            Verdict::Drop => None,
            Verdict::Same => Some(Arc::clone(record)),
            Verdict::Enter => Some(Arc::clone(self.enter.get_or_insert_with(|| {
                Arc::new(record.variant(self.topic, "enter", (Body::Data, record.data())))
            }))),
            Verdict::Leave => Some(Arc::clone(self.leave.get_or_insert_with(|| {
                Arc::new(record.variant(self.topic, "leave", (Body::None, "")))
            }))),
            Verdict::DeleteWithoutData => {
                Some(Arc::clone(self.stripped.get_or_insert_with(|| {
                    Arc::new(record.variant(self.topic, "delete", (Body::None, "")))
                })))
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Group evaluations on this thread (tests check each group is evaluated once per record).
    pub(super) static EVALUATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
