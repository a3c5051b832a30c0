//! Catch-up reads from the log: bounded in number (`limits.catchup_concurrency`), shared by resumes whose range a read in flight or a recent read already covers, and handed out by reference with a key index, never copied per resume.
//!
//! After a node is lost, a balancer restarts or the whole fleet restarts,
//! thousands of clients resume together from cursors a few records apart
//! (each was live until its last record). A resume joins a read of the same
//! partition in flight that starts at or before its own start and reaches
//! past it, or takes one of the partition's recent reads that covers its
//! start, and takes its part of that read's records: so a storm costs reads
//! per partition, not per client. Reads that do go to the log wait for one of
//! a bounded number of permits, so admitted clients queue rather than
//! overload the log.
//!
//! A read is one [`Chunk`] shared by every resume that takes part of it: a
//! resume gets a [`Part`] (the chunk and a range of it), not a copy of its
//! records, and a resume of a few keys finds its records through the chunk's
//! key index (built once, by the first resume that asks) instead of testing
//! every record. A cold restart replays each partition's minutes of records to
//! every client: with a copy and a key test per record and client, a thousand
//! resumes on one node spent minutes of CPU filtering; with the index a
//! resume's cost per chunk is a lookup per key it holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::record::LogRecord;
use crate::source::{Source, SourceError};
use crate::telemetry;

/// The reads of one partition: (topic, epoch, partition). The epoch keeps a
/// recreated topic from being answered with its predecessor's records.
type Key = (Arc<str>, u64, u32);
type Fetched = Result<Arc<Chunk>, Arc<SourceError>>;
type InFlight = Shared<BoxFuture<'static, Fetched>>;
pub type Read = Result<Part, Arc<SourceError>>;

/// Reads of the log are of aligned blocks of this many offsets (a resume
/// takes its part of one, `max` records from its start at most).
const BLOCK: usize = 2048;

/// A resume with at most this many keys finds its records through the key
/// index; one with more (or a prefix, or the whole topic) tests every record.
pub const INDEXED_KEYS: usize = 64;

/// One read of a partition: every record from `from` to its last one, in
/// offset order (a source may return part of a range, so its records say
/// nothing about offsets past the last one).
pub struct Chunk {
    from: u64,
    records: Vec<LogRecord>,
    /// What its records hold in memory, about (see [`record_bytes`]).
    bytes: usize,
    /// Each key's records: their indexes in `records`, ascending.
    index: OnceLock<HashMap<Arc<str>, Vec<u32>>>,
}

impl Chunk {
    fn new(from: u64, records: Vec<LogRecord>) -> Self {
        Self {
            from,
            bytes: records.iter().map(record_bytes).sum(),
            records,
            index: OnceLock::new(),
        }
    }

    /// One past the last offset it holds (`from` when it holds none).
    fn end(&self) -> u64 {
        self.records.last().map_or(self.from, |r| r.offset + 1)
    }

    fn index(&self) -> &HashMap<Arc<str>, Vec<u32>> {
        self.index.get_or_init(|| {
            let mut index: HashMap<Arc<str>, Vec<u32>> = HashMap::new();
            for (i, r) in self.records.iter().enumerate() {
                if let Some(key) = &r.key {
                    index.entry(Arc::clone(key)).or_default().push(i as u32);
                }
            }
            index
        })
    }
}

/// The memory one read record holds: the struct and its own allocations,
/// each with the allocator's 16 bytes. A key is counted although reads of
/// the same key may share it: the bound errs on the safe side.
fn record_bytes(r: &LogRecord) -> usize {
    const ALLOC: usize = 16;
    let owned = |len: usize| if len == 0 { 0 } else { len + ALLOC };
    std::mem::size_of::<LogRecord>()
        + owned(r.data.len())
        + r.key.as_ref().map_or(0, |k| owned(k.len() + 16))
        + r.extra.as_ref().map_or(0, |e| owned(e.len()))
        + r.position.as_ref().map_or(0, |p| owned(p.len() + 16))
}

/// The records of one read that answer one resume: `chunk.records[start..end]`.
#[derive(Clone)]
pub struct Part {
    chunk: Arc<Chunk>,
    start: usize,
    end: usize,
}

impl Part {
    /// The part of `chunk` that answers a read of `[from, until)` of at most
    /// `max`, or `None` when it does not. An answer is every record from `from`
    /// on, so it is never empty: an empty read means "nothing in the range",
    /// and a read may end short of its own `until`.
    fn of(chunk: &Arc<Chunk>, from: u64, until: u64, max: usize) -> Option<Part> {
        let records = &chunk.records;
        let start = records.partition_point(|r| r.offset < from);
        let end = start + records[start..].partition_point(|r| r.offset < until);
        let end = end.min(start + max);
        (end > start).then(|| Part {
            chunk: Arc::clone(chunk),
            start,
            end,
        })
    }

