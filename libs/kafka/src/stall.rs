//! A watch for partitions nobody consumes (`kafka.rejoin-when-partition-stalled`).
//!
//! tansu 0.6 does not take a partition away from a group member that died
//! without leaving (kill -9) while other members keep heartbeating: the dead
//! member's partitions stay assigned to it forever (measured: still orphaned
//! 90 s after the kill with `session.timeout.ms` = 6 s; Apache Kafka
//! rebalances after the session timeout). A join round does evict it. So
//! every interval this thread looks at the partitions this member does *not*
//! own: one whose committed offset has not moved for the configured time
//! while records wait behind it is presumed orphaned, and the member rejoins
//! the group, which starts that round. Off unless configured (standalone and
//! the tests turn it on); on a healthy broker it only costs an offset fetch,
//! and a member that owns every partition observes nothing.
//!
//! Used by the counter and the writer, whose groups commit after every flush
//! or batch. Not by the archiver: it commits when a file is sealed (hourly by
//! default), so its committed offsets stand still for long stretches by design.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Bound on each request to the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What one look at a partition found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The group's committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// The high watermark.
    pub high: i64,
}

/// Per-partition memory of when the committed offset last moved.
#[derive(Debug, Default)]
pub struct StallTracker {
    seen: HashMap<i32, (Option<i64>, Instant)>,
}

impl StallTracker {
    /// Records `observations` of partitions owned by others at `now`;
    /// returns the partitions stalled for at least `after` with records waiting.
    pub fn observe(&mut self, observations: &[(i32, Observation)], now: Instant, after: Duration) -> Vec<i32> {
        let mut stalled = Vec::new();
        let current: Vec<i32> = observations.iter().map(|(p, _)| *p).collect();
        self.seen.retain(|p, _| current.contains(p));
        for (partition, observation) in observations {
            let entry = self.seen.entry(*partition).or_insert((observation.committed, now));
            if entry.0 != observation.committed {
                *entry = (observation.committed, now);
                continue;
            }
            let waiting = observation.high > observation.committed.unwrap_or(0);
            if waiting && now.duration_since(entry.1) >= after {
                stalled.push(*partition);
            }
        }
        stalled
    }

    /// Forgets everything (after a rejoin, every partition starts afresh).
    pub fn reset(&mut self) {
        self.seen.clear();
    }
}

/// The watching thread, told to stop when this is dropped (the channel
/// closes). It is not waited for: with the broker gone its current look may
/// take several request timeouts, and a service shutting down must not wait.
pub struct StallWatch {
    _stop: Sender<()>,
}

impl StallWatch {
    /// Watches `topic` through `client` (configured with the group's id, never
    /// subscribed) every `interval`; `owned` tells which partitions this
    /// member holds; sets `rejoin` when a partition owned by another member
    /// is stalled for `after`. The thread is named `thread_name`.
    pub fn spawn(
        thread_name: &str,
        client: BaseConsumer,
        topic: String,
        owned: impl Fn() -> Vec<i32> + Send + 'static,
        (after, interval): (Duration, Duration),
        rejoin: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel();
        std::thread::Builder::new().name(thread_name.into()).spawn(move || {
            watch(&client, &topic, &owned, (after, interval), &rejoin, &stopped);
        })?;
        Ok(Self { _stop: stop })
    }
}

fn watch(
    client: &BaseConsumer,
    topic: &str,
    owned: &dyn Fn() -> Vec<i32>,
    (after, interval): (Duration, Duration),
    rejoin: &AtomicBool,
    stopped: &Receiver<()>,
) {
    let mut tracker = StallTracker::default();
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Ok(observations) = observe_others(client, topic, &owned()) else { continue };
        let stalled = tracker.observe(&observations, Instant::now(), after);
        if !stalled.is_empty() {
            tracing::warn!(?stalled, "partitions owned by another member made no progress; rejoining the group");
            rejoin.store(true, Ordering::SeqCst);
            tracker.reset();
        }
    }
}

/// Committed offsets and high watermarks of the partitions not in `owned`.
fn observe_others(
    client: &BaseConsumer,
    topic: &str,
    owned: &[i32],
) -> Result<Vec<(i32, Observation)>, rdkafka::error::KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| !owned.contains(p))
        .collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = client.committed_offsets(list, REQUEST_TIMEOUT)?;
    let mut out = Vec::with_capacity(partitions.len());
    for element in committed.elements() {
        let (_, high) = client.fetch_watermarks(topic, element.partition(), REQUEST_TIMEOUT)?;
        let committed = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        out.push((element.partition(), Observation { committed, high }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    fn at(partition: i32, committed: Option<i64>, high: i64) -> (i32, Observation) {
        (partition, Observation { committed, high })
    }

    #[test]
    fn a_partition_whose_commits_stop_while_records_wait_is_stalled_after_the_delay() {
        let mut tracker = StallTracker::default();
        let t0 = Instant::now();
        assert!(tracker.observe(&[at(1, Some(10), 50)], t0, AFTER).is_empty());
        assert!(tracker.observe(&[at(1, Some(10), 80)], t0 + Duration::from_secs(29), AFTER).is_empty());
        assert_eq!(tracker.observe(&[at(1, Some(10), 90)], t0 + AFTER, AFTER), vec![1]);
    }

    #[test]
    fn progress_idle_partitions_and_released_ones_are_not_stalled() {
        let mut tracker = StallTracker::default();
        let t0 = Instant::now();
        tracker.observe(&[at(1, Some(10), 50), at(2, Some(7), 7), at(3, None, 0)], t0, AFTER);
        let later = t0 + Duration::from_secs(40);
        // 1 moved on; 2 has nothing waiting; 3 was never written to.
        assert!(tracker.observe(&[at(1, Some(20), 50), at(2, Some(7), 7), at(3, None, 0)], later, AFTER).is_empty());
        // 1 then stops with records waiting: the clock starts from its last move.
        assert!(tracker.observe(&[at(1, Some(20), 60)], later + Duration::from_secs(29), AFTER).is_empty());
        assert_eq!(tracker.observe(&[at(1, Some(20), 60)], later + AFTER, AFTER), vec![1]);
        // A partition that comes back after being owned here starts afresh.
        tracker.observe(&[], later + AFTER, AFTER);
        assert!(tracker.observe(&[at(1, Some(20), 60)], later + 2 * AFTER, AFTER).is_empty());
    }
}
