//! Consumer lag, measured off the consumer thread.
//!
//! The worker publishes each owned partition's next offset into
//! [`Positions`], a small map it updates once per batch. A [`LagMonitor`]
//! thread with clients of its own asks the broker, every `lag-interval`, for
//! each partition's high watermark and, for a partition behind it, for the
//! timestamp of the oldest record not yet processed (the record at the next
//! offset; the gateway's producer stamps it when it sends). Lag in seconds is
//! that record's age: how long the oldest unprocessed view has waited. (The
//! age of the last *processed* record would read an hour after an idle hour
//! as soon as one new record arrives.) A slow or unreachable broker (1 s
//! timeout per request) stalls only that thread, never the poll loop.
//!
//! Metrics: `tally_counter_consumer_lag_records` and
//! `tally_counter_consumer_lag_seconds` per partition;
//! `tally_counter_owned_lag_records` (their sum) and
//! `tally_counter_owned_lag_seconds` (their largest) over the partitions this
//! instance owns.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::metrics::CounterMetrics;

pub use crate::lag_probe::BrokerLagSource;

/// Where one owned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Next offset the counter will process.
    pub next_offset: i64,
}

/// What the broker says of one owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// Its high watermark (one past the last record).
    pub high: i64,
    /// Timestamp of the record at the partition's next offset, when it is behind
    /// and the broker answered.
    pub oldest_unprocessed_ms: Option<i64>,
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

    /// Where `partition` stands, if it is owned.
    pub fn position(&self, partition: i32) -> Option<Position> {
        self.lock().get(&partition).copied()
    }

    /// Publishes lag from what the broker said of some partitions.
    /// Partitions released since are skipped; a partition the broker did not
    /// answer for keeps its last value and is left out of the sum. Records
    /// processed since the measurement only make it an overestimate by one
    /// interval at most.
    pub fn publish(&self, measured: &[PartitionLag], now_ms: i64) {
        let map = self.lock();
        let (mut sum, mut max_seconds) = (0i64, 0i64);
        for measurement in measured {
            let partition = &measurement.partition;
            let Some(position) = map.get(partition) else { continue };
            let lag = (measurement.high - position.next_offset).max(0);
            let seconds = match measurement.oldest_unprocessed_ms {
                Some(oldest_ms) if lag > 0 => ((now_ms - oldest_ms) / 1000).max(0),
                _ => 0,
            };
            let label = partition.to_string();
            self.metrics.lag_records.with_label_values(&[&label]).set(lag);
            self.metrics.lag_seconds.with_label_values(&[&label]).set(seconds);
            sum += lag;
            max_seconds = max_seconds.max(seconds);
        }
        self.metrics.owned_lag_records.set(sum);
        self.metrics.owned_lag_seconds.set(max_seconds);
    }
}

/// What the lag is measured against (the broker; a fake in tests).
pub trait LagSource: Send + 'static {
    /// The high watermark of `partition` of the views topic.
    fn high(&self, partition: i32) -> Result<i64, KafkaError>;
    /// Timestamp (epoch ms) of the first record of `partition` at or after
    /// `offset`, or `None` when none arrived within the request's time.
    fn timestamp_at(&mut self, partition: i32, offset: i64) -> Result<Option<i64>, KafkaError>;
}

/// The lag-measuring thread; stopped (and joined) on drop, or within a
/// bound by [`Self::stop_within`].
pub struct LagMonitor {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LagMonitor {
    /// Starts measuring every `interval`.
    pub fn spawn(positions: Positions, source: impl LagSource, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tally-counter-lag".into())
            .spawn(move || monitor(&positions, source, interval, &stopped))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }

    /// Tells the thread to stop at its next check, without waiting: a
    /// request to an unreachable broker may hold it for its timeout.
    pub fn request_stop(&mut self) {
        drop(self.stop.take());
    }

