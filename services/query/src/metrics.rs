//! The query service's own metrics (HTTP metrics come from `tally-service`).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// Every `outcome` of `tally_query_cache_lookups_total`.
pub const CACHE_OUTCOMES: &[&str] = &["hit", "miss", "stale", "bypass", "error"];

/// Every `outcome` of `tally_query_store_loads_total`.
pub const STORE_LOAD_OUTCOMES: &[&str] = &["ok", "error"];

/// Every `outcome` of `tally_query_trending_hour_sums_total`.
pub const TRENDING_HOUR_OUTCOMES: &[&str] = &["reused", "rebuilt"];

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
    /// Registers the metrics; every label value exists at 0 from the start,
    /// so `rate()` and `increase()` see the first lookup of each outcome.
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
        for outcome in CACHE_OUTCOMES {
            m.cache.with_label_values(&[outcome]);
        }
        for outcome in STORE_LOAD_OUTCOMES {
            m.store_loads.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}

/// Metrics of `GET /v1/trending`.
#[derive(Clone, Debug)]
pub struct TrendingMetrics {
    /// Answers by source: hit, miss, stale (store down), bypass (cache circuit open).
    pub answers: IntCounterVec,
    /// Store reads of a trending answer by outcome (ok, error); concurrent misses share one.
    pub refreshes: IntCounterVec,
    /// How long one store read of a trending answer took.
    pub refresh_seconds: Histogram,
    /// Closed hours of refreshed windows by outcome: reused (cached sum
    /// current) or rebuilt (summed again from its minute rows).
    pub hour_sums: IntCounterVec,
}

impl TrendingMetrics {
    /// Registers the metrics; every label value exists at 0 from the start
    /// (a dashboard shows 0, not "no data", before the first request).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            answers: IntCounterVec::new(
                Opts::new(
                    "tally_query_trending_answers_total",
                    "Trending answers by source (hit, miss, stale, bypass)",
                ),
                &["source"],
            )?,
            refreshes: IntCounterVec::new(
                Opts::new(
                    "tally_query_trending_refreshes_total",
                    "Store reads of trending answers by outcome (ok, error); concurrent misses share one",
                ),
                &["outcome"],
            )?,
            refresh_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_query_trending_refresh_seconds",
                    "Duration of one store read of a trending answer",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            hour_sums: IntCounterVec::new(
                Opts::new(
                    "tally_query_trending_hour_sums_total",
                    "Closed hours of refreshed trending windows by outcome (reused, rebuilt)",
                ),
                &["outcome"],
            )?,
        };
        for source in ["hit", "miss", "stale", "bypass"] {
            m.answers.with_label_values(&[source]);
        }
        for outcome in ["ok", "error"] {
            m.refreshes.with_label_values(&[outcome]);
        }
        for outcome in TRENDING_HOUR_OUTCOMES {
            m.hour_sums.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.answers.clone()))?;
        registry.register(Box::new(m.refreshes.clone()))?;
        registry.register(Box::new(m.refresh_seconds.clone()))?;
        registry.register(Box::new(m.hour_sums.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder as _;

    use super::*;

    /// The exported series of `family`: `outcome` label value to count.
    fn series(registry: &Registry, family: &str) -> std::collections::BTreeMap<String, u64> {
        let mut text = Vec::new();
        prometheus::TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
        let prefix = format!("{family}{{outcome=\"");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()).map(str::to_owned))
            .map(|rest| {
                let (outcome, value) = rest.split_once("\"} ").unwrap();
                (outcome.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn every_cache_and_store_outcome_series_exists_at_zero_before_the_first_lookup() {
        let registry = Registry::new();
        let metrics = QueryMetrics::register(&registry).unwrap();
        let zeros = |outcomes: &[&str]| outcomes.iter().map(|o| ((*o).to_owned(), 0)).collect();
        assert_eq!(series(&registry, "tally_query_cache_lookups_total"), zeros(CACHE_OUTCOMES));
        assert_eq!(series(&registry, "tally_query_store_loads_total"), zeros(STORE_LOAD_OUTCOMES));
        metrics.cache.with_label_values(&["bypass"]).inc();
        assert_eq!(series(&registry, "tally_query_cache_lookups_total")["bypass"], 1);
    }

    #[test]
    fn both_trending_hour_outcome_series_exist_at_zero_before_the_first_refresh() {
        let registry = Registry::new();
        TrendingMetrics::register(&registry).unwrap();
        let zeros = TRENDING_HOUR_OUTCOMES.iter().map(|o| ((*o).to_owned(), 0)).collect();
        assert_eq!(series(&registry, "tally_query_trending_hour_sums_total"), zeros);
    }
}
