//! The writer's metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Writer metrics.
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    /// Batches committed.
    pub batches: IntCounter,
    /// Store transaction latency.
    pub batch_duration: Histogram,
    /// Deltas by outcome (applied, stale, fenced).
    pub deltas: IntCounterVec,
    /// Chunks of superseded owners (zombie counters) dropped.
    pub fenced_chunks: IntCounter,
    /// Unique-viewer sketches by outcome (applied, stale).
    pub sketches: IntCounterVec,
    /// Unique-viewer sketch rows written, by granularity (hour, day).
    pub sketch_rows_written: IntCounterVec,
    /// Store retries after retryable errors.
    pub retries: IntCounter,
    /// Store circuit: 0 closed, 2 open (retrying with backoff).
    pub breaker_state: IntGauge,
    /// Counts records dead-lettered.
    pub dead_letters: IntCounter,
    /// Cache write-through failures (the query falls back to the store).
    pub cache_errors: IntCounter,
    /// Delay from a flush's newest receive time to its store commit.
    pub freshness: Histogram,
    /// Partitions of the counts topic this writer holds (checked every second).
    pub owned_partitions: IntGauge,
    /// Records of tally.counts not yet applied, per held partition ([`crate::lag`]).
    pub lag_records: IntGaugeVec,
    /// When the processing loop last turned, epoch seconds ([`crate::lag`]).
    pub heartbeat: IntGauge,
}

impl WriterMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let buckets = tally_service::http_metrics::LATENCY_BUCKETS.to_vec();
        let m = Self {
            batches: IntCounter::new("tally_writer_batches_total", "Batches applied to the store and committed")?,
            batch_duration: Histogram::with_opts(
                HistogramOpts::new("tally_writer_batch_duration_seconds", "Store transaction latency per batch")
                    .buckets(buckets.clone()),
            )?,
            deltas: IntCounterVec::new(
                Opts::new(
                    "tally_writer_deltas_total",
                    "Deltas by outcome: applied, stale (replayed, ignored), or fenced (emitted by a superseded owner)",
                ),
                &["outcome"],
            )?,
            fenced_chunks: IntCounter::new(
                "tally_writer_fenced_chunks_total",
                "Counts chunks dropped because a later claim superseded their owner (a zombie counter)",
            )?,
            sketches: IntCounterVec::new(
                Opts::new(
                    "tally_writer_sketches_total",
                    "Unique-viewer sketches by outcome: applied (merged into their hour row) or stale (the row had their version: a replay)",
                ),
                &["outcome"],
            )?,
            sketch_rows_written: IntCounterVec::new(
                Opts::new(
                    "tally_writer_sketch_rows_written_total",
                    "Unique-viewer sketch rows (about 8 KiB each) written to the store, by granularity: hour or day",
                ),
                &["granularity"],
            )?,
            retries: IntCounter::new("tally_writer_retries_total", "Store retries after retryable errors")?,
            breaker_state: IntGauge::new(
                "tally_writer_breaker_state",
                "Whether the writer is backing off from its store: 0 no, 2 yes (every attempt at the current batch refused; no breaker sheds work)",
            )?,
            dead_letters: IntCounter::new(
                "tally_writer_dead_letters_total",
                "Counts records sent to the counts dead-letter topic",
            )?,
            cache_errors: IntCounter::new("tally_writer_cache_errors_total", "Cache write-through failures")?,
            freshness: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_writer_freshness_seconds",
                    "From the newest gateway receive time of a flush to its store commit",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            )?,
            owned_partitions: IntGauge::new(
                "tally_writer_owned_partitions",
                "Partitions of the counts topic assigned to this writer",
            )?,
            lag_records: IntGaugeVec::new(
                Opts::new(
                    "tally_writer_consumer_lag_records",
                    "Records of the counts topic not yet applied (high watermark minus position), per partition held",
                ),
                &["partition"],
            )?,
            heartbeat: IntGauge::new(
                "tally_writer_heartbeat_timestamp_seconds",
                "When the writer's processing loop last turned (epoch seconds); stamped at least every second, also while retrying the store",
            )?,
        };
        // From registration on, not 0 (1970): a liveness probe or an alert
        // reading it before the loop's first turn sees a fresh process.
        m.heartbeat.set(tally_model::timestamp::now_ms() / 1000);
        // Every outcome exists from the start at 0, so rate() and increase()
        // see the first delta of each.
        for outcome in ["applied", "stale", "fenced"] {
            m.deltas.with_label_values(&[outcome]);
        }
        for outcome in ["applied", "stale"] {
            m.sketches.with_label_values(&[outcome]);
        }
        for granularity in ["hour", "day"] {
            m.sketch_rows_written.with_label_values(&[granularity]);
        }
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.batch_duration.clone()))?;
        registry.register(Box::new(m.deltas.clone()))?;
        registry.register(Box::new(m.fenced_chunks.clone()))?;
        registry.register(Box::new(m.sketches.clone()))?;
        registry.register(Box::new(m.sketch_rows_written.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.cache_errors.clone()))?;
        registry.register(Box::new(m.freshness.clone()))?;
        registry.register(Box::new(m.owned_partitions.clone()))?;
        registry.register(Box::new(m.lag_records.clone()))?;
        registry.register(Box::new(m.heartbeat.clone()))?;
        Ok(m)
    }
}
