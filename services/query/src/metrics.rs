//! The query service's own metrics (HTTP metrics come from `tally-service`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Query metrics.
#[derive(Clone, Debug)]
pub struct QueryMetrics {
    /// Lookups by cache outcome: hit, miss, stale (served stale while the store is down), bypass (cache circuit open), error.
    pub cache: IntCounterVec,
    /// Cache circuit: 0 closed, 1 half-open, 2 open.
    pub cache_breaker_state: IntGauge,
    /// Store loads (one per key however many requests wait on it).
    pub store_loads: IntCounterVec,
}

impl QueryMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            cache: IntCounterVec::new(
                Opts::new("tally_query_cache_lookups_total", "Count lookups by cache outcome"),
                &["outcome"],
            )?,
            cache_breaker_state: IntGauge::new(
                "tally_query_cache_breaker_state",
                "Cache circuit: 0 closed, 1 half-open, 2 open",
            )?,
            store_loads: IntCounterVec::new(
                Opts::new(
                    "tally_query_store_loads_total",
                    "Store reads by outcome (ok, error); concurrent misses share one",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.cache.clone()))?;
        registry.register(Box::new(m.cache_breaker_state.clone()))?;
        registry.register(Box::new(m.store_loads.clone()))?;
        Ok(m)
    }
}
