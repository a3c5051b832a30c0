//! Telemetry: every metric name in one place, with low-cardinality labels only.
//!
//! Metrics go through the `metrics` facade; `/metrics` renders them in the
//! Prometheus text format. Hot paths count per record (not per delivery) so
//! fan-out to thousands of subscribers costs one counter update, through
//! handles registered once ([`Hot`]): a `counter!` or `histogram!` call
//! allocates on every use (the registry hands out a fresh `Arc`, a labelled
//! key is copied), which per record was a tenth of the allocator's calls.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics::{Counter, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "pushgate_connections";
pub const CONNECTIONS_TOTAL: &str = "pushgate_connections_total";
pub const CONNECTIONS_REFUSED: &str = "pushgate_connections_refused_total";
pub const SUBSCRIPTIONS: &str = "pushgate_subscriptions";
pub const RECORDS_IN: &str = "pushgate_records_in_total";
pub const DELIVERIES: &str = "pushgate_deliveries_total";
/// WebSocket record frames the fan-out loop wrote to an idle socket itself
/// (`websocket.direct_writes`), not through the connection's task; the rest
/// of `pushgate_deliveries_total` went through the task.
pub const DIRECT_WRITES: &str = "pushgate_ws_direct_writes_total";
pub const SLOW_DISCONNECTS: &str = "pushgate_slow_disconnects_total";
pub const WRITE_TIMEOUTS: &str = "pushgate_write_timeouts_total";
pub const REPLAYED: &str = "pushgate_replayed_records_total";
pub const GAPS: &str = "pushgate_resume_gaps_total";
pub const SNAPSHOTS_PARTIAL: &str = "pushgate_snapshots_partial_total";
/// Catch-ups whose backlog overflowed (a long snapshot under heavy writes)
/// and that read what it dropped again from the ring or the log.
pub const CATCHUP_RESYNCS: &str = "pushgate_catchup_resyncs_total";
/// Streaming snapshots moved on to the views as they are now, so as not to
/// hold more than `limits.snapshot_hold_bytes` of what the views let go.
pub const SNAPSHOTS_MOVED: &str = "pushgate_snapshots_moved_total";
pub const PUBLISH_SECONDS: &str = "pushgate_publish_seconds";
pub const APPEND_SECONDS: &str = "pushgate_log_append_seconds";
/// Write transactions the embedded log committed (batches of publishes, background fsyncs, retention passes).
pub const LOG_COMMITS: &str = "pushgate_log_commits_total";
/// `embedded.durability = "os"`: one background fsync.
pub const SYNC_SECONDS: &str = "pushgate_log_sync_seconds";
pub const CLIENT_ERRORS: &str = "pushgate_client_errors_total";
pub const KAFKA_CONNECTED: &str = "pushgate_kafka_broker_connected";
pub const KAFKA_LAG: &str = "pushgate_kafka_consumer_lag";
pub const KAFKA_BAD_RECORDS: &str = "pushgate_kafka_bad_records_total";
/// Schemas fetched from the schema registry (each id once while it stays cached).
pub const SCHEMA_FETCHES: &str = "pushgate_schema_registry_fetches_total";
/// Registry requests that failed after their retries (the record went to the failure track).
pub const SCHEMA_REGISTRY_FAILURES: &str = "pushgate_schema_registry_failures_total";
/// Bytes of records the live consumer fetched from Kafka, per topic (from librdkafka's statistics).
pub const KAFKA_FETCH_BYTES: &str = "pushgate_kafka_fetch_bytes_total";
pub const KAFKA_CATCHUP_READS: &str = "pushgate_kafka_catchup_reads_total";
/// Catch-up range reads sent to the log for resuming clients; `_coalesced`: reads answered by one in flight that covered their start instead.
pub const CATCHUP_READS: &str = "pushgate_catchup_reads_total";
pub const CATCHUP_READS_COALESCED: &str = "pushgate_catchup_reads_coalesced_total";
/// Bytes of records held by recent catch-up reads node-wide (bounded by `limits.catchup_cache_bytes`).
pub const CATCHUP_CACHE_BYTES: &str = "pushgate_catchup_cache_bytes";
/// Records between the source's high watermark and what this node has ingested, per partition (Kafka and the embedded log).
pub const PARTITION_LAG: &str = "pushgate_partition_lag_records";
/// Bytes the in-memory views of a topic count for, all partitions (bounded by `view_max_bytes`).
pub const VIEW_BYTES: &str = "pushgate_view_bytes";
/// Seconds from a record's timestamp to its first write to a client, per transport (a histogram).
pub const RECORD_AGE: &str = "pushgate_record_age_seconds";
/// Revocations applied from the control topic (each record that put one in force).
pub const REVOCATIONS: &str = "pushgate_revocations_applied_total";
/// Connections ended because their token was revoked.
pub const REVOKED_CONNECTIONS: &str = "pushgate_revoked_connections_total";
pub const KINESIS_BEHIND: &str = "pushgate_kinesis_millis_behind_latest";
pub const KINESIS_THROTTLED: &str = "pushgate_kinesis_throttled_total";
pub const KINESIS_CATCHUP_READS: &str = "pushgate_kinesis_catchup_reads_total";

