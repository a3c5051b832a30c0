//! `[kinesis]`: the Kinesis source's settings and their checks.
//!
//! Parsed in every build (see `source::kafka_config`); the source's code is
//! behind the `kinesis` feature.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::topics::TopicConfig;
use super::{invalid, InvalidSetting};

/// `[kinesis]`: used when `source.kind = "kinesis"`; every key is documented in `config/pushgate.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    /// AWS region of the streams.
    pub region: String,
    /// Endpoint URL instead of AWS's own (a VPC endpoint, or a local emulator); empty for AWS's.
    pub endpoint_url: String,
    /// Shortest time between two GetRecords calls on one shard (Kinesis allows 5 a second per shard).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Records asked for per GetRecords call (Kinesis: at most 10000).
    pub records_per_call: i32,
    /// Longest wait after `ProvisionedThroughputExceededException` (backoff doubles up to this).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often ListShards is called to find shards made by a split or merge.
    #[serde(with = "humantime_serde")]
    pub shard_refresh_interval: Duration,
    /// How long start-up waits for every shard to be read to its end before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Longest a single AWS call may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Catch-up reads (resumes older than the ring) running at once.
    pub catchup_readers: usize,
    /// Per shard: sequence numbers remembered (by this node's ordinal) to
    /// resume cursors; a cursor older than this many records of its shard is
    /// answered like one past retention.
    pub position_index_records: usize,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: String::new(),
            poll_interval: Duration::from_millis(500),
            records_per_call: 1000,
            max_backoff: Duration::from_secs(5),
            shard_refresh_interval: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            catchup_readers: 4,
            position_index_records: 2_000_000,
        }
    }
}

impl KinesisConfig {
    pub(crate) fn validate(&self, topics: &[TopicConfig]) -> Result<(), InvalidSetting> {
        if self.region.trim().is_empty() {
            return Err(invalid("kinesis.region", "must name a region"));
        }
        let url = &self.endpoint_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "kinesis.endpoint_url",
                "must be an http:// or https:// URL (or empty)",
            ));
        }
        if self.poll_interval < Duration::from_millis(200) {
            return Err(invalid(
                "kinesis.poll_interval",
                "must be at least 200ms (Kinesis allows 5 GetRecords a second per shard)",
            ));
        }
        if !(1..=10_000).contains(&self.records_per_call) {
            return Err(invalid(
                "kinesis.records_per_call",
                "must be between 1 and 10000",
            ));
        }
        for (key, value) in [
            ("kinesis.catchup_readers", self.catchup_readers),
            (
                "kinesis.position_index_records",
                self.position_index_records,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (key, value) in [
            ("kinesis.max_backoff", self.max_backoff),
            (
                "kinesis.shard_refresh_interval",
                self.shard_refresh_interval,
            ),
            ("kinesis.startup_timeout", self.startup_timeout),
            ("kinesis.request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        for (i, topic) in topics.iter().enumerate() {
            if topic.pattern.is_some() {
                return Err(invalid(
                    format!("topics[{i}].pattern"),
                    "is not supported with source.kind = \"kinesis\": name each stream",
                ));
            }
            if topic.name.len() > 128 {
                return Err(invalid(
                    format!("topics[{i}].name"),
                    "is longer than a Kinesis stream name (128)",
                ));
            }
        }
        Ok(())
    }
}
