//! The `[writer]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Writer settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct WriterConfig {
    /// Admin listener when run on its own.
    pub admin_listen: SocketAddr,
    /// Consumer group of all writer instances.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a stable name per
    /// instance, unique in the group, typically the pod name of a
    /// StatefulSet (`TALLY_WRITER__GROUP_INSTANCE_ID` from `metadata.name`).
    /// An instance that restarts within the group's session timeout gets its
    /// partitions back without a rebalance; one that stops keeps them
    /// (uncounted) until its session expires. Absent: dynamic membership.
    pub group_instance_id: Option<String>,
    /// Most counts records applied in one store transaction.
    pub batch_max_records: usize,
    /// Longest wait to fill a batch.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// First retry delay when the store is unavailable; doubles up to `retry-max-backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long cache entries are kept (stale answers are possible that long while the store is down).
    #[serde(with = "humantime_serde")]
    pub cache_retention: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9082)),
            group_id: "tally-writer".into(),
            group_instance_id: None,
            batch_max_records: 500,
            batch_max_wait: Duration::from_millis(100),
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(5),
            cache_retention: Duration::from_secs(24 * 3600),
        }
    }
}
