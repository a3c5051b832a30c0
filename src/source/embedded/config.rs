//! `[embedded]`: the embedded log's settings and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, InvalidSetting};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub retention_check_interval: Duration,
    /// redb's page cache, in bytes. redb's own default (1 GiB) would let memory
    /// follow the size of the stored log.
    pub cache_bytes: usize,
    /// When a publish is acknowledged and fanned out: after its fsync, or before.
    pub durability: Durability,
    /// With `durability = "fsync"`: how long the writer holds a batch open for
    /// more publishes (one commit and fsync for all of them) while publishes
    /// arrive at least two per this span; `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub commit_wait: Duration,
}

/// `embedded.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every batch is fsynced before it is fanned out and acknowledged.
    #[default]
    Fsync,
    /// Batches are fanned out and acknowledged once written to the OS; fsyncs
    /// follow in the background. After an unclean shutdown the log moves to a
    /// new epoch, so clients get a gap instead of resuming past lost records.
    Os,
}

/// `embedded.commit_wait`'s default: off. A publisher that waits for each
/// answer before it sends the next would get fewer publishes through with a wait.
pub const DEFAULT_COMMIT_WAIT: Duration = Duration::ZERO;
/// The longest `embedded.commit_wait` accepted: every publish may wait this long.
pub const MAX_COMMIT_WAIT: Duration = Duration::from_millis(100);

/// The smallest `embedded.cache_bytes` accepted: below this redb thrashes.
pub const MIN_EMBEDDED_CACHE_BYTES: usize = 1 << 20;

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            retention_check_interval: Duration::from_secs(1),
            cache_bytes: 64 << 20,
            durability: Durability::Fsync,
            commit_wait: DEFAULT_COMMIT_WAIT,
        }
    }
}
impl EmbeddedConfig {
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.retention_check_interval.is_zero() {
            return Err(invalid(
                "embedded.retention_check_interval",
                "must be longer than 0s",
            ));
        }
        if self.cache_bytes < MIN_EMBEDDED_CACHE_BYTES {
            return Err(invalid(
                "embedded.cache_bytes",
                format!("must be at least {MIN_EMBEDDED_CACHE_BYTES} (1 MiB)"),
            ));
        }
        if self.commit_wait > MAX_COMMIT_WAIT {
            return Err(invalid("embedded.commit_wait", "must be at most 100ms"));
        }
        Ok(())
    }
}