    /// Stops the thread and waits for it at most `within`; a thread still
    /// in a broker request then ends on its own when the request does.
    /// Whether it ended in time.
    pub fn stop_within(mut self, within: Duration) -> bool {
        self.request_stop();
        let Some(thread) = self.thread.take() else { return true };
        let deadline = std::time::Instant::now() + within;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
            true
        } else {
            false
        }
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn monitor(positions: &Positions, mut source: impl LagSource, interval: Duration, stopped: &Receiver<()>) {
    // The oldest unprocessed record's timestamp per partition, by offset: a
    // partition that has not moved is not asked again.
    let mut oldest: HashMap<i32, (i64, i64)> = HashMap::new();
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let owned = positions.partitions();
        oldest.retain(|partition, _| owned.contains(partition));
        let mut measured = Vec::new();
        for partition in owned {
            // Checked before every partition: with the broker gone each
            // request waits out its timeout, and the drain must not.
            if !matches!(stopped.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                return;
            }
            let high = match source.high(partition) {
                Ok(high) => high,
                Err(e) => {
                    tracing::debug!(partition, error = %e, "high watermark unavailable; lag not updated");
                    continue;
                }
            };
            let Some(position) = positions.position(partition) else { continue };
            let oldest_unprocessed_ms = if high <= position.next_offset {
                None
            } else if let Some(ms) =
                oldest.get(&partition).and_then(|&(offset, ms)| (offset == position.next_offset).then_some(ms))
            {
                Some(ms)
            } else {
                match source.timestamp_at(partition, position.next_offset) {
                    Ok(Some(ms)) => {
                        oldest.insert(partition, (position.next_offset, ms));
                        Some(ms)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(partition, error = %e, "oldest unprocessed record unavailable; lag not updated");
                        continue;
                    }
                }
            };
            measured.push(PartitionLag { partition, high, oldest_unprocessed_ms });
        }
        positions.publish(&measured, tally_model::timestamp::now_ms());
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
        positions.update(0, Position { next_offset: 90 });
        positions.update(1, Position { next_offset: 40 });
        positions.update(2, Position { next_offset: 7 });
        let lag = |partition, high, oldest: Option<i64>| PartitionLag {
            partition,
            high,
            oldest_unprocessed_ms: oldest.map(|age| now - age),
        };
        positions.publish(&[lag(0, 100, Some(5_000)), lag(1, 40, None), lag(2, 10, Some(60_000))], now);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("0")), Some(10));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_seconds", Some("0")), Some(5));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("1")), Some(0));
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_seconds", Some("1")), Some(0), "caught up: 0 s");
        assert_eq!(gauge(&registry, "tally_counter_owned_lag_records", None), Some(13));
        assert_eq!(gauge(&registry, "tally_counter_owned_lag_seconds", None), Some(60));

