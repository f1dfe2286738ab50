//! How far the archive is complete, in gateway receive time: a period may be
//! recounted only once every event the real-time path could have counted for
//! it is archived, or the batch layer would "correct" true counts downwards.
//!
//! Per partition of the views topic, from the archive's file names and the
//! partition's high watermark:
//! - every offset archived (the files reach the high watermark): complete up
//!   to `in_flight` ago, the longest a gateway may still be delivering an
//!   event it received;
//! - otherwise complete up to the start of the receive hour of the newest
//!   archived file: the records after it were received in that hour or later
//!   (receive times grow along a partition; the archiver cuts files by hour);
//! - nothing archived while records exist: complete through nothing.
//!
//! The archive is complete up to the smallest of these. A dead or slow
//! archiver therefore holds reconciliation back instead of falsifying it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use tally_kafka::KafkaConfig;

use crate::archive::layout::{self, FileRange};

/// High watermark (next offset to be written) per partition of the views topic.
pub type Watermarks = BTreeMap<i32, i64>;

/// Where the views topic's high watermarks come from.
#[derive(Debug, Clone)]
pub enum ViewsLog {
    /// Asked from the broker at each run.
    Kafka(Box<KafkaConfig>),
    /// Given (tools and tests that know the log).
    Known(Watermarks),
}

/// Bound on each broker request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl ViewsLog {
    /// The high watermark of every partition of the views topic.
    pub async fn watermarks(&self) -> Result<Watermarks, rdkafka::error::KafkaError> {
        match self {
            Self::Known(known) => Ok(known.clone()),
            Self::Kafka(kafka) => {
                let kafka = kafka.clone();
                tokio::task::spawn_blocking(move || broker_watermarks(&kafka))
                    .await
                    .unwrap_or_else(|_| Err(rdkafka::error::KafkaError::Canceled))
            }
        }
    }
}

fn broker_watermarks(kafka: &KafkaConfig) -> Result<Watermarks, rdkafka::error::KafkaError> {
    let topic = &kafka.topics.views;
    let client: BaseConsumer = tally_kafka::clients::base_config(kafka, "tally-reconciler").create()?;
    let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut out = Watermarks::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = client.fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)?;
        out.insert(partition.id(), high);
    }
    Ok(out)
}

/// How far the archive is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Every event received before this time (epoch ms) is archived.
    pub complete_through_ms: i64,
    /// The partition that bounds it; `None` when every partition is fully archived.
    pub behind_partition: Option<i32>,
}

impl Coverage {
    /// [`Self::complete_through_ms`] as RFC 3339; `None` when nothing is covered.
    pub fn complete_through(&self) -> Option<String> {
        (self.complete_through_ms != i64::MIN)
            .then(|| tally_model::timestamp::format_rfc3339_ms(self.complete_through_ms))
    }
}

/// The coverage of the archive `files` (relative paths with their ranges)
/// over a log with `watermarks`, at `now_ms`.
pub fn coverage(files: &[(String, FileRange)], watermarks: &Watermarks, now_ms: i64, in_flight: Duration) -> Coverage {
    let in_flight = i64::try_from(in_flight.as_millis()).unwrap_or(i64::MAX);
    let settled = now_ms.saturating_sub(in_flight);
    // Per partition: the end of its newest file, and that file's receive hour.
    let mut newest: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (path, (partition, _, end)) in files {
        let Some(hour) = layout::hour_of(path) else { continue };
        let entry = newest.entry(*partition).or_insert((*end, hour));
        if *end > entry.0 {
            *entry = (*end, hour);
        }
    }
    let mut out = Coverage { complete_through_ms: settled, behind_partition: None };
    for (partition, high) in watermarks {
        let through = match newest.get(partition) {
            Some((end, _)) if end >= high => settled,
            Some((_, hour)) => (*hour).min(settled),
            None if *high == 0 => settled,
            None => i64::MIN,
        };
        if through < out.complete_through_ms {
            out = Coverage { complete_through_ms: through, behind_partition: Some(*partition) };
        }
    }
    out
}

/// Whether the period ending at `end_ms` may be recounted: the archive
/// holds every event received up to `lateness` after it.
pub fn covers(coverage: &Coverage, end_ms: i64, lateness: Duration) -> bool {
    let lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
    end_ms.saturating_add(lateness) <= coverage.complete_through_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout::HOUR_MS;

    const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00Z
    const IN_FLIGHT: Duration = Duration::from_secs(30);

    fn file(hour: i64, partition: i32, start: i64, end: i64) -> (String, FileRange) {
        (format!("{}/{}", layout::hour_prefix(hour), layout::file_name(partition, start, end)), (partition, start, end))
    }

    #[test]
    fn a_fully_archived_log_is_complete_up_to_the_delivery_bound() {
        let files = [file(T0, 0, 0, 10), file(T0 + HOUR_MS, 0, 10, 25), file(T0, 1, 0, 7)];
        let watermarks = Watermarks::from([(0, 25), (1, 7), (2, 0)]);
        let now = T0 + 3 * HOUR_MS;
        let covered = coverage(&files, &watermarks, now, IN_FLIGHT);
        assert_eq!(covered, Coverage { complete_through_ms: now - 30_000, behind_partition: None });
    }

    #[test]
    fn a_partition_with_records_past_its_files_bounds_coverage_at_its_newest_files_hour() {
        let files = [file(T0, 0, 0, 10), file(T0 + HOUR_MS, 0, 10, 25), file(T0 + 2 * HOUR_MS, 1, 0, 7)];
        // Partition 0 has 5 records not archived yet (an open file, or a stuck archiver).
        let watermarks = Watermarks::from([(0, 30), (1, 7)]);
        let covered = coverage(&files, &watermarks, T0 + 5 * HOUR_MS, IN_FLIGHT);
        assert_eq!(covered, Coverage { complete_through_ms: T0 + HOUR_MS, behind_partition: Some(0) });
        // The hour before is covered with no lateness, not with one of an hour.
        assert!(covers(&covered, T0 + HOUR_MS, Duration::ZERO));
        assert!(!covers(&covered, T0 + HOUR_MS, Duration::from_secs(1)));
    }

    #[test]
    fn a_partition_with_records_and_no_file_holds_everything_back() {
        let files = [file(T0, 0, 0, 10)];
        let watermarks = Watermarks::from([(0, 10), (1, 3)]);
        let covered = coverage(&files, &watermarks, T0 + 48 * HOUR_MS, IN_FLIGHT);
        assert_eq!(covered, Coverage { complete_through_ms: i64::MIN, behind_partition: Some(1) });
        assert!(!covers(&covered, T0, Duration::ZERO));
    }
}
