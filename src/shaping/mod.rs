//! Delivery shaping: the delivery spec, what shapes a subscriber's records beyond its keys (a value filter, the client's ANDed with its token's), normalized so equal specs share one group.
//!
//! Two subscriptions whose specs have the same canonical text are served by
//! one group in the hub: each record is evaluated once per group, and every
//! member gets the same bytes.

pub mod delta;
pub(crate) mod fields;
pub(crate) mod filter;

use std::collections::HashMap;
use std::sync::Arc;

pub use fields::Fields;
pub use filter::{FilterLimits, KeyTest, ValueFilter};

/// A normalized delivery spec. Subscriptions without one take the plain path.
#[derive(Debug)]
pub struct Spec {
    /// The client's filter ANDed with the one its token enforces.
    pub filter: Option<Arc<ValueFilter>>,
    /// The paths of `data` the subscriber receives.
    pub fields: Option<Fields>,
    /// `fields`' canonical text: groups with equal projections share encodings.
    pub fields_key: Option<Arc<str>>,
    /// Records per second per key, at most (conflation).
    pub max_rate: Option<f64>,
    /// `delta: "json-patch"`: later records of a key carry a patch.
    pub delta: bool,
    canonical: Box<str>,
}

impl Spec {
    /// The spec of a subscription, or `None` when nothing beyond keys shapes it.
    pub fn new(
        filter: Option<ValueFilter>,
        fields: Option<Fields>,
        max_rate: Option<f64>,
        delta: bool,
    ) -> Option<Spec> {
        if filter.is_none() && fields.is_none() && max_rate.is_none() && !delta {
            return None;
        }
        let fields_key: Option<Arc<str>> = fields.as_ref().map(|f| f.canonical().into());
        let canonical = format!(
            "{{\"filter\":{},\"fields\":{},\"max_rate\":{},\"delta\":{}}}",
            filter.as_ref().map_or("null", |f| f.canonical()),
            fields_key.as_deref().unwrap_or("null"),
            serde_json::json!(max_rate),
            delta,
        )
        .into_boxed_str();
        Some(Spec {
            filter: filter.map(Arc::new),
            fields,
            fields_key,
            max_rate,
            delta,
            canonical,
        })
    }

    /// `record` as this spec shapes its value: projected onto `fields`
    /// (records without `data`, such as `leave`, are left as they are).
    pub fn shape(
        &self,
        topic: &str,
        record: &crate::record::Record,
    ) -> Option<crate::record::Record> {
        let fields = self.fields.as_ref()?;
        if record.body() != crate::record::Body::Data {
            return None;
        }
        let projected = match parse(record.data()) {
            Some(data) => fields.project(&data),
            // Not JSON: nothing of it can be selected.
            None => serde_json::Value::Object(serde_json::Map::new()),
        };
        Some(record.with_body(topic, (crate::record::Body::Data, &projected.to_string())))
    }

    /// Equal for specs that deliver the same bytes for the same record.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Does the value filter let (`key`, `data`) through? `data` is the
    /// record's JSON text; text that is not JSON matches no filter.
    pub fn admits(&self, key: Option<&str>, data: &str) -> bool {
        match &self.filter {
            None => true,
            Some(filter) => filter.matches(key, parse(data).as_ref()),
        }
    }
}

/// What a subscriber with a value filter gets for one record of a key,
/// given whether the new value matches and whether the key's previous value
/// did (`None`: unknown, e.g. a key the view never held or evicted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing (the cursor of later records still covers it).
    Drop,
    /// The record as it is.
    Same,
    /// `op: "enter"` with whole data: the key now matches and did not before.
    Enter,
    /// `op: "leave"`, no data: the key matched and no longer does.
    Leave,
    /// A delete of a key that matched, whose own data does not: `op:
    /// "delete"` without the data (it may be outside a token's filter).
    DeleteWithoutData,
}

/// Decides enter, leave and the rest. A key whose previous value is unknown
/// gets no `leave` (the subscriber may never have been allowed to see it)
/// and no `enter`.
pub fn classify(now: bool, before: Option<bool>, delete: bool, data_is_null: bool) -> Verdict {
    match (delete, now, before) {
        (true, true, _) => Verdict::Same,
        (true, false, Some(true)) if data_is_null => Verdict::Same,
        (true, false, Some(true)) => Verdict::DeleteWithoutData,
        (true, false, _) => Verdict::Drop,
        (false, true, Some(false)) => Verdict::Enter,
        (false, true, _) => Verdict::Same,
        (false, false, Some(true)) => Verdict::Leave,
        (false, false, _) => Verdict::Drop,
    }
}

/// Follows, key by key, whether a subscriber's last value matched its
/// filter, for replays (live fan-out reads the view instead).
#[derive(Default)]
pub struct Replayer {
    matched: HashMap<Arc<str>, bool>,
}

impl Replayer {
    /// Notes a record from before the replay (the ring's older records): it
    /// tells whether the subscriber's value of its key matched.
    pub fn seed(&mut self, filter: &ValueFilter, key: &Arc<str>, data: &str, delete: bool) {
        if delete {
            self.matched.remove(key);
        } else {
            let now = filter.matches(Some(key), parse(data).as_ref());
            self.matched.insert(Arc::clone(key), now);
        }
    }

    /// What to send for a replayed record, and notes it.
    pub fn step(
        &mut self,
        filter: &ValueFilter,
        key: Option<&Arc<str>>,
        data: &str,
        delete: bool,
    ) -> Verdict {
        let parsed = parse(data);
        let now = filter.matches(key.map(|k| &**k), parsed.as_ref());
        let before = key.and_then(|k| self.matched.get(k).copied());
        let verdict = classify(
            now,
            before,
            delete,
            matches!(parsed, Some(serde_json::Value::Null)),
        );
        if let Some(key) = key {
            if delete {
                self.matched.remove(key);
            } else {
                self.matched.insert(Arc::clone(key), now);
            }
        }
        verdict
    }
}

/// Parses a record's data; `None` when it is not JSON (or nests past serde's limit).
pub fn parse(data: &str) -> Option<serde_json::Value> {
    serde_json::from_str(data).ok()
}
