//! The live consumer: one thread, `assign()`ed to every partition of the
//! served topics, handing records to the hub in offset order; it also runs the
//! metadata refresh (topics added, recreated or deleted) and the warm start.

use super::*;

/// The live consumer thread's state.
pub(super) struct Live {
    inner: Arc<Inner>,
    consumer: Arc<BaseConsumer<FetchStats>>,
    /// Topic name -> hub topic, for the hot path (no lock per record).
    by_name: HashMap<String, Arc<Topic>>,
    /// Topic name -> how its messages are decoded, filled as topics are seen.
    decodings: HashMap<String, decode::Decoding>,
    /// (topic, partition) -> high watermark when the topic was added: it is
    /// served once all of its partitions reach theirs.
    warm_targets: Vec<(Arc<Topic>, u32, u64)>,
    /// Topics found in Kafka whose watermarks could not be read yet.
    unwatermarked: HashSet<String>,
    last_refresh: Instant,
    refresh_soon: bool,
    connected: bool,
    missing_logged: HashMap<String, bool>,
    /// Partitions of registry-read topics paused because the registry has not
    /// answered yet, with the offset to read again from once it has.
    held: HashMap<(String, i32), i64>,
}

impl Live {
    pub(super) fn new(inner: Arc<Inner>, consumer: BaseConsumer<FetchStats>) -> Self {
        Self {
            inner,
            consumer: Arc::new(consumer),
            by_name: HashMap::new(),
            decodings: HashMap::new(),
            warm_targets: Vec::new(),
            unwatermarked: HashSet::new(),
            last_refresh: Instant::now(),
            refresh_soon: false,
            connected: true,
            missing_logged: HashMap::new(),
            held: HashMap::new(),
        }
    }

