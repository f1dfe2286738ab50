//! Reading a topic back in tests: every record, and record counts from watermarks.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;

/// A record as read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition it was on.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers as UTF-8 strings.
    pub headers: Vec<(String, String)>,
}

fn reader(config: &KafkaConfig) -> BaseConsumer {
    base_config(config, "tally-test-reader")
        .set("group.id", crate::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("create test reader")
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default()
}

/// Reads `topic` from the beginning until `expected` records arrived or
/// `limit` passed; returns what it read (sorted by partition and offset).
pub fn read_records(config: &KafkaConfig, topic: &str, expected: usize, limit: Duration) -> Vec<ReadRecord> {
    let consumer = reader(config);
    let mut assignment = TopicPartitionList::new();
    for partition in partitions(&consumer, topic) {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assign partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + limit;
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|header| {
                                let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (header.key.to_owned(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => eprintln!("test reader: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Records in `topic` according to the high watermarks of all partitions.
pub fn record_count(config: &KafkaConfig, topic: &str) -> i64 {
    let consumer = reader(config);
    partitions(&consumer, topic)
        .into_iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            high - low
        })
        .sum()
}

/// Records of `topic` that `group` has not committed yet (high watermark
/// minus committed offset, summed over partitions; a partition without a
/// commit counts from its low watermark).
pub fn group_lag(config: &KafkaConfig, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = base_config(config, "tally-test-lag")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create lag reader");
    let mut list = TopicPartitionList::new();
    let partitions = partitions(&consumer, topic);
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    partitions
        .iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks");
            let done = committed
                .find_partition(topic, *p)
                .and_then(|e| if let Offset::Offset(o) = e.offset() { Some(o) } else { None })
                .unwrap_or(low);
            high - done
        })
        .sum()
}

/// Waits until every `(group, topic)` has committed everything written to
/// the topic: the pipeline has gone quiet. False when `limit` passes first.
pub fn wait_quiet(config: &KafkaConfig, groups: &[(&str, &str)], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if groups.iter().all(|(group, topic)| group_lag(config, group, topic) == 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
