//! Consumer lag, measured off the consumer thread.
//!
//! The worker publishes each owned partition's position (next offset, receive
//! time of the last record) into [`Positions`], a small map it updates once
//! per batch. A [`LagMonitor`] thread with its own client asks the broker for
//! high watermarks every `lag-interval` and sets the lag metrics. A slow or
//! unreachable broker (1 s timeout per partition) stalls only that thread,
//! never the poll loop.
//!
//! Metrics (unchanged names): `tally_counter_consumer_lag_records` and
//! `tally_counter_consumer_lag_seconds` per partition,
//! `tally_counter_consumer_lag_records_sum` and `tally_counter_consumer_lag_seconds_max`.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;

use crate::metrics::CounterMetrics;

/// Longest one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where one owned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Next offset the counter will process.
    pub next_offset: i64,
    /// Gateway receive time of the last record processed (0 before the first).
    pub last_received_ms: i64,
}

/// Positions of the owned partitions, shared by the worker and the monitor.
///
/// Removing a partition also removes its per-partition lag series, under the
/// same lock the monitor holds while publishing, so a released partition's
/// series never reappear.
#[derive(Clone)]
pub struct Positions {
    inner: Arc<Mutex<HashMap<i32, Position>>>,
    metrics: CounterMetrics,
}

impl Positions {
    /// No partition owned yet.
    pub fn new(metrics: CounterMetrics) -> Self {
        Self { inner: Arc::new(Mutex::new(HashMap::new())), metrics }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Position>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records where `partition` stands (cheap: one uncontended lock).
    pub fn update(&self, partition: i32, position: Position) {
        self.lock().insert(partition, position);
    }

    /// Records many positions under one lock.
    pub fn update_all(&self, positions: impl IntoIterator<Item = (i32, Position)>) {
        let mut map = self.lock();
        for (partition, position) in positions {
            map.insert(partition, position);
        }
    }

    /// Forgets `partition` and its per-partition lag series.
    pub fn remove(&self, partition: i32) {
        let mut map = self.lock();
        map.remove(&partition);
        let label = partition.to_string();
        self.metrics.lag_records.remove_label_values(&[&label]).ok();
        self.metrics.lag_seconds.remove_label_values(&[&label]).ok();
    }

    /// The owned partitions, sorted.
    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.lock().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Publishes lag from high watermarks fetched for some partitions.
    /// Partitions released since are skipped; a partition whose watermark
    /// could not be fetched keeps its last value and is left out of the sum.
    pub fn publish(&self, highs: &[(i32, i64)], now_ms: i64) {
        let map = self.lock();
        let (mut sum, mut max_seconds) = (0i64, 0i64);
        for (partition, high) in highs {
            let Some(position) = map.get(partition) else { continue };
            let lag = (high - position.next_offset).max(0);
            let seconds = if lag > 0 && position.last_received_ms > 0 {
                ((now_ms - position.last_received_ms) / 1000).max(0)
            } else {
                0
            };
            let label = partition.to_string();
            self.metrics.lag_records.with_label_values(&[&label]).set(lag);
            self.metrics.lag_seconds.with_label_values(&[&label]).set(seconds);
            sum += lag;
            max_seconds = max_seconds.max(seconds);
        }
        self.metrics.lag_records_sum.set(sum);
        self.metrics.lag_seconds_max.set(max_seconds);
    }
}

/// Where high watermarks come from (the broker; a fake in tests).
pub trait Watermarks: Send + 'static {
    /// The high watermark of `partition` of the views topic.
    fn high(&self, partition: i32) -> Result<i64, rdkafka::error::KafkaError>;
}

/// High watermarks from the broker, through a client of the monitor's own.
pub struct BrokerWatermarks {
    client: BaseConsumer,
    topic: String,
}

impl BrokerWatermarks {
    /// A client that only asks for watermarks (no group, no fetching).
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let client = base_config(kafka, "tally-counter-lag").create()?;
        Ok(Self { client, topic: topic.to_owned() })
    }
}

