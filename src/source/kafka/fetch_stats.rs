//! Kafka egress per topic: the live consumer's librdkafka statistics, turned
//! into `pushgate_kafka_fetch_bytes_total{topic}`.

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::Statistics;

use crate::telemetry;

/// How often librdkafka reports its statistics (`statistics.interval.ms`);
/// the metric lags the fetches by at most this much.
pub(super) const INTERVAL_MS: u32 = 5_000;

/// The live consumer's context: only the statistics callback differs from
/// librdkafka's defaults (it runs on the consumer's own thread, in `poll`).
pub(super) struct FetchStats;

impl ClientContext for FetchStats {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            // Partition -1 is librdkafka's internal "unassigned" partition.
            let bytes: u64 = topic
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .map(|(_, p)| p.rxbytes)
                .sum();
            telemetry::kafka_fetch_bytes(name, bytes);
        }
    }
}

impl ConsumerContext for FetchStats {}
