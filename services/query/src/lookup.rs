//! Reading totals: cache first, then the store, serving a stale cached value
//! rather than failing.
//!
//! - A cached entry younger than `fresh-for` is answered directly (`hit`).
//! - Otherwise the store is asked; concurrent misses of one video share one
//!   store read (single flight), and the answer is cached, zeros included
//!   (negative caching of unknown ids).
//! - When the store fails, a cached entry of any age is answered marked
//!   `stale` (`stale`); with nothing cached the request fails (503).
//! - Cache errors open a circuit: while it is open the cache is skipped
//!   (`bypass`) and every lookup goes to the store.

use std::sync::Arc;
use std::time::Duration;

use futures::future::FutureExt;
use tally_cache::{CacheBackend, CachedTotal};
use tally_service::breaker::Breaker;
use tally_store::{CountStore, Total};

use crate::flights::Flights;
use crate::metrics::QueryMetrics;

/// One answered total.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The total.
    pub total: Total,
    /// Served from the cache because the store is unavailable.
    pub stale: bool,
    /// `hit`, `miss`, `stale` or `bypass`.
    pub source: &'static str,
}

/// The store failed and nothing usable was cached.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable and nothing cached: {0}")]
pub struct Unavailable(pub String);

/// Cache-then-store lookups.
pub struct Lookup<S> {
    store: S,
    cache: Option<CacheBackend>,
    breaker: Breaker,
    fresh_for_ms: i64,
    retention: Duration,
    inflight: Flights<Total>,
    metrics: QueryMetrics,
}

impl<S: CountStore + Clone> Lookup<S> {
    /// A lookup over `store` and the optional `cache`.
    pub fn new(
        store: S,
        cache: Option<CacheBackend>,
        breaker: Breaker,
        fresh_for: Duration,
        retention: Duration,
        metrics: QueryMetrics,
    ) -> Self {
        Self {
            store,
            cache,
            breaker,
            fresh_for_ms: i64::try_from(fresh_for.as_millis()).unwrap_or(i64::MAX),
            retention,
            inflight: Flights::default(),
            metrics,
        }
    }

    /// The store (series reads go straight to it).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Totals of `videos`, in order.
    pub async fn totals(self: &Arc<Self>, videos: Vec<String>) -> Result<Vec<Answer>, Unavailable> {
        let now = tally_model::timestamp::now_ms();
        let (cached, bypass) = self.cache_get(&videos).await;
        let mut answers: Vec<Option<Answer>> = vec![None; videos.len()];
        let mut misses = Vec::new();
        for (i, entry) in cached.iter().enumerate() {
            match entry {
                Some(e) if now - e.written_ms < self.fresh_for_ms => {
                    answers[i] = Some(Answer { total: to_total(&videos[i], e), stale: false, source: "hit" });
                }
                _ => misses.push(i),
            }
        }
        if !misses.is_empty() {
            let loaded = if misses.len() == 1 {
                self.load_one(videos[misses[0]].clone()).await.map(|t| vec![t])
            } else {
                let wanted = misses.iter().map(|i| videos[*i].clone()).collect();
                let loaded = self.store.totals(wanted).await.map_err(|e| e.to_string());
                self.metrics.store_loads.with_label_values(&[if loaded.is_ok() { "ok" } else { "error" }]).inc();
                loaded
            };
            match loaded {
                Ok(totals) => {
                    self.cache_put(&totals, now).await;
                    let source = if bypass { "bypass" } else { "miss" };
                    for (i, total) in misses.iter().zip(totals) {
                        answers[*i] = Some(Answer { total, stale: false, source });
                    }
                }
                Err(error) => {
                    for i in misses {
                        let entry = cached[i].as_ref().ok_or_else(|| Unavailable(error.clone()))?;
                        answers[i] = Some(Answer { total: to_total(&videos[i], entry), stale: true, source: "stale" });
                    }
                }
            }
        }
        let answers: Vec<Answer> = answers.into_iter().flatten().collect();
        for answer in &answers {
            self.metrics.cache.with_label_values(&[answer.source]).inc();
        }
        Ok(answers)
    }

    async fn load_one(self: &Arc<Self>, video: String) -> Result<Total, String> {
        let (store, metrics, key) = (self.store.clone(), self.metrics.clone(), video.clone());
        self.inflight
            .run(&video, move || {
                async move {
                    let loaded = store.totals(vec![key]).await;
                    metrics.store_loads.with_label_values(&[if loaded.is_ok() { "ok" } else { "error" }]).inc();
                    loaded.map_err(|e| e.to_string())?.pop().ok_or_else(|| "store returned no total".to_owned())
                }
                .boxed()
            })
            .await
    }

    /// Cached entries (all `None` when the cache is off, failing or its circuit open).
    async fn cache_get(&self, videos: &[String]) -> (Vec<Option<CachedTotal>>, bool) {
        let none = vec![None; videos.len()];
        let Some(cache) = &self.cache else { return (none, false) };
        if !self.breaker.allow() {
            self.publish_breaker();
            return (none, true);
        }
        let outcome = cache.get_many(videos).await;
        let result = match outcome {
            Ok(entries) => {
                self.breaker.success();
                (entries, false)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache read failed; reading the store");
                self.breaker.failure();
                self.metrics.cache.with_label_values(&["error"]).inc();
                (none, true)
            }
        };
        self.publish_breaker();
        result
    }

    async fn cache_put(&self, totals: &[Total], now: i64) {
        let Some(cache) = &self.cache else { return };
        if !self.breaker.allow() {
            return;
        }
        let entries: Vec<(String, CachedTotal)> = totals.iter().map(|t| (t.video_id.clone(), cached(t, now))).collect();
        match cache.put_many(&entries, self.retention).await {
            Ok(()) => self.breaker.success(),
            Err(e) => {
                tracing::warn!(error = %e, "cache write failed");
                self.breaker.failure();
            }
        }
        self.publish_breaker();
    }

    fn publish_breaker(&self) {
        self.metrics.cache_breaker_state.set(self.breaker.state() as i64);
    }
}

fn to_total(video: &str, entry: &CachedTotal) -> Total {
    Total {
        video_id: video.to_owned(),
        views: entry.views,
        as_of_ms: entry.as_of_ms,
        batch_views: entry.batch_views,
        exact_through_ms: entry.exact_through_ms,
        batch_generation: entry.batch_generation,
    }
}

/// The cache entry of a total read at `now`.
pub fn cached(total: &Total, now: i64) -> CachedTotal {
    CachedTotal {
        views: total.views,
        as_of_ms: total.as_of_ms,
        written_ms: now,
        batch_views: total.batch_views,
        exact_through_ms: total.exact_through_ms,
        batch_generation: total.batch_generation,
    }
}
