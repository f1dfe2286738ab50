//! Request count and latency per matched route and status class, for every
//! public HTTP API. Labels are bounded: the route template (never the raw
//! path), the method and the status code.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Latency buckets for HTTP handlers, in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Metrics of one service's public HTTP API.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers `tally_http_requests_total` and `tally_http_request_duration_seconds`
    /// for `service` in `registry`.
    pub fn register(registry: &Registry, service: &str) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("tally_http_requests_total", "HTTP requests answered, by route, method and status")
                .const_label("service", service),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("tally_http_request_duration_seconds", "HTTP request latency, by route and status")
                .const_label("service", service)
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// Axum middleware recording one request (use with `middleware::from_fn_with_state`).
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics.requests.with_label_values(&[&route, &method, &status]).inc();
    metrics.duration.with_label_values(&[&route, &status]).observe(started.elapsed().as_secs_f64());
    response
}
