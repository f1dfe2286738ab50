//! The `[counter]` configuration section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tally_model::counting::CountingRule;

/// Counter settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CounterConfig {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`) when run on its own.
    pub admin_listen: SocketAddr,
    /// Consumer group of all counter instances.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a stable name per
    /// instance, unique in the group, typically the pod name of a
    /// StatefulSet (`TALLY_COUNTER__GROUP_INSTANCE_ID` from `metadata.name`).
    /// An instance that restarts within the group's session timeout gets its
    /// partitions back without a rebalance; one that stops keeps them
    /// (uncounted) until its session expires. Absent: dynamic membership.
    pub group_instance_id: Option<String>,
    /// How often each partition's open range is flushed to the counts topic:
    /// the main term of freshness.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Distinct rows after which a partition flushes early.
    pub max_rows_per_flush: usize,
    /// Distinct rows a partition may buffer while its previous flush is still
    /// unacknowledged; above it the partition is paused (backpressure).
    pub max_buffered_rows: usize,
    /// Deltas per record of the counts topic.
    pub chunk_rows: usize,
    /// Resends of an event id received within this time are counted once.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most records one partition's dedup window holds (memory bound,
    /// about 64 bytes each); at high rates this, not the time, bounds the window.
    pub dedup_max_entries: usize,
    /// How far a gateway's receive time may run ahead of the broker's
    /// timestamp of its record (`tally.views` is created with
    /// `message.timestamp.type=LogAppendTime`: the broker's clock) before the
    /// dedup window uses the broker's time plus this instead. Guards the
    /// window against a gateway whose clock runs ahead; must exceed the
    /// clock error between gateways and brokers.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Events whose time is more than this before their receive time are late:
    /// dead-lettered for the batch layer instead of counted.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Dead-letter limit: the consumer halts when malformed records exceed
    /// this share of a flush range (once it holds `dlq-min-records`).
    pub dlq_max_ratio: f64,
    /// Records a range must hold before `dlq-max-ratio` applies.
    pub dlq_min_records: u32,
    /// Dead-letter limit: the consumer halts after this many malformed records in a row.
    pub dlq_max_consecutive: u32,
    /// How long the producer retries one record before the flush is retried.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How often consumer lag is measured (on a thread of its own, with its
    /// own client: a slow broker never stalls polling).
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
    /// lgK of the unique-viewer sketches the counter builds per video and
    /// hour (4..=21): 2^lgK registers, a relative standard error of about
    /// 1.04 / 2^(lgK/2) once merged (0.8 % at 14), 2^(lgK-1) bytes per sketch
    /// once past the exact range (8 KiB at 14). Changing it later is safe:
    /// sketches of different lgK merge at the smaller one.
    pub uniques_lg_k: u8,
    /// Bytes of sketches per record of the counts topic (a record holds at
    /// least one sketch, whatever its size).
    pub chunk_sketch_bytes: usize,
    /// log2 of the slots of the frequent-items sketch a flush carries per
    /// minute it touched, for trending videos (3..=16). A sketch keeps up to
    /// `0.75 × 2^lg` videos exactly; beyond, its estimates are within
    /// `3.5 / 2^lg` of the minute's views the flush saw (usually far less).
    /// At most about `2^lg × 0.75 × (video id bytes + 12)` bytes per sketch.
    pub trending_lg_max_map_size: u8,
}

impl CounterConfig {
    /// The counting rule of this configuration (the reconciler's recount
    /// applies it too, from the same `[counter]` section).
    pub fn counting_rule(&self) -> CountingRule {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        CountingRule {
            allowed_lateness_ms: millis(self.allowed_lateness),
            dedup_window_ms: millis(self.dedup_window),
            dedup_max_entries: self.dedup_max_entries,
            max_clock_skew_ms: millis(self.max_clock_skew),
        }
    }
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9081)),
            group_id: "tally-counter".into(),
            group_instance_id: None,
            flush_interval: Duration::from_secs(1),
            max_rows_per_flush: 100_000,
            max_buffered_rows: 1_000_000,
            chunk_rows: 5_000,
            dedup_window: Duration::from_secs(600),
            dedup_max_entries: 2_000_000,
            max_clock_skew: Duration::from_secs(60),
            allowed_lateness: Duration::from_secs(3600),
            dlq_max_ratio: 0.5,
            dlq_min_records: 100,
            dlq_max_consecutive: 1_000,
            delivery_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(2),
            uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
            trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
            chunk_sketch_bytes: 256 * 1024,
        }
    }
}
