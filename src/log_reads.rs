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

/// A read in flight: `[from, until)`, at most `max` records.
#[derive(Clone)]
struct Flight {
    from: u64,
    until: u64,
    max: usize,
    shared: InFlight,
}

/// The part of `read` (the records of a read of `[read_until)` from at most
/// `read_max`) that answers a read of `[from, until)` of at most `max`, or
/// `None` when it does not: an answer starts at `from` with nothing missing,
/// so an empty one is only given when `read` covered all of `[from, until)`.
fn answer(
    read: &[LogRecord],
    (read_until, read_max): (u64, usize),
    from: u64,
    until: u64,
    max: usize,
) -> Option<Vec<LogRecord>> {
    let part: Vec<LogRecord> = read
        .iter()
        .filter(|r| r.offset >= from && r.offset < until)
        .take(max)
        .cloned()
        .collect();
    // A read that returned fewer than its maximum reached its `until`.
    let covered_all = read.len() < read_max && until <= read_until;
    (!part.is_empty() || covered_all).then_some(part)
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
                if let Some(part) = answer(read, (flight.until, flight.max), from, until, max) {
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
                max,
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
    fn a_joined_read_answers_only_what_it_covers_without_a_gap() {
        // A read of [10, 20) that returned all of it (gaps in offsets, as compaction leaves).
        let whole = records([10, 12, 13, 19]);
        assert_eq!(
            offsets(answer(&whole, (20, 512), 12, 20, 512)),
            Some(vec![12, 13, 19])
        );
        assert_eq!(
            offsets(answer(&whole, (20, 512), 12, 20, 2)),
            Some(vec![12, 13])
        );
        // Nothing in [14, 19) and the read covered it: an empty answer is exact.
        assert_eq!(
            offsets(answer(&whole, (20, 512), 14, 19, 512)),
            Some(vec![])
        );
        // Wanting past its end: records up to its end are an answer (the caller
        // reads on from the last one); none are not (that would skip [20, 30)).
        assert_eq!(
            offsets(answer(&whole, (20, 512), 12, 30, 512)),
            Some(vec![12, 13, 19])
        );
        assert_eq!(offsets(answer(&whole, (20, 512), 20, 30, 512)), None);
        // A read cut at its maximum covered only up to its last record.
        let cut = records([10, 11, 12]);
        assert_eq!(
            offsets(answer(&cut, (100, 3), 11, 100, 512)),
            Some(vec![11, 12])
        );
        assert_eq!(offsets(answer(&cut, (100, 3), 13, 100, 512)), None);
    }
}