/// Span names (traces, `[telemetry] otlp_endpoint`; see src/traces.rs).
/// A record's arrival from the source: its parent is the producer's span
/// (the record's `traceparent`), when it has one.
pub const SPAN_INGEST: &str = "pushgate.ingest";
/// The record handed to every matching subscription (child of the ingest span).
pub const SPAN_FANOUT: &str = "pushgate.fanout";
/// From fan-out to the record's first write to a client, once per transport (child of the fan-out span).
pub const SPAN_DELIVER: &str = "pushgate.deliver";
/// A streaming connection, from admission to close.
pub const SPAN_CONNECTION: &str = "pushgate.connection";
/// A subscription's snapshot and replay, until it is live (child of its connection's span).
pub const SPAN_CATCH_UP: &str = "pushgate.catch_up";
/// Span attributes.
pub const ATTR_TOPIC: &str = "messaging.destination.name";
pub const ATTR_PARTITION: &str = "pushgate.partition";
pub const ATTR_OFFSET: &str = "pushgate.offset";
pub const ATTR_DELIVERIES: &str = "pushgate.deliveries";
pub const ATTR_TRANSPORT: &str = "pushgate.transport";
pub const ATTR_PEER: &str = "client.address";
pub const ATTR_RECOVERED: &str = "pushgate.recovered";
pub const ATTR_SNAPSHOT: &str = "pushgate.snapshot_records";
pub const ATTR_REPLAYED: &str = "pushgate.replayed_records";

/// From a few milliseconds (a local log) to minutes (a node far behind).
const AGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// At most this many distinct `topic` labels on per-topic metrics; later topics share `_other`.
pub const TOPIC_LABELS: usize = 100;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody
/// scrapes `/metrics`. The exporter keeps every sample (8 bytes, in blocks of
/// 64) until then, so without this an unscraped node grew by 8 bytes per
/// record and per publish for ever.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The per-record and per-request metrics, registered once with our recorder.
struct Hot {
    records_in: Counter,
    deliveries: Counter,
    direct_writes: Counter,
    /// `pushgate_record_age_seconds`, by [`crate::record::Transport`] label.
    age_ws: Histogram,
    age_sse: Histogram,
    age_grpc: Histogram,
    publish: Histogram,
    append: Histogram,
    sync: Histogram,
}

/// Set once our recorder is installed; until then (and when a host
/// application owns the recorder) the macros look the metric up each time.
static HOT: OnceLock<Hot> = OnceLock::new();

fn hot() -> Option<&'static Hot> {
    HOT.get()
}

/// The same counts as a few of the metrics, kept apart for `GET /admin/stats`
/// (the recorder cannot be read back, and a host application may own it).
static RECORDS_IN_N: AtomicU64 = AtomicU64::new(0);
static DELIVERIES_N: AtomicU64 = AtomicU64::new(0);
static REFUSED_N: AtomicU64 = AtomicU64::new(0);
static AGE_COUNT_N: AtomicU64 = AtomicU64::new(0);
static AGE_SUM_MICROS: AtomicU64 = AtomicU64::new(0);

