//! The `[ingest]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_config::Secret;
use tally_model::SaltingConfig;

/// Gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct IngestConfig {
    /// Public API listener (`POST /v1/events`, `/openapi.json`).
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`) when run on its own.
    pub admin_listen: SocketAddr,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most events in one request (413 above).
    pub max_events: usize,
    /// How far an event time may lie in the future (400 beyond).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Largest `attributes` object per event, in bytes of compact JSON.
    pub max_attributes_bytes: usize,
    /// How long a request waits for the broker to acknowledge all its events
    /// before answering 503; the bound on "slow broker" latency.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long the producer keeps retrying one record (librdkafka
    /// `message.timeout.ms`); at least `ack-timeout`.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long records wait to be batched (librdkafka `linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Events accepted but not yet acknowledged, across all requests; above
    /// it requests get 503 instead of queueing without bound.
    pub max_in_flight_events: usize,
    /// Longest time to read one request body; a slower client gets 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest time to receive a request's head (request line and headers);
    /// a slower client is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// `Retry-After` sent with 503 answers.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// API keys; when empty, the API is open.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Hot-key salting: which videos spread over partitions, and the detector that reports hot ones.
    pub salting: SaltingConfig,
    /// The secret key of viewer pseudonyms: every `viewer_id` is replaced by
    /// HMAC-SHA-256(key, viewer_id) (128 bits, 32 hex digits) before the
    /// event reaches Kafka, so raw viewer ids are never in `tally.views`, the
    /// counts topic or the archive. Every gateway must have the same key, kept
    /// for as long as unique viewers are compared: a new key makes every
    /// viewer a new one. Absent: viewer ids are dropped at the gateway and
    /// unique viewers count nobody (`tally standalone` keeps a generated
    /// key in its data directory).
    pub viewer_id_key: Option<Secret>,
}

/// One API key and its rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiKeyConfig {
    /// Name used in logs and metrics (never the key itself).
    pub name: String,
    /// The bearer token clients send.
    pub key: Secret,
    /// Sustained rate, in events per second; 0 = unlimited.
    #[serde(default)]
    pub events_per_sec: f64,
    /// Burst, in events: how many may come at once after a quiet period.
    #[serde(default)]
    pub burst: f64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            max_body_bytes: 4 * 1024 * 1024,
            max_events: 10_000,
            max_future_skew: Duration::from_secs(300),
            max_attributes_bytes: 1024,
            ack_timeout: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            max_in_flight_events: 200_000,
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(1),
            api_keys: Vec::new(),
            salting: SaltingConfig::default(),
            viewer_id_key: None,
        }
    }
}
