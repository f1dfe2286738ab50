//! Building and running the query service.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::routing::{get, post};
use axum::{middleware, Router};
use prometheus::Registry;
use tally_cache::CacheBackend;
use tally_service::breaker::Breaker;
use tally_service::http_metrics::{self, HttpMetrics};
use tally_service::Readiness;
use tally_store::CountStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::QueryConfig;
use crate::lookup::Lookup;
use crate::metrics::{QueryMetrics, TrendingMetrics};
use crate::trending::TrendingLookup;
use crate::uniques::UniquesLookup;

/// The OpenAPI document of the query API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Name of the query service's readiness check.
pub const STORE_CHECK: &str = "query.store";

/// Why the query service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The listener could not be bound.
    #[error(transparent)]
    Bind(std::io::Error),
    /// Serving failed.
    #[error("query server failed: {0}")]
    Serve(std::io::Error),
    /// Metrics could not be registered.
    #[error("cannot register query metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// `query.trending-fresh-for` above [`crate::trending::MAX_FRESH_FOR`].
    #[error("query.trending-fresh-for is {0:?}; trending answers must be refreshed at least every {max:?}", max = crate::trending::MAX_FRESH_FOR)]
    TrendingFreshFor(std::time::Duration),
}

/// Checks that the store answers (for `/readyz`).
type StoreProbe = Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A built query service.
pub struct QueryService {
    listener: TcpListener,
    router: Router,
    readiness: Readiness,
    probe: StoreProbe,
    serve_options: tally_service::serve::ServeOptions,
}

impl QueryService {
    /// Binds the listener and builds the router over `store` and `cache`.
    pub async fn build<S: CountStore + Clone>(
        config: &QueryConfig,
        store: S,
        cache: Option<CacheBackend>,
        registry: &Registry,
        readiness: &Readiness,
    ) -> Result<Self, QueryError> {
        if config.trending_fresh_for > crate::trending::MAX_FRESH_FOR {
            return Err(QueryError::TrendingFreshFor(config.trending_fresh_for));
        }
        let metrics = QueryMetrics::register(registry)?;
        let http = HttpMetrics::register(registry, "query")?;
        let breaker = Breaker::new(config.cache_breaker_failures, config.cache_breaker_cool_down);
        readiness.register(STORE_CHECK);
        let probe_store = store.clone();
        let probe: StoreProbe = Box::new(move || {
            let store = probe_store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        });
        readiness.set(STORE_CHECK, probe().await);
        let uniques = Arc::new(UniquesLookup::new(
            store.clone(),
            cache.clone(),
            Breaker::new(config.cache_breaker_failures, config.cache_breaker_cool_down),
            config.fresh_for,
            config.cache_retention,
        ));
        let trending = Arc::new(TrendingLookup::new(
            store.clone(),
            cache.clone(),
            Breaker::new(config.cache_breaker_failures, config.cache_breaker_cool_down),
            config.trending_fresh_for,
            config.cache_retention,
            TrendingMetrics::register(registry)?,
        ));
        let lookup = Arc::new(Lookup::new(store, cache, breaker, config.fresh_for, config.cache_retention, metrics));
        let state = Arc::new(ApiState {
            lookup,
            max_batch_ids: config.max_batch_ids,
            max_series_points: config.max_series_points,
            retry_after_secs: config.retry_after.as_secs().max(1),
            uniques,
            trending,
        });
        let router = Router::new()
            .route("/v1/videos/{id}/views", get(api::total::<S>))
            .route("/v1/videos/{id}/views/series", get(api::series::<S>))
            .route("/v1/views:batchGet", post(api::batch_get::<S>))
            .route("/v1/videos/{id}/uniques", get(crate::uniques::uniques::<S>))
            .route("/v1/trending", get(crate::trending::trending::<S>))
            .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }))
            .fallback(api::not_found)
            .method_not_allowed_fallback(api::method_not_allowed)
            .with_state(state)
            .layer(middleware::from_fn_with_state(http, http_metrics::track));
        let listener = tally_service::serve::bind(config.listen, "query").await.map_err(QueryError::Bind)?;
        let serve_options = tally_service::serve::ServeOptions { header_read_timeout: config.header_read_timeout };
        Ok(Self { listener, router, readiness: readiness.clone(), probe, serve_options })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown`, draining in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), QueryError> {
        let (readiness, probe, stop) = (self.readiness, self.probe, shutdown.clone());
        // `/readyz` follows the store while serving, not only at start.
        let prober = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
                readiness.set(STORE_CHECK, probe().await);
            }
        });
        let served = tally_service::serve::serve_with(self.listener, self.router, shutdown, self.serve_options).await;
        prober.abort();
        served.map_err(QueryError::Serve)
    }
}
