//! An oracle for the counts topic, independent of the writer and of the
//! counter's verifier (`tally_counter::verify`, which folds with the
//! writer's own `Fences`): exactness tests compare what it reads with what
//! the test produced.
//!
//! Its rule, written out plainly: per source partition, the owner is the
//! one whose claim was read last (before any claim, the owner of the first
//! chunk); a chunk counts only if its owner is the owner at that point of
//! the log; each chunk of a flush (source partition, epoch, range, chunk
//! index) counts once, however often it was emitted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;
use tally_model::counts::{self, CountsRecord};

use crate::topic::{read_records, record_count};

/// Views per video in `kafka`'s counts topic, read from the beginning to its
/// current end (records that cannot be decoded fail the test).
pub fn views_per_video(kafka: &KafkaConfig, limit: Duration) -> BTreeMap<String, i64> {
    views_by(kafka, limit, |delta, _| delta.video_id.clone())
}

/// Views per (video, minute start in epoch ms, source partition) in
/// `kafka`'s counts topic, by the same rule: where a difference is.
pub fn views_per_video_minute_partition(kafka: &KafkaConfig, limit: Duration) -> BTreeMap<(String, i64, u32), i64> {
    views_by(kafka, limit, |delta, header| (delta.video_id.clone(), delta.minute, header.source_partition))
}

/// Views of the counted deltas in `kafka`'s counts topic, summed per `key`.
fn views_by<K: Ord>(
    kafka: &KafkaConfig,
    limit: Duration,
    key: impl Fn(&counts::Delta, &counts::FlushHeader) -> K,
) -> BTreeMap<K, i64> {
    let topic = &kafka.topics.counts;
    let expected = usize::try_from(record_count(kafka, topic)).expect("a record count");
    let records = read_records(kafka, topic, expected, limit);
    assert_eq!(records.len(), expected, "every record of {topic} read within {limit:?}");
    let mut owners: HashMap<u32, u64> = HashMap::new();
    let mut counted: HashSet<(u32, u32, i64, i64, u32)> = HashSet::new();
    let mut views = BTreeMap::new();
    // Sorted by counts partition and offset: each source partition lives in one counts partition.
    for record in records {
        match counts::decode(&record.payload).expect("a counts record") {
            CountsRecord::Claim(claim) => {
                owners.insert(claim.source_partition, claim.owner);
            }
            CountsRecord::Chunk(chunk) => {
                let h = chunk.header;
                let owner = *owners.entry(h.source_partition).or_insert(h.owner);
                if owner != h.owner || !counted.insert((h.source_partition, h.epoch, h.start, h.end, h.chunk_index)) {
                    continue;
                }
                for delta in &chunk.deltas {
                    *views.entry(key(delta, &h)).or_default() += i64::from(delta.count);
                }
            }
        }
    }
    views
}

/// Whether consumer group `group` has committed every partition of `topic`
/// up to its current end (for the counter: every flush up to the end of the
/// views topic acknowledged, so nothing more will be emitted for it).
pub fn group_caught_up(kafka: &KafkaConfig, group: &str, topic: &str) -> bool {
    let consumer: BaseConsumer = base_config(kafka, "tally-test-group-check")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create group checker");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed.elements().iter().all(|element| {
        let (low, high) =
            consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(10)).expect("watermarks");
        match element.offset() {
            Offset::Offset(done) => done >= high,
            _ => high == low,
        }
    })
}

/// Waits (at most `limit`) until the oracle reads `expected` from the counts
/// topic, then until the counter group `group` has committed the whole views
/// topic (the pipeline has gone quiet: a double count landing late would be
/// in the counts topic by then), and returns what the oracle reads at that
/// point, for the test to compare with `expected` once more.
pub async fn settled_views(
    kafka: &KafkaConfig,
    group: &str,
    expected: &BTreeMap<String, i64>,
    limit: Duration,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + limit;
    let read = |kafka: KafkaConfig| async move {
        tokio::task::spawn_blocking(move || views_per_video(&kafka, Duration::from_secs(60))).await.expect("oracle")
    };
    loop {
        let views = read(kafka.clone()).await;
        if &views == expected {
            break;
        }
        assert!(Instant::now() < deadline, "counts never reached {expected:?}; last read {views:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    loop {
        let (k, g) = (kafka.clone(), group.to_owned());
        let quiet = tokio::task::spawn_blocking(move || group_caught_up(&k, &g, &k.topics.views)).await.expect("check");
        if quiet {
            break;
        }
        assert!(Instant::now() < deadline, "group {group} never committed the end of the views topic");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    read(kafka.clone()).await
}