    /// A source's answer as it is (possibly empty: nothing in the range).
    fn whole(chunk: Arc<Chunk>, max: usize) -> Part {
        let end = chunk.records.len().min(max);
        Part {
            chunk,
            start: 0,
            end,
        }
    }

    pub fn records(&self) -> &[LogRecord] {
        &self.chunk.records[self.start..self.end]
    }

    /// The records of `keys` in this part, in offset order: one index lookup
    /// per key instead of a test per record.
    pub fn of_keys<'a, I>(&'a self, keys: I) -> Vec<&'a LogRecord>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let index = self.chunk.index();
        let (start, end) = (self.start as u32, self.end as u32);
        let mut at: Vec<u32> = Vec::new();
        for key in keys {
            if let Some(list) = index.get(key) {
                let first = list.partition_point(|&i| i < start);
                at.extend(list[first..].iter().take_while(|&&i| i < end));
            }
        }
        at.sort_unstable();
        at.into_iter()
            .map(|i| &self.chunk.records[i as usize])
            .collect()
    }
}

/// A read in flight of `[from, until)`.
#[derive(Clone)]
struct Flight {
    from: u64,
    until: u64,
    shared: InFlight,
}

#[derive(Default)]
struct PartitionReads {
    in_flight: Vec<Flight>,
    /// Recent reads by their start.
    recent: BTreeMap<u64, Arc<Chunk>>,
}

impl PartitionReads {
    /// The recent read that covers `from` and starts closest to it.
    fn recent(&self, from: u64) -> Option<&Arc<Chunk>> {
        self.recent
            .range(..=from)
            .rev()
            .map(|(_, c)| c)
            .find(|c| from < c.end())
    }
}

/// Every partition's reads, and the recent ones node-wide, oldest first.
#[derive(Default)]
struct Reads {
    partitions: HashMap<Key, PartitionReads>,
    order: VecDeque<(Key, Arc<Chunk>)>,
    /// What the recent reads hold, and the most they may.
    bytes: usize,
    max_bytes: usize,
}

impl Reads {
    /// Keeps `chunk` among the recent reads, dropping the oldest beyond
    /// `max_bytes`. The bound is in bytes, not records: reads of large
    /// values (a view's catch-up after a long snapshot) would otherwise
    /// hold tens of MB for resumes that may never come.
    fn keep(&mut self, key: &Key, chunk: &Arc<Chunk>) {
        if chunk.records.is_empty() || chunk.bytes > self.max_bytes {
            return;
        }
        let reads = self.partitions.entry(key.clone()).or_default();
        if let Some(old) = reads.recent.insert(chunk.from, Arc::clone(chunk)) {
            if Arc::ptr_eq(&old, chunk) {
                return;
            }
        }
        self.bytes += chunk.bytes;
        self.order.push_back((key.clone(), Arc::clone(chunk)));
        while self.bytes > self.max_bytes {
            let Some((key, old)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
            if let Some(reads) = self.partitions.get_mut(&key) {
                if reads
                    .recent
                    .get(&old.from)
                    .is_some_and(|c| Arc::ptr_eq(c, &old))
                {
                    reads.recent.remove(&old.from);
                }
                if reads.recent.is_empty() && reads.in_flight.is_empty() {
                    self.partitions.remove(&key);
                }
            }
        }
        telemetry::catchup_cache_bytes(self.bytes);
    }
}

pub struct LogReads {
    permits: Arc<Semaphore>,
    reads: Mutex<Reads>,
}

impl LogReads {
    /// `concurrency` reads at once; recent reads kept up to `cache_bytes`.
    pub fn new(concurrency: usize, cache_bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            reads: Mutex::new(Reads {
                max_bytes: cache_bytes,
                ..Reads::default()
            }),
        }
    }

