//! The `[query]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Query service settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct QueryConfig {
    /// Public API listener.
    pub listen: SocketAddr,
    /// Admin listener when run on its own.
    pub admin_listen: SocketAddr,
    /// A cached total younger than this is served without asking the store.
    #[serde(with = "humantime_serde")]
    pub fresh_for: Duration,
    /// How long cache entries written by the query service are kept (stale
    /// answers are possible that long while the store is down).
    #[serde(with = "humantime_serde")]
    pub cache_retention: Duration,
    /// Consecutive cache failures that open the cache circuit (then queries go to the store).
    pub cache_breaker_failures: u32,
    /// How long the cache circuit stays open before one probe.
    #[serde(with = "humantime_serde")]
    pub cache_breaker_cool_down: Duration,
    /// Most ids in one batch request.
    pub max_batch_ids: usize,
    /// Most points in one series answer.
    pub max_series_points: i64,
    /// `Retry-After` for 503 answers.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Longest time to receive a request's head (request line and headers);
    /// a slower client is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A cached trending answer younger than this is served without asking
    /// the store; at most 15 s (a larger value is refused at start).
    #[serde(with = "humantime_serde")]
    pub trending_fresh_for: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9083)),
            fresh_for: Duration::from_secs(2),
            cache_retention: Duration::from_secs(24 * 3600),
            cache_breaker_failures: 3,
            cache_breaker_cool_down: Duration::from_secs(2),
            max_batch_ids: 1_000,
            max_series_points: 10_000,
            retry_after: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            trending_fresh_for: Duration::from_secs(15),
        }
    }
}