/// Totals since the process started, for `GET /admin/stats`: a page computes
/// rates (and the mean record age) from two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub records_in: u64,
    pub deliveries: u64,
    pub connections_refused: u64,
    /// First writes measured by `pushgate_record_age_seconds`, all transports.
    pub record_age_count: u64,
    /// Their ages added up, in microseconds.
    pub record_age_sum_micros: u64,
}

pub fn totals() -> Totals {
    Totals {
        records_in: RECORDS_IN_N.load(Ordering::Relaxed),
        deliveries: DELIVERIES_N.load(Ordering::Relaxed),
        connections_refused: REFUSED_N.load(Ordering::Relaxed),
        record_age_count: AGE_COUNT_N.load(Ordering::Relaxed),
        record_age_sum_micros: AGE_SUM_MICROS.load(Ordering::Relaxed),
    }
}

/// Installs the Prometheus recorder once per process (a host application may
/// already have installed its own; then `/metrics` says so).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(RECORD_AGE.to_owned()), AGE_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            // The recorder is global and set once: handles taken now stay valid.
            let _ = HOT.set(Hot {
                records_in: counter!(RECORDS_IN),
                deliveries: counter!(DELIVERIES),
                direct_writes: counter!(DIRECT_WRITES),
                age_ws: histogram!(RECORD_AGE, "transport" => "ws"),
                age_sse: histogram!(RECORD_AGE, "transport" => "sse"),
                age_grpc: histogram!(RECORD_AGE, "transport" => "grpc"),
                publish: histogram!(PUBLISH_SECONDS),
                append: histogram!(APPEND_SECONDS),
                sync: histogram!(SYNC_SECONDS),
            });
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("pushgate-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded at scrapes only");
            }
            Some(handle)
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder owned by the host application\n".to_owned(),
    }
}

/// A snapshot sent without every key of the view; `reason` is
/// "max_snapshot_records", "view_max_keys" or "view_max_bytes".
pub fn snapshot_partial(reason: &'static str) {
    counter!(SNAPSHOTS_PARTIAL, "reason" => reason).increment(1);
}

/// A catch-up's backlog overflowed; what it dropped is read again (see [`CATCHUP_RESYNCS`]).
pub fn catch_up_resync() {
    counter!(CATCHUP_RESYNCS).increment(1);
}

/// A streaming snapshot moved on to the views as they are now (see [`SNAPSHOTS_MOVED`]).
pub fn snapshot_moved() {
    counter!(SNAPSHOTS_MOVED).increment(1);
}

/// A revocation read from the control topic, which ended `connections` open connections.
pub fn revocation_applied(connections: usize) {
    counter!(REVOCATIONS).increment(1);
    counter!(REVOKED_CONNECTIONS).increment(connections as u64);
}

/// `transport` is "ws", "sse", "grpc" or "view" (a view page, held while it is read).
pub fn connection_opened(transport: &'static str) {
    gauge!(CONNECTIONS, "transport" => transport).increment(1.0);
    counter!(CONNECTIONS_TOTAL, "transport" => transport).increment(1);
}

pub fn connection_closed(transport: &'static str) {
    gauge!(CONNECTIONS, "transport" => transport).decrement(1.0);
}

/// `reason` is one of a fixed set: "limit", "draining".
/// A resume's range read: sent to the log, or joined to one in flight.
pub fn catchup_cache_bytes(bytes: usize) {
    gauge!(CATCHUP_CACHE_BYTES).set(bytes as f64);
}

pub fn catchup_read(coalesced: bool) {
    if coalesced {
        counter!(CATCHUP_READS_COALESCED).increment(1);
    } else {
        counter!(CATCHUP_READS).increment(1);
    }
}

pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    REFUSED_N.fetch_add(1, Ordering::Relaxed);
}

/// `topic`'s label: its name for the first [`TOPIC_LABELS`] topics seen,
/// `_other` after that. A topic keeps the label it got (the set only grows),
/// so a gauge's increments and decrements meet.
fn topic_label(topic: &str) -> SharedString {
    static SEEN: OnceLock<Mutex<HashSet<Box<str>>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .expect("topic labels lock");
    if seen.contains(topic) || seen.len() < TOPIC_LABELS && seen.insert(topic.into()) {
        SharedString::from(topic.to_owned())
    } else {
        SharedString::const_str("_other")
    }
}