    pub(super) fn run(&mut self, shutdown: &Shutdown) {
        telemetry::kafka_connected(true);
        let consumer = Arc::clone(&self.consumer);
        while !shutdown.is_triggered() {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    if !self.connected {
                        self.set_connected(true);
                    }
                    self.handle(&msg);
                }
                Some(Err(e)) => self.on_error(e),
            }
            if !self.held.is_empty() && self.registry_up() {
                self.release();
            }
            if !self.warm_targets.is_empty() || !self.inner.ready.load(Ordering::Relaxed) {
                self.check_warm();
            }
            if self.inner.refresh_wanted.swap(false, Ordering::AcqRel) {
                self.refresh_soon = true;
            }
            let every = self.inner.config.metadata_refresh_interval;
            let due = self.last_refresh.elapsed() >= every
                || (self.refresh_soon && self.last_refresh.elapsed() >= Duration::from_millis(200));
            if due {
                self.last_refresh = Instant::now();
                self.refresh_soon = false;
                self.refresh();
            }
        }
        tracing::debug!("kafka consumer stopped");
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>) {
        let Some(topic) = self.by_name.get(msg.topic()) else {
            return;
        };
        // Resolved once per topic name (a pattern match is not free), then cached:
        // the rules never change while the node runs.
        let how = match self.decodings.get(msg.topic()) {
            Some(how) => *how,
            None => {
                let how = self.inner.decoding(msg.topic());
                self.decodings.insert(msg.topic().to_owned(), how);
                how
            }
        };
        if how.needs_registry() && !self.registry_up() {
            self.hold(msg);
            return;
        }
        match decode::decode(
            msg,
            self.inner.config.max_record_bytes,
            how,
            self.inner.registry.as_deref(),
        ) {
            Ok(mut record) => {
                if how.format == RecordFormat::Debezium && !record.delete {
                    fill_unavailable(topic, &mut record);
                }
                topic.ingest(&record);
            }
            Err(bad) => {
                self.inner.bad_record(msg, bad);
                // The position moves past it, so cursors never point at it again.
                topic.advance(msg.partition() as u32, msg.offset() as u64 + 1);
            }
        }
    }

    /// Whether the schema registry has answered (true when there is none).
    fn registry_up(&self) -> bool {
        self.inner.registry.as_ref().is_none_or(|r| r.is_up())
    }

    /// Pauses the partition of `msg` (its topic is read through a registry that has not
    /// answered yet): nothing of it is read until [`Live::release`], so no record goes
    /// to the failure track for a registry that was merely late at start.
    fn hold(&mut self, msg: &BorrowedMessage<'_>) {
        let key = (msg.topic().to_owned(), msg.partition());
        if self.held.contains_key(&key) {
            // Fetched before the pause took effect: read again at release.
            return;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&key.0, key.1);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, topic = %key.0, partition = key.1, "cannot pause a partition");
        }
        tracing::info!(topic = %key.0, partition = key.1, offset = msg.offset(), "waiting for the schema registry before reading this partition");
        self.held.insert(key, msg.offset());
    }

    /// Reads the held partitions again from where they were held.
    fn release(&mut self) {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in self.held.drain() {
            if let Err(e) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(1),
            ) {
                tracing::warn!(error = %e, %topic, partition, "cannot seek a held partition");
            }
            list.add_partition(&topic, partition);
        }
        if let Err(e) = self.consumer.resume(&list) {
            tracing::warn!(error = %e, "cannot resume held partitions");
        }
        tracing::info!("schema registry answered: reading the held partitions");
    }

    fn on_error(&mut self, e: KafkaError) {
        let code = e.rdkafka_error_code();
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown)
            | Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                if self.connected {
                    tracing::warn!(error = %e, "Kafka broker connection lost; clients stay connected");
                    self.set_connected(false);
                }
            }
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownTopic)
            | Some(RDKafkaErrorCode::UnknownPartition)
            | Some(RDKafkaErrorCode::OffsetOutOfRange)
            | Some(RDKafkaErrorCode::AutoOffsetReset) => {
                tracing::info!(error = %e, "Kafka reports a topic change; refreshing metadata");
                self.refresh_soon = true;
            }
            _ => tracing::debug!(error = %e, "Kafka consumer error"),
        }
    }

    fn set_connected(&mut self, up: bool) {
        if up && !self.connected {
            tracing::info!("Kafka broker connection restored");
        }
        self.connected = up;
        telemetry::kafka_connected(up);
    }

    /// Marks each topic whose partitions all reached their warm targets ready,
    /// and the node once every topic is.
    fn check_warm(&mut self) {
        let reached = |(t, p, target): &(Arc<Topic>, u32, u64)| {
            t.frontier().get(*p as usize).copied().unwrap_or(0) >= *target
        };
        // Offsets that hold no record for this node (transaction markers, and
        // aborted records under read_committed) still move the consumer's
        // position; without it a partition whose log ends in a commit marker
        // would never reach its target and the topic would warm forever.
        if self.warm_targets.iter().any(|e| !reached(e)) {
            if let Ok(positions) = self.consumer.position() {
                for (t, p, _) in &self.warm_targets {
                    // A held partition's position is past records it has not ingested
                    // yet: it is read again from where it was held.
                    if self.held.contains_key(&(t.name.to_string(), *p as i32)) {
                        continue;
                    }
                    let at = positions
                        .find_partition(&t.name, *p as i32)
                        .map(|e| e.offset());
                    if let Some(Offset::Offset(next)) = at {
                        t.advance(*p, next.max(0) as u64);
                    }
                }
            }
        }
        let mut pending: Vec<&Arc<Topic>> = Vec::new();
        for entry in &self.warm_targets {
            if !reached(entry) && !pending.iter().any(|t| Arc::ptr_eq(t, &entry.0)) {
                pending.push(&entry.0);
            }
        }
        let mut done: Vec<Arc<Topic>> = Vec::new();
        let registry_up = self.registry_up();
        for (topic, _, _) in &self.warm_targets {
            // A topic read through a registry that has not answered is not served yet.
            let waiting = pending.iter().any(|t| Arc::ptr_eq(t, topic))
                || (!registry_up && self.inner.decoding(&topic.name).needs_registry());
            if !waiting && !done.iter().any(|t| Arc::ptr_eq(t, topic)) {
                done.push(Arc::clone(topic));
            }
        }
        for topic in &done {
            topic.mark_ready();
            tracing::info!(topic = %topic.name, "warm start done: topic served");
        }
        self.warm_targets
            .retain(|(t, _, _)| !done.iter().any(|d| Arc::ptr_eq(d, t)));
        if self.warm_targets.is_empty()
            && self.unwatermarked.is_empty()
            && !self.inner.ready.load(Ordering::Relaxed)
        {
            self.inner.ready.store(true, Ordering::Release);
            tracing::info!("Kafka warm start done: ready");
        }
    }

    fn refresh(&mut self) {
        // The admin client is never assigned anything, so nothing else polls it:
        // serve its queued error and log events here, or they pile up for as
        // long as a broker outage lasts.
        for _ in 0..1024 {
            if self.inner.admin.poll(Duration::ZERO).is_none() {
                break;
            }
        }
        let known: Vec<String> = self
            .inner
            .topics
            .read()
            .expect("topics lock")
            .keys()
            .cloned()
            .collect();
        let started = Instant::now();
        let described = discover(self.inner.admin.client(), &self.inner.rules, &known);
        match described {
            Ok(described) => {
                if !self.connected {
                    self.set_connected(true);
                }
                self.apply(described);
                // After apply: a waiting resume then sees the grown partition count.
                self.inner.refreshed.send_replace(Some(started));
                self.publish_lag();
            }
            Err(e) => {
                tracing::debug!(error = %e, "metadata refresh failed");
                if self.connected {
                    self.set_connected(false);
                }
            }
        }
    }

    /// Registers new topics, grows partitions, replaces recreated topics, and
    /// re-assigns the consumer when anything changed.
    pub(super) fn apply(&mut self, described: Vec<(String, Described)>) {
        let mut changed = false;
        for (name, desc) in described {
            let Some(tc) = self.inner.rules.topic_for(&name) else {
                continue;
            };
            let settings = TopicSettings {
                ring_records: tc.ring_records,
                view_max_keys: tc.view_max_keys,
                view_max_bytes: tc.view_max_bytes,
            };
            let by_pattern = tc.pattern.is_some();
            let known = self.inner.known(&name);
            if !matches!(desc, Described::Denied { .. })
                && self
                    .inner
                    .denied
                    .write()
                    .expect("denied lock")
                    .remove(&name)
                    .is_some()
            {
                tracing::info!(topic = %name, "topic now authorized: warming it up");
            }
            match (desc, known) {
                (Described::Denied { reason }, _) => {
                    // Not added (nor waited for by readiness): fetching would
                    // only fail. A topic served before keeps what it has.
                    let mut denied = self.inner.denied.write().expect("denied lock");
                    if denied.insert(name.clone(), reason.clone()).is_none() {
                        tracing::error!(topic = %name, "topic not served: {reason}; it is served once the ACLs allow READ, no restart needed");
                    }
                }
                (Described::Missing, Some(k)) if k.by_pattern => {
                    // Deleted, and nothing names it: no longer served. Its
                    // subscribers are closed (4004); resubscribing answers
                    // unknown_topic until a topic of that name exists again.
                    self.forget(&name, &k);
                    changed = true;
                }
                (Described::Missing, Some(_)) => {
                    // Deleted: stop reading it so a new incarnation is never
                    // read into the old one; it is picked up again when it returns.
                    if self.by_name.remove(&name).is_some() {
                        tracing::warn!(topic = %name, "topic no longer exists in Kafka; waiting for it to return");
                        changed = true;
                    }
                }
                (Described::Missing, None) => {
                    // Gone before its watermarks could be read: nothing to wait for.
                    self.unwatermarked.remove(&name);
                    if by_pattern {
                        continue;
                    }
                    if !self
                        .missing_logged
                        .insert(name.clone(), true)
                        .unwrap_or(false)
                    {
                        tracing::warn!(topic = %name, "configured topic does not exist in Kafka yet; it is picked up once created");
                    }
                }
                (Described::Found { id, partitions }, Some(k)) if k.id == id => {
                    if !self.by_name.contains_key(&name) {
                        self.by_name.insert(name.clone(), Arc::clone(&k.hub));
                        changed = true;
                    }
                    if partitions > k.partitions {
                        tracing::info!(topic = %name, from = k.partitions, to = partitions, "partitions added");
                        k.hub.ensure_partitions(partitions);
                        self.inner.set_known(&name, Known { partitions, ..k });
                        changed = true;
                    }
                }
                (Described::Found { id, partitions }, known) => {
                    let Some(marks) = self.watermarks(&name, partitions) else {
                        // Retried soon; until then the topic is not served,
                        // and the node is not ready.
                        self.refresh_soon = true;
                        self.unwatermarked.insert(name.clone());
                        continue;
                    };
                    self.unwatermarked.remove(&name);
                    let recreated = known.is_some();
                    let epoch = topic_epoch(&self.inner.cluster_id, id.as_ref(), &name);
                    if id.is_none() {
                        tracing::warn!(topic = %name, "the broker reports no topic id: a recreated topic cannot be detected");
                    }
                    let hub_topic = self.inner.hub.add_topic(&name, epoch, partitions, settings);
                    if let Some(old) = known {
                        tracing::warn!(topic = %name, "topic was recreated (new topic id): new epoch, subscribers resume");
                        old.hub.close();
                        self.inner.earliest.forget(&name);
                        self.warm_targets
                            .retain(|(t, _, _)| !Arc::ptr_eq(t, &old.hub));
                    }
                    self.warm(&hub_topic, &marks, recreated);
                    self.inner.set_known(
                        &name,
                        Known {
                            hub: Arc::clone(&hub_topic),
                            id,
                            partitions,
                            by_pattern,
                        },
                    );
                    self.by_name.insert(name.clone(), hub_topic);
                    changed = true;
                }
            }
        }
        if changed {
            self.assign();
        }
    }

    /// Stops serving a deleted topic: unassigned (by the caller), out of the
    /// hub and `GET /topics`, its subscribers disconnected.
    fn forget(&mut self, name: &str, known: &Known) {
        self.by_name.remove(name);
        self.inner.topics.write().expect("topics lock").remove(name);
        self.warm_targets
            .retain(|(t, _, _)| !Arc::ptr_eq(t, &known.hub));
        let closed = self.inner.hub.remove_topic(&known.hub);
        tracing::warn!(topic = %name, subscribers = closed, "topic deleted in Kafka: no longer served; its subscribers were closed (4004)");
    }

    /// (low, high) watermarks of every partition, or `None` if any cannot be read.
    fn watermarks(&self, name: &str, partitions: u32) -> Option<Vec<(u64, u64)>> {
        (0..partitions)
            .map(|p| {
                match self
                    .inner
                    .admin
                    .fetch_watermarks(name, p as i32, META_TIMEOUT)
                {
                    Ok((l, h)) => Some((l.max(0) as u64, h.max(0) as u64)),
                    Err(e) => {
                        tracing::warn!(topic = %name, partition = p, error = %e, "cannot read watermarks yet; the topic is served once they are known");
                        None
                    }
                }
            })
            .collect()
    }

    /// Positions a new topic's partitions for the warm start; it is served
    /// once each has reached the high watermark in `marks`.
    fn warm(&mut self, topic: &Arc<Topic>, marks: &[(u64, u64)], recreated: bool) {
        for (p, &(low, high)) in marks.iter().enumerate() {
            // A recreated topic is new to every client: read all of it.
            let mode = if recreated {
                WarmStart::Earliest
            } else {
                self.inner.config.warm_start
            };
            topic.advance(
                p as u32,
                warm_from(mode, self.inner.warm_records, low, high),
            );
            self.warm_targets.push((Arc::clone(topic), p as u32, high));
        }
    }

    /// Assigns every partition of every live topic at the hub's next offset.
    fn assign(&mut self) {
        let mut list = TopicPartitionList::new();
        for (name, topic) in &self.by_name {
            for (p, next) in topic.frontier().into_iter().enumerate() {
                if let Err(e) =
                    list.add_partition_offset(name, p as i32, Offset::Offset(next as i64))
                {
                    tracing::error!(error = %e, "cannot build the assignment");
                }
            }
        }
        match self.consumer.assign(&list) {
            Ok(()) => tracing::info!(partitions = list.count(), "assigned"),
            Err(e) => {
                tracing::error!(error = %e, "assign failed; retrying at the next refresh");
                self.refresh_soon = true;
            }
        }
    }

    fn publish_lag(&self) {
        for (name, topic) in &self.by_name {
            for (p, next) in topic.frontier().into_iter().enumerate() {
                if let Ok((_, high)) =
                    self.inner
                        .admin
                        .fetch_watermarks(name, p as i32, META_TIMEOUT)
                {
                    let high = high.max(0) as u64;
                    topic.set_high_watermark(p as u32, high);
                    let lag = high.saturating_sub(next);
                    telemetry::kafka_lag(name, p as u32, lag);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::rules;
    use super::*;
    use crate::hub::{Filter, SubscribeOptions};
    use crate::outbox::{CloseReason, Outbox};

    /// A live consumer whose clients point at a closed port: `apply` of a
    /// deletion needs no broker (assign() is local).
    fn offline_live(config: &Settings, hub: Arc<Hub>) -> Live {
        let kc = config.kafka.clone();
        let inner = Arc::new(Inner {
            catchup: CatchUpReader::new(&kc),
            earliest: Default::default(),
            admin: consumer_config(&kc, false)
                .create_with_context(security::Probe::new(&kc))
                .unwrap(),
            producer: base_config(&kc).create().unwrap(),
            config: kc.clone(),
            rules: config.rules.clone(),
            registry: None,
            warm_records: 10,
            hub,
            cluster_id: "c".into(),
            topics: RwLock::new(HashMap::new()),
            denied: RwLock::new(BTreeMap::new()),
            ready: AtomicBool::new(true),
            refresh_wanted: AtomicBool::new(false),
            refreshed: tokio::sync::watch::channel(None).0,
        });
        Live::new(
            inner,
            consumer_config(&kc, false)
                .create_with_context(FetchStats)
                .unwrap(),
        )
    }

    fn serve(live: &mut Live, name: &str, by_pattern: bool) -> (Arc<Topic>, Arc<Outbox>) {
        let settings = TopicSettings {
            ring_records: 4,
            view_max_keys: 4,
            view_max_bytes: 0,
        };
        let topic = live.inner.hub.add_topic(name, 7, 2, settings);
        topic.mark_ready();
        live.inner.set_known(
            name,
            Known {
                hub: Arc::clone(&topic),
                id: Some([1; 16]),
                partitions: 2,
                by_pattern,
            },
        );
        live.by_name.insert(name.to_owned(), Arc::clone(&topic));
        let outbox = Arc::new(Outbox::new(1 << 20));
        topic
            .register(SubscribeOptions::plain(Filter::all(), outbox.clone()))
            .sub
            .go_live()
            .unwrap();
        (topic, outbox)
    }

    #[test]
    fn a_denied_topic_is_reported_not_added_and_served_nowhere() {
        let config = rules("[[topics]]\nname = \"guarded\"\n");
        let hub = Arc::new(Hub::new());
        let mut live = offline_live(&config, Arc::clone(&hub));
        let reason = "not authorized: READ".to_owned();
        live.apply(vec![(
            "guarded".into(),
            Described::Denied {
                reason: reason.clone(),
            },
        )]);
        assert!(hub.topic("guarded").is_err(), "not in the hub");
        assert!(
            live.warm_targets.is_empty(),
            "readiness does not wait for it"
        );
        let source = KafkaSource {
            inner: Arc::clone(&live.inner),
        };
        assert_eq!(
            source.unavailable_cause("guarded").as_deref(),
            Some(reason.as_str())
        );
        assert_eq!(source.unavailable_cause("other"), None);
        // Allowed later: no longer reported (watermarks cannot be read offline,
        // so it is retried like any topic whose watermarks are unknown).
        live.apply(vec![(
            "guarded".into(),
            Described::Found {
                id: Some([1; 16]),
                partitions: 1,
            },
        )]);
        assert!(source.unavailable_topics().is_empty());
    }

    #[test]
    fn a_deleted_pattern_topic_is_forgotten_and_its_subscribers_closed() {
        let config = rules("[[topics]]\nname = \"named\"\n[[topics]]\npattern = \"db\\\\..*\"\n");
        let hub = Arc::new(Hub::new());
        let mut live = offline_live(&config, Arc::clone(&hub));
        let (_, matched_out) = serve(&mut live, "db.a", true);
        let (_, kept_out) = serve(&mut live, "db.b", true);
        let (named, named_out) = serve(&mut live, "named", false);
        live.warm_targets.push((hub.topic("db.a").unwrap(), 0, 100));

        live.apply(vec![
            ("db.a".into(), Described::Missing),
            (
                "db.b".into(),
                Described::Found {
                    id: Some([1; 16]),
                    partitions: 2,
                },
            ),
            ("named".into(), Described::Missing),
        ]);

        assert!(hub.topic("db.a").is_err(), "left GET /topics");
        assert!(live.inner.known("db.a").is_none());
        assert!(!live.by_name.contains_key("db.a"), "no longer read");
        assert!(live.warm_targets.is_empty(), "nothing left to wait for");
        assert_eq!(matched_out.closed_reason(), Some(CloseReason::TopicReset));
        assert!(matches!(
            live.inner.partitions("db.a"),
            Err(SourceError::UnknownTopic)
        ));
        // Untouched: the one still there, and a named topic (waits for its return).
        assert!(hub.topic("db.b").is_ok());
        assert_eq!(kept_out.closed_reason(), None);
        assert!(Arc::ptr_eq(&hub.topic("named").unwrap(), &named));
        assert_eq!(named_out.closed_reason(), None);
        assert!(
            !live.by_name.contains_key("named"),
            "not read while missing"
        );
    }
}
