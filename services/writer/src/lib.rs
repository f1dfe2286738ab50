//! The writer: `tally.counts` → the count store (idempotent, versioned) →
//! cache write-through, offsets committed only after the store commit.
//!
//! # Layout
//!
//! - [`config`]: the `[writer]` section.
//! - [`service`]: [`WriterService::build`] and [`WriterService::run`].
//! - [`metrics`]: the writer's Prometheus metrics.

pub mod config;
pub mod metrics;
pub mod service;

pub use config::WriterConfig;
pub use service::{WriterError, WriterService};