impl Watermarks for BrokerWatermarks {
    fn high(&self, partition: i32) -> Result<i64, rdkafka::error::KafkaError> {
        self.client.fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT).map(|(_, high)| high)
    }
}

/// The lag-measuring thread; stopped (and joined) on drop.
pub struct LagMonitor {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LagMonitor {
    /// Starts measuring every `interval`.
    pub fn spawn(positions: Positions, source: impl Watermarks, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tally-counter-lag".into())
            .spawn(move || monitor(&positions, &source, interval, &stopped))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn monitor(positions: &Positions, source: &impl Watermarks, interval: Duration, stopped: &Receiver<()>) {
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut highs = Vec::new();
        for partition in positions.partitions() {
            match source.high(partition) {
                Ok(high) => highs.push((partition, high)),
                Err(e) => tracing::debug!(partition, error = %e, "high watermark unavailable; lag not updated"),
            }
            if !matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                return;
            }
        }
        positions.publish(&highs, tally_model::timestamp::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Instant;

    use prometheus::Registry;

    use super::*;

    fn gauge(registry: &Registry, name: &str, partition: Option<&str>) -> Option<i64> {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .find(|m| partition.is_none_or(|p| m.get_label().iter().any(|l| l.value() == p)))
            .map(|m| m.get_gauge().get_value() as i64)
    }

    #[test]
    fn lag_is_published_per_partition_with_sum_and_max_and_released_series_stay_gone() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        let now = 1_795_341_600_000;
        positions.update(0, Position { next_offset: 90, last_received_ms: now - 5_000 });
        positions.update(1, Position { next_offset: 40, last_received_ms: now - 1_000 });
        positions.update(2, Position { next_offset: 7, last_received_ms: now - 60_000 });
        positions.publish(&[(0, 100), (1, 40), (2, 10)], now);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("0")), Some(10));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_seconds", Some("0")), Some(5));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("1")), Some(0));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_seconds", Some("1")), Some(0), "caught up: 0 s");
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records_sum", None), Some(13));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_seconds_max", None), Some(60));

        positions.remove(2);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("2")), None);
        // A measurement started before the release must not bring the series back.
        positions.publish(&[(0, 100), (2, 10)], now);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("2")), None);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records_sum", None), Some(10));
    }

    /// Watermarks that take `delay` each, reporting a high watermark set by the test.
    struct Slow {
        delay: Duration,
        high: Arc<AtomicI64>,
    }

    impl Watermarks for Slow {
        fn high(&self, _: i32) -> Result<i64, rdkafka::error::KafkaError> {
            std::thread::sleep(self.delay);
            Ok(self.high.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn slow_watermark_requests_never_block_the_worker_and_lag_still_arrives() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        positions.update(0, Position { next_offset: 0, last_received_ms: 0 });
        let high = Arc::new(AtomicI64::new(500));
        let source = Slow { delay: Duration::from_millis(400), high: high.clone() };
        let monitor = LagMonitor::spawn(positions.clone(), source, Duration::from_millis(10)).unwrap();
        // The worker's side: many position updates while requests are outstanding.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for next in 0..2_000i64 {
            let one = Instant::now();
            positions.update(0, Position { next_offset: next, last_received_ms: 1 });
            slowest = slowest.max(one.elapsed());
            if next % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(slowest < Duration::from_millis(100), "a position update waited {slowest:?} for a watermark request");
        assert!(started.elapsed() < Duration::from_millis(400) * 2, "updates took {:?}", started.elapsed());
        positions.update(0, Position { next_offset: 200, last_received_ms: 1 });
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauge(&registry, "tally_counter_consumer_lag_records_sum", None) != Some(300) {
            assert!(
                Instant::now() < deadline,
                "lag not published: {:?}",
                gauge(&registry, "tally_counter_consumer_lag_records_sum", None)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopping = Instant::now();
        drop(monitor);
        assert!(stopping.elapsed() < Duration::from_secs(2), "the monitor stops within one request");
    }
}
