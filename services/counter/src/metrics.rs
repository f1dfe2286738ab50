//! The counter's metrics. Counted locally and published once per flush or
//! lag tick, never per record.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Counter metrics.
#[derive(Clone, Debug)]
pub struct CounterMetrics {
    /// Records by outcome: counted, duplicate, late, malformed.
    pub events: IntCounterVec,
    /// Dead letters by reason.
    pub dead_letters: IntCounterVec,
    /// Flushes acknowledged.
    pub flushes: IntCounter,
    /// Delta rows per flush.
    pub flush_rows: Histogram,
    /// Time from sealing a flush to its end being stored for commit (every record acknowledged).
    pub flush_duration: Histogram,
    /// Offset commits that failed (background or synchronous), each also logged.
    pub commit_failures: IntCounter,
    /// Ranges re-emitted exactly after a restart or rebalance.
    pub reemitted_ranges: IntCounter,
    /// Open ranges sealed because their partition was revoked.
    pub revoke_flushes: IntCounter,
    /// Time to recover a partition (tail scan and dedup replay).
    pub recovery_duration: Histogram,
    /// Lag per partition in records.
    pub lag_records: IntGaugeVec,
    /// Lag per partition in seconds (now minus receive time of the last record; 0 when caught up).
    pub lag_seconds: IntGaugeVec,
    /// Sum of lag over partitions, in records.
    pub owned_lag_records: IntGauge,
    /// Largest lag over partitions, in seconds.
    pub owned_lag_seconds: IntGauge,
    /// Partitions paused for backpressure.
    pub paused_partitions: IntGauge,
    /// Times a partition was paused for backpressure.
    pub pauses: IntCounter,
    /// Records held by the dedup windows.
    pub dedup_entries: IntGauge,
    /// Approximate bytes held by the dedup windows.
    pub dedup_bytes: IntGauge,
    /// Distinct rows buffered, not yet flushed.
    pub buffered_rows: IntGauge,
    /// Partitions this instance owns.
    pub owned_partitions: IntGauge,
    /// Partitions assigned to this instance by rebalances.
    pub partitions_assigned: IntCounter,
    /// Partitions revoked from this instance by rebalances (an eager
    /// rebalance revokes every owned partition, a cooperative one only those
    /// that move).
    pub partitions_revoked: IntCounter,
    /// Acknowledged flushes of an owner that no longer held the partition, ignored.
    pub stale_completions: IntCounter,
    /// Records whose gateway receive time ran too far ahead of the broker's time.
    pub clock_skew_clamped: IntCounter,
}

