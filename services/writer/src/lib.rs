//! The writer: `tally.counts` → the count store (idempotent, versioned) →
//! cache write-through, offsets committed only after the store commit.
//!
//! # Layout
//!
//! - [`config`]: the `[writer]` section.
//! - [`service`]: [`WriterService::build`] and [`WriterService::run`].
//! - [`metrics`]: the writer's Prometheus metrics.
//! - [`lag`]: its lag on the counts topic and the loop's heartbeat, measured
//!   off the loop.

pub mod config;
pub mod lag;
pub mod metrics;
pub mod service;

pub use config::WriterConfig;
pub use service::{WriterError, WriterService};