        positions.remove(2);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("2")), None);
        // A measurement started before the release must not bring the series back.
        positions.publish(&[lag(0, 100, Some(5_000)), lag(2, 10, Some(60_000))], now);
        assert_eq!(gauge(&registry, "tally_counter_consumer_lag_records", Some("2")), None);
        assert_eq!(gauge(&registry, "tally_counter_owned_lag_records", None), Some(10));
    }

    /// A topic whose records are stamped by the test: offset -> timestamp.
    struct Stamped {
        stamps: Vec<i64>,
        asked: Arc<AtomicI64>,
    }

    impl LagSource for Stamped {
        fn high(&self, _: i32) -> Result<i64, KafkaError> {
            Ok(self.stamps.len() as i64)
        }

        fn timestamp_at(&mut self, _: i32, offset: i64) -> Result<Option<i64>, KafkaError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(usize::try_from(offset).ok().and_then(|o| self.stamps.get(o).copied()))
        }
    }

    #[test]
    fn lag_in_seconds_is_the_age_of_the_oldest_unprocessed_record_not_of_the_last_processed_one() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        let now = tally_model::timestamp::now_ms();
        // An hour of silence after offset 0, then one view 30 s ago that is
        // not processed yet: it has waited 30 s, not an hour.
        let asked = Arc::new(AtomicI64::new(0));
        let source = Stamped { stamps: vec![now - 3_600_000, now - 30_000], asked: asked.clone() };
        positions.update(0, Position { next_offset: 1 });
        let monitor = LagMonitor::spawn(positions.clone(), source, Duration::from_millis(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauge(&registry, "tally_counter_owned_lag_records", None) != Some(1) {
            assert!(Instant::now() < deadline, "lag not published");
            std::thread::sleep(Duration::from_millis(10));
        }
        let seconds = gauge(&registry, "tally_counter_consumer_lag_seconds", Some("0")).unwrap();
        assert!((30..=35).contains(&seconds), "lag seconds {seconds}");
        assert_eq!(gauge(&registry, "tally_counter_owned_lag_seconds", None), Some(seconds));
        // A partition that has not moved is not probed again.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the same offset was probed again");
        // Caught up: no record to wait for, no lag.
        positions.update(0, Position { next_offset: 2 });
        while gauge(&registry, "tally_counter_owned_lag_records", None) != Some(0) {
            assert!(Instant::now() < deadline, "caught-up lag not published");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(gauge(&registry, "tally_counter_owned_lag_seconds", None), Some(0));
        drop(monitor);
    }

    /// Requests that take `delay` each, reporting a high watermark set by the test.
    struct Slow {
        delay: Duration,
        high: Arc<AtomicI64>,
    }

    impl LagSource for Slow {
        fn high(&self, _: i32) -> Result<i64, KafkaError> {
            std::thread::sleep(self.delay);
            Ok(self.high.load(Ordering::SeqCst))
        }

        fn timestamp_at(&mut self, _: i32, _: i64) -> Result<Option<i64>, KafkaError> {
            std::thread::sleep(self.delay);
            Ok(Some(1))
        }
    }

    #[test]
    fn slow_watermark_requests_never_block_the_worker_and_lag_still_arrives() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        positions.update(0, Position { next_offset: 0 });
        let high = Arc::new(AtomicI64::new(500));
        let source = Slow { delay: Duration::from_millis(400), high: high.clone() };
        let monitor = LagMonitor::spawn(positions.clone(), source, Duration::from_millis(10)).unwrap();
        // The worker's side: many position updates while requests are outstanding.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for next in 0..2_000i64 {
            let one = Instant::now();
            positions.update(0, Position { next_offset: next });
            slowest = slowest.max(one.elapsed());
            if next % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(slowest < Duration::from_millis(100), "a position update waited {slowest:?} for a watermark request");
        assert!(started.elapsed() < Duration::from_millis(400) * 2, "updates took {:?}", started.elapsed());
        positions.update(0, Position { next_offset: 200 });
        let deadline = Instant::now() + Duration::from_secs(5);
        while gauge(&registry, "tally_counter_owned_lag_records", None) != Some(300) {
            assert!(
                Instant::now() < deadline,
                "lag not published: {:?}",
                gauge(&registry, "tally_counter_owned_lag_records", None)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopping = Instant::now();
        drop(monitor);
        assert!(stopping.elapsed() < Duration::from_secs(2), "the monitor stops within one request");
    }

    /// A broker that is gone: every request fails after `delay`.
    struct Gone {
        delay: Duration,
        asked: Arc<AtomicI64>,
    }

    impl LagSource for Gone {
        fn high(&self, _: i32) -> Result<i64, KafkaError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            Err(KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::AllBrokersDown))
        }

        fn timestamp_at(&mut self, _: i32, _: i64) -> Result<Option<i64>, KafkaError> {
            unreachable!("no high watermark, no probe")
        }
    }

    #[test]
    fn a_monitor_whose_broker_is_gone_stops_within_one_request_not_one_per_partition() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        for partition in 0..8 {
            positions.update(partition, Position { next_offset: 0 });
        }
        let delay = Duration::from_millis(300);
        let asked = Arc::new(AtomicI64::new(0));
        let monitor =
            LagMonitor::spawn(positions, Gone { delay, asked: asked.clone() }, Duration::from_millis(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while asked.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the monitor never asked the broker");
            std::thread::sleep(Duration::from_millis(1));
        }
        let stopping = Instant::now();
        assert!(monitor.stop_within(Duration::from_secs(5)), "the monitor did not stop");
        let took = stopping.elapsed();
        assert!(took < delay * 2, "stopping took {took:?}: it went on asking for the other partitions");
        assert_eq!(asked.load(Ordering::SeqCst), 1, "requests after the stop was asked for");
    }

    #[test]
    fn stopping_within_a_bound_shorter_than_the_request_leaves_the_monitor_to_end_with_it() {
        let registry = Registry::new();
        let positions = Positions::new(CounterMetrics::register(&registry).unwrap());
        positions.update(0, Position { next_offset: 0 });
        let asked = Arc::new(AtomicI64::new(0));
        let gone = Gone { delay: Duration::from_secs(1), asked: asked.clone() };
        let monitor = LagMonitor::spawn(positions, gone, Duration::from_millis(1)).unwrap();
        while asked.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stopping = Instant::now();
        assert!(!monitor.stop_within(Duration::from_millis(100)), "a request of 1 s cannot end within 100 ms");
        assert!(stopping.elapsed() < Duration::from_millis(500), "stop_within waited past its bound");
    }
}
