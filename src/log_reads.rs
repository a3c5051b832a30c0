//! Catch-up reads from the log: bounded in number (`limits.catchup_concurrency`) and shared by resumes whose range an earlier read in flight already covers (single flight).
//!
//! After a node is lost or a balancer restarts, thousands of clients resume
//! together from cursors a few records apart (each was live until its last
//! record). A resume joins a read of the same partition in flight that starts
//! at or before its own start and reaches past it, and takes its part of
//! that read's records: so a storm costs reads per partition, not per client.
//! Reads that do go to the log wait for one of a bounded number of permits,
//! so admitted clients queue rather than overload the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::record::LogRecord;
use crate::source::{Source, SourceError};
use crate::telemetry;

/// The reads in flight of one partition: (topic, partition).
type Key = (Arc<str>, u32);
pub type Read = Result<Arc<Vec<LogRecord>>, Arc<SourceError>>;
type InFlight = Shared<BoxFuture<'static, Read>>;

/// A read in flight of `[from, until)`.
#[derive(Clone)]
struct Flight {
    from: u64,
    until: u64,
    shared: InFlight,
}

/// The part of `read` (every record of its partition from its start to its
/// last one) that answers a read of `[from, until)` of at most `max`, or
/// `None` when it does not. An answer is every record from `from` on, so it
/// is never empty: an empty read means "nothing in the range", and a read
/// may end short of its own `until` (a source may return part of a range),
/// so its records say nothing about offsets past its last one.
fn answer(read: &[LogRecord], from: u64, until: u64, max: usize) -> Option<Vec<LogRecord>> {
    let part: Vec<LogRecord> = read
        .iter()
        .filter(|r| r.offset >= from && r.offset < until)
        .take(max)
        .cloned()
        .collect();
    (!part.is_empty()).then_some(part)
}

pub struct LogReads {
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashMap<Key, Vec<Flight>>>,
}

impl LogReads {
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Reads `[from, until)` of `topic`'s `partition` (at most `max` records,
    /// in offset order and without a gap from `from`), joining a read in
    /// flight that covers its start when there is one.
    pub async fn read(
        &self,
        source: &Arc<dyn Source>,
        topic: &Arc<str>,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Read {
        let key: Key = (Arc::clone(topic), partition);
        // The closest read in flight that starts at or before `from` and reaches past it.
        let joined = {
            let in_flight = self.in_flight.lock().expect("in-flight reads lock");
            in_flight
                .get(&key)
                .and_then(|flights| {
                    flights
                        .iter()
                        .filter(|f| f.from <= from && from < f.until)
                        .max_by_key(|f| (f.from, f.until))
                })
                .cloned()
        };
        if let Some(flight) = joined {
            let waiter = Waiter {
                reads: self,
                key: key.clone(),
                shared: flight.shared.clone(),
            };
            let result = waiter.shared.clone().await;
            drop(waiter);
            if let Ok(read) = &result {
                if let Some(part) = answer(read, from, until, max) {
                    telemetry::catchup_read(true);
                    return Ok(Arc::new(part));
                }
            }
            // It failed, or ended before `from`: this range gets a read of its own.
        }
        telemetry::catchup_read(false);
        let shared = {
            let source = Arc::clone(source);
            let topic = Arc::clone(topic);
            let permits = Arc::clone(&self.permits);
            let read = async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                source
                    .read(&topic, partition, from, until, max)
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            };
            let shared = read.boxed().shared();
            let mut in_flight = self.in_flight.lock().expect("in-flight reads lock");
            in_flight.entry(key.clone()).or_default().push(Flight {
                from,
                until,
                shared: shared.clone(),
            });
            shared
        };
        // Whoever leaves last (done or dropped) takes the entry out.
        let waiter = Waiter {
            reads: self,
            key,
            shared,
        };
        waiter.shared.clone().await
    }
}

struct Waiter<'a> {
    reads: &'a LogReads,
    key: Key,
    shared: InFlight,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.reads.in_flight.lock().expect("in-flight reads lock");
        let Some(flights) = in_flight.get_mut(&self.key) else {
            return;
        };
        // The map's copy and this one: no one else waits on it.
        let last = self.shared.peek().is_some() || self.shared.strong_count() <= Some(2);
        if last {
            flights.retain(|f| !f.shared.ptr_eq(&self.shared));
            if flights.is_empty() {
                in_flight.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(offsets: impl IntoIterator<Item = u64>) -> Vec<LogRecord> {
        offsets
            .into_iter()
            .map(|offset| LogRecord {
                partition: 0,
                offset,
                timestamp: 0,
                key: None,
                data: "{}".into(),
                extra: None,
                delete: false,
                position: None,
                trace: None,
            })
            .collect()
    }

    fn offsets(part: Option<Vec<LogRecord>>) -> Option<Vec<u64>> {
        part.map(|p| p.iter().map(|r| r.offset).collect())
    }

    #[test]
    fn a_joined_read_answers_only_from_its_records_never_with_nothing() {
        // A read from 10 that returned these (gaps in offsets, as compaction leaves).
        let read = records([10, 12, 13, 19]);
        assert_eq!(offsets(answer(&read, 12, 20, 512)), Some(vec![12, 13, 19]));
        assert_eq!(offsets(answer(&read, 12, 20, 2)), Some(vec![12, 13]));
        // Wanting past its last record: the records up to it (the caller reads on after it).
        assert_eq!(offsets(answer(&read, 12, 30, 512)), Some(vec![12, 13, 19]));
        // Nothing of it in the range: no answer, even where the read may have
        // covered the range (it may also have ended short of its `until`).
        assert_eq!(offsets(answer(&read, 14, 19, 512)), None);
        assert_eq!(offsets(answer(&read, 20, 30, 512)), None);
    }
}
