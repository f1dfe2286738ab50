//! `GET /v1/trending?window=1h|24h&limit=N&order=views|velocity`: the videos
//! with the most views in the last hour or day, with their exact views.
//!
//! Candidates come from the per-minute frequent-items sketches the counters
//! emit (summed per window; the sums of closed hours are kept in process
//! between refreshes while their rows stay unchanged,
//! [`tally_store::trending::hours`]); their exact views come from the
//! minute counts ([`read`]). Answers are cached per (window, limit, order)
//! for `trending-fresh-for` (at most 15 s); concurrent misses of one key
//! share one store read; when the store fails, a cached answer of any age
//! is served marked `stale`, as for unique viewers.

pub mod params;
pub mod read;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::FutureExt;
use serde_json::Value;
use tally_cache::{CacheBackend, CachedRange};
use tally_service::breaker::Breaker;
use tally_service::Problem;
use tally_store::trending::hours::HourCache;
use tally_store::CountStore;

use crate::api::{bad_request, unavailable, ApiState};
use crate::cached::{AnswerCache, Cached};
use crate::flights::Flights;
use crate::metrics::TrendingMetrics;
use params::{TrendingQuery, TrendingRequest};

/// Longest a trending answer is served from the cache (issue 17: refreshed
/// at least every 15 s).
pub const MAX_FRESH_FOR: Duration = Duration::from_secs(15);

/// Cache-then-store reads of trending answers.
pub struct TrendingLookup<S> {
    store: S,
    cache: AnswerCache,
    fresh_for_ms: i64,
    inflight: Flights<String>,
    hours: Arc<HourCache>,
    metrics: TrendingMetrics,
}

/// One answer and where it came from.
struct Answered {
    json: String,
    stale: bool,
    source: &'static str,
}

impl<S: CountStore + Clone> TrendingLookup<S> {
    /// Reads over `store` and the optional `cache`; answers younger than
    /// `fresh_for` (at most [`MAX_FRESH_FOR`], checked by the service) are served from the cache.
    pub fn new(
        store: S,
        cache: Option<CacheBackend>,
        breaker: Breaker,
        fresh_for: Duration,
        retention: Duration,
        metrics: TrendingMetrics,
    ) -> Self {
        Self {
            store,
            cache: AnswerCache::new(cache, breaker, retention),
            fresh_for_ms: i64::try_from(fresh_for.min(MAX_FRESH_FOR).as_millis()).unwrap_or(0),
            inflight: Flights::default(),
            hours: Arc::new(HourCache::new(params::Window::Day.millis())),
            metrics,
        }
    }

    async fn answer(self: &Arc<Self>, request: TrendingRequest) -> Result<Answered, String> {
        let key = request.cache_key();
        let now = tally_model::timestamp::now_ms();
        let Cached { entry: cached, bypassed } = self.cache.get(&key).await;
        if let Some(entry) = cached.as_ref().filter(|e| now - e.written_ms < self.fresh_for_ms) {
            return Ok(Answered { json: entry.json.clone(), stale: false, source: "hit" });
        }
        match self.load(key.clone(), request, now).await {
            Ok(json) => {
                self.cache.put(&key, CachedRange { json: json.clone(), written_ms: now }).await;
                Ok(Answered { json, stale: false, source: if bypassed { "bypass" } else { "miss" } })
            }
            Err(error) => match cached {
                Some(entry) => Ok(Answered { json: entry.json, stale: true, source: "stale" }),
                None => Err(error),
            },
        }
    }

    async fn load(self: &Arc<Self>, key: String, request: TrendingRequest, now: i64) -> Result<String, String> {
        let (store, hours, metrics) = (self.store.clone(), Arc::clone(&self.hours), self.metrics.clone());
        self.inflight
            .run(&key, move || {
                async move {
                    let started = Instant::now();
                    let read = read::read(&store, &hours, request, now).await;
                    metrics.refresh_seconds.observe(started.elapsed().as_secs_f64());
                    metrics.refreshes.with_label_values(&[if read.is_ok() { "ok" } else { "error" }]).inc();
                    let (json, stats) = read.map_err(|e| e.to_string())?;
                    metrics.hour_sums.with_label_values(&["reused"]).inc_by(stats.reused);
                    metrics.hour_sums.with_label_values(&["rebuilt"]).inc_by(stats.rebuilt);
                    Ok(json)
                }
                .boxed()
            })
            .await
    }
}

/// `GET /v1/trending?window=&limit=&order=`
pub async fn trending<S: CountStore + Clone>(
    State(state): State<Arc<ApiState<S>>>,
    query: Result<Query<TrendingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| bad_request("invalid-trending", e.body_text()))?;
    let request = TrendingRequest::parse(&query)?;
    let answered = state
        .trending
        .answer(request)
        .await
        .map_err(|e| unavailable(state.retry_after_secs, format!("store unavailable and nothing cached: {e}")))?;
    state.trending.metrics.answers.with_label_values(&[answered.source]).inc();
    let mut body: Value = serde_json::from_str(&answered.json)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", e.to_string()))?;
    body["stale"] = Value::Bool(answered.stale);
    let mut response = Json(body).into_response();
    response.headers_mut().insert("x-tally-cache", HeaderValue::from_static(answered.source));
    Ok(response)
}
