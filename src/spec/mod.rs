//! Delivery specs: what shapes a subscriber's records beyond its keys (a value filter, the client's ANDed with its token's), normalized so equal specs share one group.
//!
//! Two subscriptions whose specs have the same canonical text are served by
//! one group in the hub: each record is evaluated once per group, and every
//! member gets the same bytes.

pub mod filter;

use std::sync::Arc;

pub use filter::{FilterError, FilterLimits, KeyTest, ValueFilter};

/// A normalized delivery spec. Subscriptions without one take the plain path.
#[derive(Debug)]
pub struct Spec {
    /// The client's filter ANDed with the one its token enforces.
    pub filter: Option<Arc<ValueFilter>>,
    canonical: Box<str>,
}

impl Spec {
    /// The spec of a subscription, or `None` when nothing beyond keys shapes it.
    pub fn new(filter: Option<ValueFilter>) -> Option<Spec> {
        let filter = filter?;
        let canonical = format!("{{\"filter\":{}}}", filter.canonical()).into_boxed_str();
        Some(Spec {
            filter: Some(Arc::new(filter)),
            canonical,
        })
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

/// Parses a record's data; `None` when it is not JSON (or nests past serde's limit).
pub fn parse(data: &str) -> Option<serde_json::Value> {
    serde_json::from_str(data).ok()
}
