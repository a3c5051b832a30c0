//! Catch-up reads from the log: bounded in number (`limits.catchup_concurrency`) and shared by resumes that ask for the same range at once (single flight).
//!
//! After a node is lost or a balancer restarts, thousands of clients resume
//! together, many from the same cursor (they were live on the same records).
//! Their log reads are the same (topic, partition, range): one read serves
//! them all, so a storm costs reads per partition, not per client. Reads
//! that do go to the log wait for one of a bounded number of permits, so
//! admitted clients queue rather than overload the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::record::LogRecord;
use crate::source::{Source, SourceError};
use crate::telemetry;

/// One range read: (topic, partition, from, until, max records).
type Key = (Arc<str>, u32, u64, u64, usize);
pub type Read = Result<Arc<Vec<LogRecord>>, Arc<SourceError>>;
type InFlight = Shared<BoxFuture<'static, Read>>;

pub struct LogReads {
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashMap<Key, InFlight>>,
}

impl LogReads {
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Reads `[from, until)` of `topic`'s `partition` (at most `max` records),
    /// joining a read of the same range already in flight.
    pub async fn read(
        &self,
        source: &Arc<dyn Source>,
        topic: &Arc<str>,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Read {
        let key: Key = (Arc::clone(topic), partition, from, until, max);
        let shared = {
            let mut in_flight = self.in_flight.lock().expect("in-flight reads lock");
            match in_flight.get(&key) {
                Some(shared) => {
                    telemetry::catchup_read(true);
                    shared.clone()
                }
                None => {
                    telemetry::catchup_read(false);
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
                    in_flight.insert(key.clone(), shared.clone());
                    shared
                }
            }
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
        let ours = in_flight
            .get(&self.key)
            .is_some_and(|s| s.ptr_eq(&self.shared));
        // The map's copy and this one: no one else waits on it.
        if ours && (self.shared.peek().is_some() || self.shared.strong_count() <= Some(2)) {
            in_flight.remove(&self.key);
        }
    }
}