    /// Reads `[from, until)` of `topic`'s `partition` (at most `max` records,
    /// in offset order and without a gap from `from`), from a recent read or
    /// a read in flight that covers its start when there is one.
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        &self,
        source: &Arc<dyn Source>,
        topic: &Arc<str>,
        epoch: u64,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Read {
        let key: Key = (Arc::clone(topic), epoch, partition);
        // A recent read that answers, or the closest read in flight that
        // starts at or before `from` and reaches past it.
        let joined = {
            let all = self.reads.lock().expect("log reads lock");
            let reads = all.partitions.get(&key);
            let recent = reads
                .and_then(|r| r.recent(from))
                .and_then(|chunk| Part::of(chunk, from, until, max));
            if let Some(part) = recent {
                telemetry::catchup_read(true);
                return Ok(part);
            }
            reads.and_then(|r| {
                r.in_flight
                    .iter()
                    .filter(|f| f.from <= from && from < f.until)
                    .max_by_key(|f| (f.from, f.until))
                    .cloned()
            })
        };
        if let Some(flight) = joined {
            let waiter = Waiter {
                reads: self,
                key: key.clone(),
                shared: flight.shared.clone(),
            };
            let result = waiter.shared.clone().await;
            drop(waiter);
            if let Some(part) = result.ok().and_then(|c| Part::of(&c, from, until, max)) {
                telemetry::catchup_read(true);
                return Ok(part);
            }
            // It failed, or ended before `from`: this range gets a read of its own.
        }
        // A read of its own: of the aligned block that holds `from`, so that
        // resumes a few records apart ask for the same block and the next
        // ones find it among the recent reads; they move through a partition
        // together, one read per block, however their cursors started.
        let block = from - from % BLOCK as u64;
        let block_until = (block + BLOCK as u64).min(until);
        let read = self
            .fetch(source, &key, topic, partition, block, block_until, BLOCK)
            .await;
        match read {
            Ok(chunk) => match Part::of(&chunk, from, until, max) {
                Some(part) => return Ok(part),
                None if block == from => return Ok(Part::whole(chunk, max)),
                None => {}
            },
            Err(e) if block == from => return Err(e),
            Err(_) => {}
        }
        // The block ended before `from`, or failed below it (retention): from `from` itself.
        tracing::debug!(
            partition,
            from,
            block,
            "block read did not answer: reading from the start"
        );
        let chunk = self
            .fetch(source, &key, topic, partition, from, until, max)
            .await?;
        Ok(Part::of(&chunk, from, until, max).unwrap_or_else(|| Part::whole(chunk, 0)))
    }

