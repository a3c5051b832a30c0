//! The embedded log's one writer thread: group commit, retention, topics created on first publish.

use super::*;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// Next offset per partition of each topic (by registry index), as committed.
    pub(super) next: Vec<Vec<u64>>,
    pub(super) round_robin: Vec<u32>,
    pub(super) retention_every: Duration,
    pub(super) last_retention: Instant,
    /// `durability = "os"` and not closed yet: batches commit without an fsync.
    pub(super) fast: bool,
    /// Batches were committed since the last fsync.
    pub(super) unsynced: bool,
    pub(super) last_sync: Instant,
    /// `embedded.commit_wait` (used with `durability = "fsync"` only).
    pub(super) commit_wait: Duration,
    /// Appends per second reaching the writer, smoothed over about
    /// [`ARRIVALS_SMOOTHING`] seconds; decides whether a batch waits for more.
    pub(super) arrivals: f64,
    /// When the previous batch's first append was picked up.
    pub(super) last_pick: Instant,
}

/// A batch waits `commit_wait` for more only when at least this many more
/// appends are expected meanwhile: fewer would add latency for little saving.
const LINGER_ARRIVALS: f64 = 2.0;
/// Seconds over which the arrival rate is smoothed.
const ARRIVALS_SMOOTHING: f64 = 0.1;

/// Moves `next` and every message already queued into `batch` (up to
/// [`MAX_BATCH`]); stops at a `Close`, which it puts in `close`.
fn drain(
    rx: &mut mpsc::Receiver<Message>,
    mut next: Option<Message>,
    batch: &mut Vec<Append>,
    close: &mut Option<oneshot::Sender<()>>,
) {
    while let Some(message) = next {
        match message {
            Message::Append(append) => batch.push(append),
            Message::Tick => {}
            Message::Close(reply) => {
                *close = Some(reply);
                return;
            }
        }
        if batch.len() >= MAX_BATCH {
            return;
        }
        next = rx_next(rx);
    }
}

