//! The writer's lag on `tally.counts` and its loop heartbeat.
//!
//! Every [`LAG_INTERVAL`] the loop hands the consumer to a blocking task that
//! asks the broker for the high watermark of each assigned partition and
//! publishes `high - position` as `tally_writer_consumer_lag_records`. The
//! loop never waits for it: a slow broker leaves the gauges as they were, and
//! at most one measurement runs at a time. Series of partitions the writer no
//! longer holds are removed, so a rebalance leaves no frozen lag behind.
//!
//! The heartbeat (`tally_writer_heartbeat_timestamp_seconds`) is stamped on
//! every turn of the loop, idle or not, and on every retry while the store is
//! away: a writer that stops stamping is wedged inside a call, although its
//! admin port may still answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;

use crate::metrics::WriterMetrics;

/// How often the lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Longest one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Measures the lag off the loop; one measurement at a time.
pub struct LagMonitor {
    topic: String,
    metrics: WriterMetrics,
    last_started: Option<Instant>,
    running: Option<tokio::task::JoinHandle<()>>,
    published: Arc<Mutex<BTreeSet<i32>>>,
}

impl LagMonitor {
    /// A monitor for `topic`, publishing into `metrics`.
    pub fn new(topic: &str, metrics: WriterMetrics) -> Self {
        Self {
            topic: topic.to_owned(),
            metrics,
            last_started: None,
            running: None,
            published: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// Stamps the heartbeat and, when due and no measurement is running,
    /// starts one. Never blocks.
    pub fn tick(&mut self, consumer: &Arc<StreamConsumer>) {
        stamp_heartbeat(&self.metrics);
        if self.last_started.is_some_and(|at| at.elapsed() < LAG_INTERVAL) {
            return;
        }
        if self.running.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        self.last_started = Some(Instant::now());
        let consumer = consumer.clone();
        let topic = self.topic.clone();
        let metrics = self.metrics.clone();
        let published = self.published.clone();
        self.running = Some(tokio::task::spawn_blocking(move || measure(&consumer, &topic, &metrics, &published)));
    }
}

/// Sets the heartbeat to now.
pub fn stamp_heartbeat(metrics: &WriterMetrics) {
    let now = tally_model::timestamp::now_ms();
    metrics.heartbeat.set(now / 1000);
}

fn measure(consumer: &StreamConsumer, topic: &str, metrics: &WriterMetrics, published: &Mutex<BTreeSet<i32>>) {
    let positions = match consumer.position() {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(error = %e, "consumer position unavailable; lag not updated");
            return;
        }
    };
    let mut held = BTreeSet::new();
    for element in positions.elements_for_topic(topic) {
        let partition = element.partition();
        held.insert(partition);
        // Before the first record of a partition its position is unknown:
        // the committed offset is where it will start.
        let position = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let high = match consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
            Ok((_, high)) => high,
            Err(e) => {
                tracing::debug!(partition, error = %e, "high watermark unavailable; lag not updated");
                continue;
            }
        };
        let Some(position) = position.or_else(|| committed(consumer, topic, partition)) else { continue };
        let lag = (high - position).max(0);
        metrics.lag_records.with_label_values(&[&partition.to_string()]).set(lag);
    }
    let mut published = published.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in published.difference(&held) {
        metrics.lag_records.remove_label_values(&[&gone.to_string()]).ok();
    }
    *published = held;
}

/// The committed offset of `partition`, when there is one.
fn committed(consumer: &StreamConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer.committed_offsets(list, WATERMARK_TIMEOUT).ok()?;
    let element = committed.find_partition(topic, partition)?;
    match element.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}