    /// Reads `[from, until)` (at most `max` records) from the source, as a
    /// read in flight others can join; done, it is kept among the recent reads.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        source: &Arc<dyn Source>,
        key: &Key,
        topic: &Arc<str>,
        partition: u32,
        from: u64,
        until: u64,
        max: usize,
    ) -> Fetched {
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
                    .map(|records| Arc::new(Chunk::new(from, records)))
                    .map_err(Arc::new)
            };
            let shared = read.boxed().shared();
            let mut all = self.reads.lock().expect("log reads lock");
            all.partitions
                .entry(key.clone())
                .or_default()
                .in_flight
                .push(Flight {
                    from,
                    until,
                    shared: shared.clone(),
                });
            shared
        };
        // Whoever leaves last (done or dropped) takes the entry out, and keeps
        // a successful read among the recent ones.
        let waiter = Waiter {
            reads: self,
            key: key.clone(),
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
        let mut all = self.reads.reads.lock().expect("log reads lock");
        let Some(reads) = all.partitions.get_mut(&self.key) else {
            return;
        };
        // The map's copy and this one: no one else waits on it.
        let done = self.shared.peek().cloned();
        let last = done.is_some() || self.shared.strong_count() <= Some(2);
        if !last {
            return;
        }
        let before = reads.in_flight.len();
        reads.in_flight.retain(|f| !f.shared.ptr_eq(&self.shared));
        let removed = reads.in_flight.len() < before;
        if reads.in_flight.is_empty() && reads.recent.is_empty() {
            all.partitions.remove(&self.key);
        }
        if let (true, Some(Ok(chunk))) = (removed, &done) {
            all.keep(&self.key, chunk);
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
                key: Some(format!("k{}", offset % 3).into()),
                data: "{}".into(),
                extra: None,
                delete: false,
                position: None,
                trace: None,
            })
            .collect()
    }

    fn offsets(part: Option<Part>) -> Option<Vec<u64>> {
        part.map(|p| p.records().iter().map(|r| r.offset).collect())
    }

    #[test]
    fn a_shared_read_answers_only_from_its_records_never_with_nothing() {
        // A read from 10 that returned these (gaps in offsets, as compaction leaves).
        let read = Arc::new(Chunk::new(10, records([10, 12, 13, 19])));
        assert_eq!(
            offsets(Part::of(&read, 12, 20, 512)),
            Some(vec![12, 13, 19])
        );
        assert_eq!(offsets(Part::of(&read, 12, 20, 2)), Some(vec![12, 13]));
        assert_eq!(offsets(Part::of(&read, 11, 13, 512)), Some(vec![12]));
        // Wanting past its last record: the records up to it (the caller reads on after it).
        assert_eq!(
            offsets(Part::of(&read, 12, 30, 512)),
            Some(vec![12, 13, 19])
        );
        // Nothing of it in the range: no answer, even where the read may have
        // covered the range (it may also have ended short of its `until`).
        assert_eq!(offsets(Part::of(&read, 14, 19, 512)), None);
        assert_eq!(offsets(Part::of(&read, 20, 30, 512)), None);
        assert_eq!(read.end(), 20);
    }

    #[test]
    fn the_key_index_finds_a_parts_records_of_some_keys_in_offset_order() {
        // Keys k0, k1, k2 by offset % 3.
        let read = Arc::new(Chunk::new(0, records(0..30)));
        let part = Part::of(&read, 4, 20, 512).expect("covers 4");
        let scan: Vec<u64> = part
            .records()
            .iter()
            .filter(|r| matches!(r.key.as_deref(), Some("k0" | "k2")))
            .map(|r| r.offset)
            .collect();
        let indexed: Vec<u64> = part
            .of_keys(["k2", "k0"])
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(indexed, scan);
        assert_eq!(indexed.first(), Some(&5));
        assert_eq!(indexed.last(), Some(&18));
        assert!(part.of_keys(["k9"]).is_empty());
        // Bounded by `max`: the index stays inside the part.
        let short = Part::of(&read, 4, 20, 3).expect("covers 4");
        let got: Vec<u64> = short
            .of_keys(["k0", "k1", "k2"])
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(got, vec![4, 5, 6]);
    }

    #[test]
    fn recent_reads_are_bounded_node_wide_and_the_closest_one_answers() {
        let per = 4096u64;
        let chunk_bytes = Chunk::new(0, records(0..per)).bytes;
        assert!(chunk_bytes > per as usize * std::mem::size_of::<LogRecord>());
        // Room for eight reads.
        let mut reads = Reads {
            max_bytes: chunk_bytes * 8,
            ..Reads::default()
        };
        let key = |p: u32| -> Key { ("t".into(), 1, p) };
        let n = 16;
        for i in 0..n {
            let from = i * per;
            reads.keep(
                &key((i % 2) as u32),
                &Arc::new(Chunk::new(from, records(from..from + per))),
            );
        }
        assert!(reads.bytes <= reads.max_bytes);
        assert_eq!(reads.order.len(), 8);
        let p1 = &reads.partitions[&key(1)];
        assert!(p1.recent(per).is_none(), "the oldest reads were dropped");
        let last = (n - 1) * per;
        let chunk = p1.recent(last + 100).expect("the newest read covers it");
        assert_eq!(chunk.from, last);
        assert!(p1.recent(last + per).is_none(), "past the last record read");
        assert!(
            reads.partitions[&key(0)].recent(last + 100).is_none(),
            "another partition's"
        );
        // The same read kept twice counts once.
        let again = Arc::clone(chunk);
        let before = reads.bytes;
        reads.keep(&key(1), &again);
        assert_eq!(reads.bytes, before);
    }

    #[test]
    fn the_bound_counts_bytes_so_large_values_keep_fewer_reads() {
        let per = 512u64;
        let small_bytes = Chunk::new(0, records(0..per)).bytes;
        // Records about three times as large: a read of them counts as three.
        let big = |from: u64| {
            let mut list = records(from..from + per);
            for r in &mut list {
                r.data = "x".repeat(2 * small_bytes / per as usize).into();
            }
            Arc::new(Chunk::new(from, list))
        };
        let mut reads = Reads {
            max_bytes: small_bytes * 4,
            ..Reads::default()
        };
        let key: Key = ("t".into(), 1, 0);
        for i in 0..4 {
            reads.keep(
                &key,
                &Arc::new(Chunk::new(i * per, records(i * per..(i + 1) * per))),
            );
        }
        assert_eq!(reads.order.len(), 4, "four small reads fit");
        reads.keep(&key, &big(4 * per));
        assert!(reads.bytes <= reads.max_bytes);
        assert!(
            reads.order.len() <= 2,
            "a large read pushed out more than one"
        );
        assert!(Arc::ptr_eq(
            &reads.order.back().unwrap().1,
            reads.partitions[&key].recent(4 * per).unwrap()
        ));
        // A read larger than the whole bound is not kept; nothing is dropped for it.
        let mut none = Reads {
            max_bytes: 1000,
            ..Reads::default()
        };
        none.keep(&key, &big(0));
        assert!(none.order.is_empty() && none.bytes == 0);
    }
}
