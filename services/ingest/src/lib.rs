//! The ingest gateway: `POST /v1/events` to the `tally.views` topic.
//!
//! Guarantee: a 2xx answer means every event of the request has been
//! acknowledged by the broker with `acks=all` (through an idempotent producer
//! unless `kafka.idempotence` is off).
//! When the broker is slow or down, or too many events await acknowledgement,
//! the gateway answers 503 with `Retry-After` instead of buffering without
//! bound (with no room at all, before reading the body); over a key's rate it
//! answers 429.
//!
//! # Layout
//!
//! - [`config`]: the `[ingest]` section.
//! - [`service`]: [`IngestService::build`] and [`IngestService::run`].
//! - [`handler`]: the request pipeline of `POST /v1/events`.
//! - [`publish`]: admission, produce, await acknowledgements.
//! - [`acks`]: the producer context that counts a request's acknowledgements.
//! - API keys: `tally_service::api_keys` (shared with the admin actions).
//! - [`rate_limit`]: per-key token buckets.
//! - [`metrics`]: the gateway's Prometheus metrics.

pub mod acks;
pub mod config;
pub mod handler;
pub mod metrics;
pub mod publish;
pub mod rate_limit;
pub mod service;

pub use config::{ApiKeyConfig, IngestConfig};
pub use service::{IngestError, IngestService, OPENAPI_JSON};
