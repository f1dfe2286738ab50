//! What every Tally service shares.
//!
//! # Layout
//!
//! - [`supervisor`]: named tasks under one [`CancellationToken`](tokio_util::sync::CancellationToken);
//!   any failure cancels the rest; bounded drain.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`), on its own port.
//! - [`api_keys`]: API keys (Bearer / `X-Api-Key`) compared in constant time.
//! - [`breaker`]: a circuit breaker with half-open probes.
//! - [`readiness`]: named dependency checks behind `/readyz`.
//! - [`http_metrics`]: request count and latency per matched route and status.
//! - [`problem`]: RFC 9457 problem responses.
//! - [`logging`]: `tracing` set-up (text or JSON).
//! - [`traces`]: call-chain tracing, OpenTelemetry spans over OTLP, and W3C trace context on records.
//! - [`serve`]: running an axum router on a listener until shutdown, with drain and a header read timeout.

pub mod admin;
pub mod api_keys;
pub mod breaker;
pub mod http_metrics;
pub mod logging;
pub mod problem;
pub mod readiness;
pub mod serve;
pub mod supervisor;
pub mod traces;

pub use problem::Problem;
pub use readiness::Readiness;
pub use supervisor::{Supervisor, SupervisorError, TaskError};
