//! The gateway's own metrics (HTTP request metrics come from `tally-service`).
//! Counted per request, never per event in a loop.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every reason an event is refused for: each series exists at 0 from the
/// start, so `rate()` and `increase()` see the first refusal.
pub const REJECT_REASONS: &[&str] = &[
    "unauthorized",
    "unsupported_media_type",
    "too_large",
    "shed",
    "timeout",
    "unreadable",
    "invalid",
    "rate_limited",
    "overloaded",
    "broker_timeout",
    "broker_error",
];

/// Gateway metrics.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    /// Events acknowledged by the broker and answered 202.
    pub events_accepted: IntCounter,
    /// Events refused, by reason; a request refused before its body was read
    /// (`too_large` by `Content-Length`, `shed` when the admission bound has
    /// no room at all) counts as one, its events being unknown.
    pub events_rejected: IntCounterVec,
    /// Events admitted and not yet acknowledged (the producer queue depth).
    pub in_flight_events: IntGauge,
    /// Time from enqueueing a request's records to the last acknowledgement.
    pub produce_duration: Histogram,
    /// Events sent with a salted key.
    pub events_salted: IntCounter,
    /// Videos the run-time detector sees over its threshold (reported, not salted).
    pub hot_videos: IntGauge,
}

impl IngestMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            events_accepted: IntCounter::new(
                "tally_ingest_events_accepted_total",
                "Events acknowledged by the broker and accepted (202)",
            )?,
            events_rejected: IntCounterVec::new(
                Opts::new("tally_ingest_events_rejected_total", "Events refused, by reason"),
                &["reason"],
            )?,
            in_flight_events: IntGauge::new(
                "tally_ingest_in_flight_events",
                "Events handed to the producer and not yet acknowledged",
            )?,
            produce_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_ingest_produce_duration_seconds",
                    "Time from enqueueing a request's events to the broker acknowledging all of them",
                )
                .buckets(tally_service::http_metrics::LATENCY_BUCKETS.to_vec()),
            )?,
            events_salted: IntCounter::new(
                "tally_ingest_events_salted_total",
                "Events sent with a salted partition key (configured hot videos)",
            )?,
            hot_videos: IntGauge::new(
                "tally_ingest_hot_videos",
                "Videos over the hot-key detection threshold at this gateway (reported only: salting follows ingest.salting.hot-videos)",
            )?,
        };
        registry.register(Box::new(metrics.events_accepted.clone()))?;
        registry.register(Box::new(metrics.events_rejected.clone()))?;
        registry.register(Box::new(metrics.in_flight_events.clone()))?;
        registry.register(Box::new(metrics.produce_duration.clone()))?;
        registry.register(Box::new(metrics.events_salted.clone()))?;
        registry.register(Box::new(metrics.hot_videos.clone()))?;
        for reason in REJECT_REASONS {
            metrics.events_rejected.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    /// Counts `events` refused for `reason`, one of [`REJECT_REASONS`].
    pub fn reject(&self, reason: &str, events: usize) {
        debug_assert!(REJECT_REASONS.contains(&reason), "rejection reason {reason:?} is not in REJECT_REASONS");
        self.events_rejected.with_label_values(&[reason]).inc_by(events.max(1) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tally_ingest_events_rejected_total` by reason, as exported.
    fn rejected(registry: &Registry) -> std::collections::BTreeMap<String, u64> {
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
        String::from_utf8(text)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("tally_ingest_events_rejected_total{reason=\""))
            .map(|rest| {
                let (reason, value) = rest.split_once("\"} ").unwrap();
                (reason.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn every_rejection_reason_series_exists_at_zero_before_the_first_refusal() {
        let registry = Registry::new();
        let metrics = IngestMetrics::register(&registry).unwrap();
        let want: std::collections::BTreeMap<String, u64> =
            REJECT_REASONS.iter().map(|r| ((*r).to_owned(), 0)).collect();
        assert_eq!(rejected(&registry), want);
        metrics.reject("invalid", 3);
        metrics.reject("shed", 0);
        let after = rejected(&registry);
        assert_eq!((after["invalid"], after["shed"], after["overloaded"]), (3, 1, 0));
    }
}