impl CounterMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let buckets = tally_service::http_metrics::LATENCY_BUCKETS.to_vec();
        let m = Self {
            events: IntCounterVec::new(
                Opts::new("tally_counter_events_total", "Records read from the views topic, by outcome"),
                &["outcome"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new("tally_counter_dead_letters_total", "Records sent to the views dead-letter topic, by reason"),
                &["reason"],
            )?,
            flushes: IntCounter::new("tally_counter_flushes_total", "Flushes acknowledged and committed")?,
            flush_rows: Histogram::with_opts(
                HistogramOpts::new("tally_counter_flush_rows", "Delta rows per flush").buckets(vec![
                    1.0,
                    10.0,
                    100.0,
                    1_000.0,
                    10_000.0,
                    100_000.0,
                    1_000_000.0,
                ]),
            )?,
            flush_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_counter_flush_duration_seconds",
                    "From sealing a flush to its end being stored for commit (every record acknowledged)",
                )
                .buckets(buckets.clone()),
            )?,
            commit_failures: IntCounter::new(
                "tally_counter_commit_failures_total",
                "Offset commits that failed; one refused because another member has this member's group-instance-id also stops the counter",
            )?,
            reemitted_ranges: IntCounter::new(
                "tally_counter_reemitted_ranges_total",
                "Offset ranges re-emitted with their original version after a restart or rebalance",
            )?,
            revoke_flushes: IntCounter::new(
                "tally_counter_revoke_flushes_total",
                "Open ranges flushed because their partition was revoked in a rebalance (instead of recounted by the next owner)",
            )?,
            recovery_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_counter_recovery_duration_seconds",
                    "Time to take over a partition: tail scan and dedup replay",
                )
                .buckets(buckets),
            )?,
            lag_records: IntGaugeVec::new(
                Opts::new("tally_counter_consumer_lag_records", "Records not yet processed, per partition"),
                &["partition"],
            )?,
            lag_seconds: IntGaugeVec::new(
                Opts::new(
                    "tally_counter_consumer_lag_seconds",
                    "Age of the last processed record (gateway receive time) while behind, per partition",
                ),
                &["partition"],
            )?,
            owned_lag_records: IntGauge::new(
                "tally_counter_owned_lag_records",
                "Records not yet processed, all partitions",
            )?,
            owned_lag_seconds: IntGauge::new(
                "tally_counter_owned_lag_seconds",
                "Largest lag in seconds over partitions",
            )?,
            paused_partitions: IntGauge::new("tally_counter_paused_partitions", "Partitions paused for backpressure")?,
            pauses: IntCounter::new(
                "tally_counter_partition_pauses_total",
                "Times a partition was paused for backpressure (resumed where it stopped)",
            )?,
            dedup_entries: IntGauge::new("tally_counter_dedup_entries", "Records held by the dedup windows")?,
            dedup_bytes: IntGauge::new("tally_counter_dedup_bytes", "Approximate memory held by the dedup windows")?,
            buffered_rows: IntGauge::new("tally_counter_buffered_rows", "Distinct rows buffered and not yet flushed")?,
            owned_partitions: IntGauge::new(
                "tally_counter_owned_partitions",
                "Partitions of the views topic this instance counts",
            )?,
            partitions_assigned: IntCounter::new(
                "tally_counter_partitions_assigned_total",
                "Partitions of the views topic assigned to this instance by rebalances",
            )?,
            partitions_revoked: IntCounter::new(
                "tally_counter_partitions_revoked_total",
                "Partitions of the views topic revoked from this instance by rebalances (eager: all it owned; cooperative: those that move)",
            )?,
            stale_completions: IntCounter::new(
                "tally_counter_stale_completions_total",
                "Flushes acknowledged after their owner released the partition (a revoke gave up waiting); their ends are not committed",
            )?,
            clock_skew_clamped: IntCounter::new(
                "tally_counter_clock_skew_clamped_total",
                "Records whose gateway receive time ran more than counter.max-clock-skew ahead of the broker's timestamp; the dedup window used the broker's time instead",
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.flushes.clone()))?;
        registry.register(Box::new(m.flush_rows.clone()))?;
        registry.register(Box::new(m.flush_duration.clone()))?;
        registry.register(Box::new(m.commit_failures.clone()))?;
        registry.register(Box::new(m.reemitted_ranges.clone()))?;
        registry.register(Box::new(m.revoke_flushes.clone()))?;
        registry.register(Box::new(m.recovery_duration.clone()))?;
        registry.register(Box::new(m.lag_records.clone()))?;
        registry.register(Box::new(m.lag_seconds.clone()))?;
        registry.register(Box::new(m.owned_lag_records.clone()))?;
        registry.register(Box::new(m.owned_lag_seconds.clone()))?;
        registry.register(Box::new(m.paused_partitions.clone()))?;
        registry.register(Box::new(m.pauses.clone()))?;
        registry.register(Box::new(m.dedup_entries.clone()))?;
        registry.register(Box::new(m.dedup_bytes.clone()))?;
        registry.register(Box::new(m.buffered_rows.clone()))?;
        registry.register(Box::new(m.owned_partitions.clone()))?;
        registry.register(Box::new(m.partitions_assigned.clone()))?;
        registry.register(Box::new(m.partitions_revoked.clone()))?;
        registry.register(Box::new(m.stale_completions.clone()))?;
        registry.register(Box::new(m.clock_skew_clamped.clone()))?;
        crate::outcomes::OutcomeTally::initialise(&m);
        Ok(m)
    }
}
