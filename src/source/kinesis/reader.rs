//! One reader task per shard: GetRecords at most once per `poll_interval`, backoff, ingest in order.

use super::*;

/// One shard's reader: waits for its parents, then reads to the shard's end (or forever).
pub(super) struct Reader {
    pub(super) source: Arc<KinesisSource>,
    pub(super) stream: Arc<Stream>,
    pub(super) shard_id: String,
    pub(super) number: u32,
    pub(super) parents: Vec<watch::Receiver<bool>>,
    pub(super) done: watch::Sender<bool>,
    pub(super) caught_up: watch::Sender<bool>,
    pub(super) shutdown: Shutdown,
}

impl Reader {
    pub(super) async fn run(mut self) {
        for parent in &mut self.parents {
            tokio::select! {
                _ = parent.wait_for(|d| *d) => {}
                () = self.shutdown.triggered() => return,
            }
        }
        let config = self.source.config.clone();
        let topic = Arc::clone(&self.stream.topic);
        let mut last: Option<String> = None;
        let mut next_ordinal: u64 = 0;
        let mut iterator: Option<String> = None;
        let mut backoff = config.poll_interval;
        let mut next_call = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_call) => {}
                () = self.shutdown.triggered() => return,
            }
            if self.stream.retired.load(Ordering::Acquire) {
                return;
            }
            next_call = Instant::now() + config.poll_interval;
            let it = match iterator.take() {
                Some(it) => it,
                None => {
                    let (kind, seq) = match &last {
                        Some(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq.as_str())),
                        None => (ShardIteratorType::TrimHorizon, None),
                    };
                    match self
                        .source
                        .iterator(&self.stream.name, &self.shard_id, kind, seq)
                        .await
                    {
                        Ok(it) => it,
                        Err(e) => {
                            tracing::warn!(stream = %self.stream.name, shard = %self.shard_id, error = %e, "GetShardIterator failed; retrying");
                            next_call = Instant::now() + backoff;
                            backoff = (backoff * 2).min(config.max_backoff);
                            continue;
                        }
                    }
                }
            };
            let answer = tokio::select! {
                a = self
                    .source
                    .client
                    .get_records()
                    .shard_iterator(&it)
                    .limit(config.records_per_call)
                    .send() => a,
                () = self.shutdown.triggered() => return,
            };
            let out = match answer {
                Ok(out) => out,
                Err(e) => {
                    match e.as_service_error() {
                        Some(GetRecordsError::ProvisionedThroughputExceededException(_)) => {
                            telemetry::kinesis_throttled("get_records");
                            tracing::debug!(shard = %self.shard_id, "throttled; backing off");
                            iterator = Some(it);
                        }
                        Some(GetRecordsError::ExpiredIteratorException(_)) => {}
                        _ => {
                            tracing::warn!(stream = %self.stream.name, shard = %self.shard_id, error = %describe(&e), "GetRecords failed; retrying")
                        }
                    }
                    next_call = Instant::now() + backoff;
                    backoff = (backoff * 2).min(config.max_backoff);
                    continue;
                }
            };
            backoff = config.poll_interval;
            let serial = self.stream.ingest.lock().expect("ingest lock");
            for r in out.records() {
                let seq = r.sequence_number();
                if decimal_to_position(seq).is_none() {
                    tracing::warn!(shard = %self.shard_id, sequence = seq, "record with an unreadable sequence number skipped");
                    continue;
                }
                topic.ingest(&log_record(r, self.number, next_ordinal));
                next_ordinal += 1;
                last = Some(seq.to_owned());
            }
            drop(serial);
            let behind = out.millis_behind_latest().unwrap_or(0);
            telemetry::kinesis_behind(&self.stream.name, self.number, behind);
            match out.next_shard_iterator() {
                Some(next) => {
                    iterator = Some(next.to_owned());
                    // At the end of what is there: Kinesis says it is not behind
                    // (an empty page may come while it still is) and the page was not full.
                    let full = out.records().len() >= config.records_per_call as usize;
                    if behind == 0 && !full {
                        self.caught_up.send_replace(true);
                    }
                    if behind > 0 || full {
                        // More is waiting: the next call as soon as the per-shard limit allows.
                        next_call = Instant::now() + Duration::from_millis(200);
                    }
                }
                None => {
                    // Closed and read to its end: children may start.
                    topic.close_partition(self.number);
                    self.caught_up.send_replace(true);
                    self.done.send_replace(true);
                    tracing::info!(stream = %self.stream.name, shard = %self.shard_id, records = next_ordinal, "shard closed and read to its end");
                    return;
                }
            }
        }
    }
}