fn rx_next(rx: &mut mpsc::Receiver<Message>) -> Option<Message> {
    rx.try_recv().ok()
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        // Ends when every sender is gone: the log was dropped.
        while let Some(first) = rx.blocking_recv() {
            let picked = Instant::now();
            let mut batch = Vec::new();
            let mut close = None;
            drain(&mut rx, Some(first), &mut batch, &mut close);
            if close.is_none() && !batch.is_empty() && batch.len() < MAX_BATCH && self.linger() {
                // Publishes are arriving faster than one per `commit_wait`:
                // wait that long for more and commit (and fsync) them together.
                let deadline = picked + self.commit_wait;
                let now = Instant::now();
                if deadline > now {
                    std::thread::sleep(deadline - now);
                }
                let next = rx_next(&mut rx);
                drain(&mut rx, next, &mut batch, &mut close);
            }
            self.count_arrivals(picked, batch.len());
            if !batch.is_empty() {
                self.append(batch, picked);
            }
            self.maybe_retain();
            if let Some(reply) = close {
                self.close();
                let _ = reply.send(());
            } else if self.unsynced && (rx.is_empty() || self.last_sync.elapsed() >= OS_SYNC_EVERY)
            {
                self.sync();
            }
        }
        if self.unsynced {
            self.sync();
        }
        tracing::debug!("log writer stopped");
    }

    /// Whether to hold the batch open: only fsynced batches (an `"os"` commit
    /// is cheap) and only while at least [`LINGER_ARRIVALS`] more publishes
    /// are expected within `commit_wait`, so a lone publish never waits.
    fn linger(&self) -> bool {
        !self.fast
            && !self.commit_wait.is_zero()
            && self.arrivals * self.commit_wait.as_secs_f64() >= LINGER_ARRIVALS
    }

    /// Updates the smoothed rate of appends from a batch of `n` picked up at
    /// `picked`: a long gap since the previous batch replaces the old rate
    /// (after a quiet spell the first publishes do not wait).
    fn count_arrivals(&mut self, picked: Instant, n: usize) {
        let gap = picked
            .saturating_duration_since(self.last_pick)
            .as_secs_f64()
            .max(1e-6);
        self.last_pick = picked;
        let weight = 1.0 - (-gap / ARRIVALS_SMOOTHING).exp();
        self.arrivals += weight * (n as f64 / gap - self.arrivals);
    }

    /// Makes every batch committed so far durable (one fsync).
    fn sync(&mut self) {
        let started = Instant::now();
        match self.durable_commit(false) {
            Ok(()) => {
                self.unsynced = false;
                crate::telemetry::log_sync_latency(started.elapsed());
            }
            Err(e) => tracing::error!(error = %e, "background fsync failed"),
        }
        self.last_sync = Instant::now();
    }

    /// The clean end of an `"os"` run: fsync, clear `unsynced`, and commit
    /// every later batch durably so the flag stays true.
    fn close(&mut self) {
        match self.durable_commit(true) {
            Ok(()) => {
                self.unsynced = false;
                self.fast = false;
            }
            Err(e) => tracing::error!(error = %e, "closing the log failed"),
        }
    }

    /// An fsynced commit, which makes the unsynced ones before it durable;
    /// `clean` also clears the `unsynced` flag.
    fn durable_commit(&self, clean: bool) -> Result<(), redb::Error> {
        let mut txn = self.shared.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        if clean {
            let mut meta = txn.open_table(META)?;
            meta.insert("unsynced", 0)?;
        }
        txn.commit()?;
        crate::telemetry::log_commit();
        Ok(())
    }

    /// The registry's topics, with `next` and `round_robin` grown to cover
    /// topics created since the last call.
    fn topics(&mut self) -> Vec<Arc<TopicLog>> {
        let topics = self.shared.topics();
        for topic in &topics[self.next.len().min(topics.len())..] {
            self.next.push(topic.start.clone());
            self.round_robin.push(0);
        }
        topics
    }

    /// Commits `batch` (its first append picked up at `started`), fans it
    /// out and answers its publishers.
    fn append(&mut self, batch: Vec<Append>, started: Instant) {
        let timestamp = now_ms();
        let topics = self.topics();
        let mut next = self.next.clone();
        let mut placed: Vec<Vec<Appended>> = Vec::with_capacity(batch.len());
        for req in &batch {
            let parts = topics[req.topic].partitions;
            let mut out = Vec::with_capacity(req.records.len());
            for rec in &req.records {
                let partition = match &rec.key {
                    Some(key) => partition_for_key(key.as_bytes(), parts),
                    None => {
                        let rr = &mut self.round_robin[req.topic];
                        *rr = rr.wrapping_add(1);
                        *rr % parts
                    }
                };
                let slot = &mut next[req.topic][partition as usize];
                out.push(Appended {
                    partition,
                    offset: *slot,
                    position: None,
                });
                *slot += 1;
            }
            placed.push(out);
        }
        if let Err(e) = self.commit(&topics, &batch, &placed, &next, timestamp) {
            tracing::error!(error = %e, "append failed");
            // Every waiter of the batch gets the same cause.
            let e = Arc::new(e);
            for req in batch {
                let _ = req
                    .reply
                    .send(Err(SourceError::Storage(Box::new(Arc::clone(&e)))));
            }
            return;
        }
        self.next = next;
        // Visible to subscribers before the publisher hears back; snapshots
        // read the latest table in a transaction holding exactly this batch.
        self.shared.repin(|| {
            for (req, out) in batch.into_iter().zip(placed) {
                let topic = &topics[req.topic];
                for (rec, at) in req.records.into_iter().zip(&out) {
                    // The log's end, so lag is 0 once ingested.
                    topic.hub.set_high_watermark(at.partition, at.offset + 1);
                    topic.hub.ingest(&stored(
                        at.partition,
                        at.offset,
                        timestamp,
                        rec.key,
                        rec.data,
                        rec.trace,
                    ));
                }
                let _ = req.reply.send(Ok(out));
            }
        });
        crate::telemetry::append_latency(started.elapsed());
    }

    fn commit(
        &mut self,
        topics: &[Arc<TopicLog>],
        batch: &[Append],
        placed: &[Vec<Appended>],
        next: &[Vec<u64>],
        timestamp: i64,
    ) -> Result<(), redb::Error> {
        let mut txn = self.shared.db.begin_write()?;
        let durability = if self.fast {
            Durability::None
        } else {
            Durability::Immediate
        };
        txn.set_durability(durability)
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        {
            let mut positions = txn.open_table(POSITIONS)?;
            // Each topic's tables are opened once per batch: its appends in
            // batch order (the stable sort keeps it), so the latest record
            // per key is the last one written.
            let mut order: Vec<usize> = (0..batch.len()).collect();
            order.sort_by_key(|&i| batch[i].topic);
            for group in order.chunk_by(|&a, &b| batch[a].topic == batch[b].topic) {
                let t = batch[group[0]].topic;
                let topic = &topics[t];
                let mut table = txn.open_table(records_table(&topic.table))?;
                let latest_name = latest::latest_name(&topic.name);
                let mut latest = txn.open_table(latest::latest_table(&latest_name))?;
                for &i in group {
                    for (rec, at) in batch[i].records.iter().zip(&placed[i]) {
                        let bytes = encode(timestamp, rec);
                        table.insert((at.partition, at.offset), bytes.as_slice())?;
                        // The latest record per key, in the same transaction: a
                        // tombstone deletes the key.
                        if let Some(key) = rec.key.as_deref() {
                            if &*rec.data == "null" {
                                latest.remove((at.partition, key))?;
                            } else {
                                let value = latest::latest_value(at.offset, &bytes);
                                latest.insert((at.partition, key), value.as_slice())?;
                            }
                        }
                    }
                }
                for (p, n) in next[t].iter().enumerate() {
                    positions.insert((topic.name.as_str(), p as u32), *n)?;
                }
            }
        }
        txn.commit()?;
        crate::telemetry::log_commit();
        self.unsynced |= self.fast;
        Ok(())
    }

    fn maybe_retain(&mut self) {
        if self.last_retention.elapsed() < self.retention_every {
            return;
        }
        self.last_retention = Instant::now();
        if let Err(e) = self.retain() {
            tracing::error!(error = %e, "retention pass failed");
        }
    }

    /// Deletes records beyond each topic's count and age limits.
    fn retain(&mut self) -> Result<(), redb::Error> {
        let now = now_ms();
        let mut updates = Vec::new();
        let topics = self.topics();
        let txn = self.shared.db.begin_write()?;
        {
            for (t, topic) in topics.iter().enumerate() {
                if topic.retention_records == 0 && topic.retention_age.is_none() {
                    continue;
                }
                let mut table = txn.open_table(records_table(&topic.table))?;
                for p in 0..topic.partitions {
                    let next = self.next[t][p as usize];
                    let earliest = topic.earliest[p as usize].load(Ordering::Acquire);
                    let mut cut = earliest;
                    if topic.retention_records > 0 {
                        cut = cut.max(next.saturating_sub(topic.retention_records));
                    }
                    if let Some(age) = topic.retention_age {
                        let cutoff = now - age.as_millis() as i64;
                        for entry in table.range((p, cut)..(p, next))?.take(MAX_TRIM) {
                            let (k, v) = entry?;
                            if decode(p, 0, v.value()).timestamp >= cutoff {
                                break;
                            }
                            cut = k.value().1 + 1;
                        }
                    }
                    let cut = cut.min(earliest + MAX_TRIM as u64);
                    if cut > earliest {
                        table.retain_in((p, earliest)..(p, cut), |_, _| false)?;
                        updates.push((t, p, cut));
                    }
                }
            }
        }
        // Fsynced (redb's default): batches committed before it are durable too.
        txn.commit()?;
        crate::telemetry::log_commit();
        self.unsynced = false;
        for (t, p, cut) in updates {
            topics[t].earliest[p as usize].store(cut, Ordering::Release);
        }
        Ok(())
    }
}