pub fn subscription_opened(topic: &str) {
    gauge!(SUBSCRIPTIONS, "topic" => topic_label(topic)).increment(1.0);
}

pub fn subscription_closed(topic: &str) {
    gauge!(SUBSCRIPTIONS, "topic" => topic_label(topic)).decrement(1.0);
}

/// A record's first write to a client on `transport` ("ws", "sse", "grpc"),
/// `age` after its timestamp (once per record and transport).
pub fn record_age(transport: &'static str, age: Duration) {
    let cached = hot().and_then(|hot| match transport {
        "ws" => Some(&hot.age_ws),
        "sse" => Some(&hot.age_sse),
        "grpc" => Some(&hot.age_grpc),
        _ => None,
    });
    match cached {
        Some(histogram) => histogram.record(age.as_secs_f64()),
        None => histogram!(RECORD_AGE, "transport" => transport).record(age.as_secs_f64()),
    }
    AGE_COUNT_N.fetch_add(1, Ordering::Relaxed);
    AGE_SUM_MICROS.fetch_add(age.as_micros() as u64, Ordering::Relaxed);
}

/// Records behind the source's high watermark, per partition (labels bounded by the partition count).
pub fn partition_lag(topic: &str, partition: u32, lag: u64) {
    gauge!(PARTITION_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// Bytes a topic's views hold, read at scrape time (like the lag, per topic as the views are).
pub fn view_bytes(topic: &str, bytes: u64) {
    gauge!(VIEW_BYTES, "topic" => topic_label(topic)).set(bytes as f64);
}

pub fn record_ingested(delivered: usize) {
    let direct = DIRECT_WRITES_PENDING.with(|n| n.replace(0));
    match hot() {
        Some(hot) => {
            hot.records_in.increment(1);
            hot.deliveries.increment(delivered as u64);
            if direct > 0 {
                hot.direct_writes.increment(direct);
            }
        }
        None => {
            counter!(RECORDS_IN).increment(1);
            counter!(DELIVERIES).increment(delivered as u64);
            if direct > 0 {
                counter!(DIRECT_WRITES).increment(direct);
            }
        }
    }
    RECORDS_IN_N.fetch_add(1, Ordering::Relaxed);
    DELIVERIES_N.fetch_add(delivered as u64, Ordering::Relaxed);
}

thread_local! {
    /// Direct writes this thread made since its last ingested record: counted
    /// per record like the deliveries, not with a shared atomic per delivery.
    static DIRECT_WRITES_PENDING: Cell<u64> = const { Cell::new(0) };
}

/// One record frame written by the fan-out loop (see [`DIRECT_WRITES`]);
/// published with the record's other counts by [`record_ingested`].
pub fn direct_write() {
    DIRECT_WRITES_PENDING.with(|n| n.set(n.get() + 1));
}

pub fn slow_disconnect() {
    counter!(SLOW_DISCONNECTS).increment(1);
}

/// A client whose socket took no bytes within `limits.write_timeout`;
/// `transport` is "ws" or "http" (SSE streams and other responses).
pub fn write_timeout(transport: &'static str) {
    counter!(WRITE_TIMEOUTS, "transport" => transport).increment(1);
}

/// `tier` is "ring" or "log".
pub fn replayed(tier: &'static str, count: usize) {
    counter!(REPLAYED, "tier" => tier).increment(count as u64);
}

pub fn resume_gap() {
    counter!(GAPS).increment(1);
}

pub fn publish_latency(elapsed: Duration) {
    match hot() {
        Some(hot) => hot.publish.record(elapsed.as_secs_f64()),
        None => histogram!(PUBLISH_SECONDS).record(elapsed.as_secs_f64()),
    }
}

pub fn append_latency(elapsed: Duration) {
    match hot() {
        Some(hot) => hot.append.record(elapsed.as_secs_f64()),
        None => histogram!(APPEND_SECONDS).record(elapsed.as_secs_f64()),
    }
}

/// One write transaction of the embedded log committed (see [`LOG_COMMITS`]).
pub fn log_commit() {
    counter!(LOG_COMMITS).increment(1);
}

pub fn log_sync_latency(elapsed: Duration) {
    match hot() {
        Some(hot) => hot.sync.record(elapsed.as_secs_f64()),
        None => histogram!(SYNC_SECONDS).record(elapsed.as_secs_f64()),
    }
}

/// `code` is one of the protocol's fixed error codes.
pub fn client_error(code: &'static str) {
    counter!(CLIENT_ERRORS, "code" => code).increment(1);
}

/// 1 while the Kafka consumer reaches its broker, 0 during an outage.
pub fn kafka_connected(up: bool) {
    gauge!(KAFKA_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// Records behind the high watermark, per partition (labels bounded by the partition count).
pub fn kafka_lag(topic: &str, partition: u32, lag: u64) {
    gauge!(KAFKA_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// The live consumer's running total of bytes fetched for `topic` (librdkafka
/// counts from the consumer's start, which is the process's).
pub fn kafka_fetch_bytes(topic: &str, total: u64) {
    counter!(KAFKA_FETCH_BYTES, "topic" => topic_label(topic)).absolute(total);
}

pub fn schema_fetched() {
    counter!(SCHEMA_FETCHES).increment(1);
}

pub fn schema_registry_failure() {
    counter!(SCHEMA_REGISTRY_FAILURES).increment(1);
}

/// `reason` is "too_large", "key_not_utf8", "bad_envelope", or for registry encodings
/// "unknown_schema", "registry_unavailable", "undecodable".
pub fn kafka_bad_record(reason: &'static str) {
    counter!(KAFKA_BAD_RECORDS, "reason" => reason).increment(1);
}

/// `served` is "cache" (a nearby resume's read) or "kafka".
pub fn kafka_catchup(served: &'static str) {
    counter!(KAFKA_CATCHUP_READS, "served" => served).increment(1);
}

/// Kinesis's `MillisBehindLatest` of a shard's last read (labels bounded by the shard count).
pub fn kinesis_behind(stream: &str, shard: u32, millis: i64) {
    gauge!(KINESIS_BEHIND, "stream" => stream.to_owned(), "shard" => shard.to_string())
        .set(millis as f64);
}

/// A Kinesis call answered `ProvisionedThroughputExceededException`; `call` is "get_records" or "put_records".
pub fn kinesis_throttled(call: &'static str) {
    counter!(KINESIS_THROTTLED, "call" => call).increment(1);
}

/// A resume older than the ring read back from Kinesis.
pub fn kinesis_catchup() {
    counter!(KINESIS_CATCHUP_READS).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The handles registered at install count into the same series the
    /// macros name (tests in this binary may count too, hence "at least").
    #[test]
    fn registered_handles_reach_the_exposition() {
        assert!(install().is_some(), "the test binary has no other recorder");
        assert!(hot().is_some());
        let before = render();
        record_ingested(3);
        record_age("sse", Duration::from_millis(2));
        publish_latency(Duration::from_millis(1));
        let after = render();
        let grew = |prefix: &str| sample(&after, prefix) - sample(&before, prefix);
        assert!(grew("pushgate_deliveries_total ") >= 3.0, "{after}");
        assert!(grew("pushgate_records_in_total ") >= 1.0, "{after}");
        assert!(
            grew("pushgate_record_age_seconds_count{transport=\"sse\"} ") >= 1.0,
            "{after}"
        );
        assert!(grew("pushgate_publish_seconds_count ") >= 1.0, "{after}");
    }

    /// Past [`TOPIC_LABELS`] topics, new ones share `_other`; a topic keeps its label.
    #[test]
    fn topic_labels_are_capped_and_stable() {
        let names: Vec<String> = (0..TOPIC_LABELS + 50)
            .map(|i| format!("cap-test-{i}"))
            .collect();
        let first: Vec<SharedString> = names.iter().map(|n| topic_label(n)).collect();
        let own = first.iter().filter(|l| l.as_ref() != "_other").count();
        assert!(own <= TOPIC_LABELS, "{own} labels of their own");
        assert_eq!(first.last().unwrap().as_ref(), "_other");
        for (name, label) in names.iter().zip(&first) {
            assert_eq!(&topic_label(name), label, "{name} keeps its label");
        }
    }
}
