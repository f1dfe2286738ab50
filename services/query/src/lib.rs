//! The query service: how many views a video has, and when.
//!
//! Reads go to the cache first (Redis, or in-process in standalone mode),
//! then to the store; concurrent misses share one store read; when the cache
//! fails its circuit opens and reads go to the store; when the store fails,
//! cached values are served marked `stale`. A video nobody watched has 0
//! views (200, not 404), and no viewers.
//!
//! # Layout
//!
//! - [`config`]: the `[query]` section.
//! - [`service`]: [`QueryService::build`] and [`QueryService::run`].
//! - [`api`]: the handlers.
//! - [`lookup`]: cache-then-store with single flight and stale fallback.
//! - [`flights`]: single flight (concurrent loads of one key share one store read).
//! - [`uniques`]: unique viewers over whole hours, cached the same way.
//! - [`trending`]: the most viewed videos of the last hour or day, cached up to 15 s.
//! - [`cached`]: the cache and circuit both range reads share.
//! - [`metrics`]: cache outcomes and breaker state.

pub mod api;
pub mod cached;
pub mod config;
pub mod flights;
pub mod lookup;
pub mod metrics;
pub mod service;
pub mod trending;
pub mod uniques;

pub use config::QueryConfig;
pub use service::{QueryError, QueryService, OPENAPI_JSON};
