//! What became of the records the counter read: tallied on the processing
//! thread and published to `tally_counter_events_total{outcome}` and
//! `tally_counter_dead_letters_total{reason}` at housekeeping, never per
//! record.
//!
//! Every label value exists at zero from registration on
//! ([`OutcomeTally::initialise`]): a series that first appears already
//! incremented hides its first increase from `rate()` and `increase()`, so
//! the first dead letters would show on no panel while their alert fires.

use crate::dlq::DeadReason;
use crate::metrics::CounterMetrics;
use crate::partition::FlushJob;

/// What became of one record of the views topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted into a delta.
    Counted,
    /// Its `event_id` was seen within the dedup window: not counted again.
    Duplicate,
    /// Sent to the dead-letter topic.
    Dead(DeadReason),
}

impl Outcome {
    /// Every outcome, in the order they are published.
    pub const ALL: [Outcome; 4] =
        [Outcome::Counted, Outcome::Duplicate, Outcome::Dead(DeadReason::Late), Outcome::Dead(DeadReason::Malformed)];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Counted => "counted",
            Outcome::Duplicate => "duplicate",
            Outcome::Dead(reason) => reason.as_str(),
        }
    }
}

/// Records per outcome since the last [`OutcomeTally::publish`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutcomeTally {
    counted: u64,
    duplicate: u64,
    late: u64,
    malformed: u64,
}

impl OutcomeTally {
    /// Creates every outcome and dead-letter series at zero.
    pub fn initialise(metrics: &CounterMetrics) {
        for outcome in Outcome::ALL {
            metrics.events.with_label_values(&[outcome.label()]);
            if let Outcome::Dead(reason) = outcome {
                metrics.dead_letters.with_label_values(&[reason.as_str()]);
            }
        }
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u64 {
        match outcome {
            Outcome::Counted => &mut self.counted,
            Outcome::Duplicate => &mut self.duplicate,
            Outcome::Dead(DeadReason::Late) => &mut self.late,
            Outcome::Dead(DeadReason::Malformed) => &mut self.malformed,
        }
    }

    /// Adds `records` records of `outcome`.
    pub fn add(&mut self, outcome: Outcome, records: u64) {
        *self.slot(outcome) += records;
    }

    /// Adds what a sealed flush counted, dropped as duplicates and dead-lettered.
    pub fn add_job(&mut self, job: &FlushJob) {
        let stats = job.header.stats;
        self.add(Outcome::Counted, u64::from(stats.counted));
        self.add(Outcome::Duplicate, u64::from(stats.duplicates));
        for dead in &job.dead {
            self.add(Outcome::Dead(dead.reason), 1);
        }
    }

    /// Adds the tally to the metrics and starts again from zero.
    pub fn publish(&mut self, metrics: &CounterMetrics) {
        for outcome in Outcome::ALL {
            let records = std::mem::take(self.slot(outcome));
            if records == 0 {
                continue;
            }
            metrics.events.with_label_values(&[outcome.label()]).inc_by(records);
            if let Outcome::Dead(reason) = outcome {
                metrics.dead_letters.with_label_values(&[reason.as_str()]).inc_by(records);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut bytes = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut bytes).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn every_outcome_and_dead_letter_series_exists_at_zero_before_the_first_record() {
        let registry = Registry::new();
        CounterMetrics::register(&registry).unwrap();
        let text = exposition(&registry);
        for line in [
            "tally_counter_events_total{outcome=\"counted\"} 0",
            "tally_counter_events_total{outcome=\"duplicate\"} 0",
            "tally_counter_events_total{outcome=\"late\"} 0",
            "tally_counter_events_total{outcome=\"malformed\"} 0",
            "tally_counter_dead_letters_total{reason=\"late\"} 0",
            "tally_counter_dead_letters_total{reason=\"malformed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("tally_counter_dead_letters_total{reason=\"counted\"}"), "{text}");
    }

    #[test]
    fn a_published_tally_adds_each_outcome_once_and_dead_letters_by_reason() {
        let registry = Registry::new();
        let metrics = CounterMetrics::register(&registry).unwrap();
        let mut tally = OutcomeTally::default();
        tally.add(Outcome::Counted, 7);
        tally.add(Outcome::Dead(DeadReason::Late), 2);
        tally.publish(&metrics);
        tally.publish(&metrics);
        assert_eq!(tally, OutcomeTally::default());
        assert_eq!(metrics.events.with_label_values(&["counted"]).get(), 7);
        assert_eq!(metrics.events.with_label_values(&["late"]).get(), 2);
        assert_eq!(metrics.dead_letters.with_label_values(&["late"]).get(), 2);
        assert_eq!(metrics.dead_letters.with_label_values(&["malformed"]).get(), 0);
    }
}
