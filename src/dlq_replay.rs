//! `tally dlq replay`: re-inject dead letters into the topic they came from,
//! after the cause was fixed (a producer bug, a lateness limit raised).
//!
//! Reads the dead-letter topic with its own consumer group (one per `--kind`,
//! so replaying late events does not consume malformed ones), up to the end
//! it had when the command started; re-produces each record's original key
//! and payload to `tally.source.topic`; commits after every record of a batch
//! is acknowledged. A dead letter may have been written twice (the counter
//! dead-letters at least once); records with the same source partition and
//! offset are replayed once per run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::{base_config, idempotent_producer, ProducerSettings};
use tally_kafka::KafkaConfig;

/// What a replay run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records re-injected.
    pub replayed: u64,
    /// Records whose kind did not match the filter (left for another run).
    pub filtered: u64,
    /// Second copies of the same source record.
    pub duplicates: u64,
    /// Records without provenance (cannot be routed back).
    pub unroutable: u64,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The dead-letter topic to read.
    pub dlq_topic: String,
    /// Only records whose `tally.error.kind` is this (`late`, `malformed`); all when `None`.
    pub kind: Option<String>,
    /// Count only, produce nothing, commit nothing.
    pub dry_run: bool,
}

fn header<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// Replays dead letters of `options.dlq_topic` (blocking; run it off the async runtime).
pub fn replay(kafka: &KafkaConfig, options: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let group = format!("tally-dlq-replay-{}-{}", options.dlq_topic, options.kind.as_deref().unwrap_or("all"));
    let consumer: BaseConsumer = base_config(kafka, "tally-dlq-replay")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("Failed to create the dead-letter reader")?;
    let metadata = consumer
        .fetch_metadata(Some(&options.dlq_topic), Duration::from_secs(10))
        .context("Failed to read dead-letter topic metadata")?;
    let partitions: Vec<i32> =
        metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {} does not exist", options.dlq_topic);
    }
    let mut ends = HashMap::new();
    let mut committed_list = TopicPartitionList::new();
    for p in &partitions {
        committed_list.add_partition(&options.dlq_topic, *p);
    }
    let committed = consumer.committed_offsets(committed_list, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for element in committed.elements() {
        let p = element.partition();
        let (low, high) = consumer.fetch_watermarks(&options.dlq_topic, p, Duration::from_secs(10))?;
        let start = match element.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        if start < high {
            ends.insert(p, high);
            assignment.add_partition_offset(&options.dlq_topic, p, Offset::Offset(start))?;
        }
    }
    drop(committed);
    let settings = ProducerSettings {
        delivery_timeout: Duration::from_secs(30),
        linger: Duration::from_millis(5),
        queue_capacity: 100_000,
    };
    let producer: FutureProducer = idempotent_producer(kafka, "tally-dlq-replay", &settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    consumer.assign(&assignment)?;
    drop(assignment);
    let mut report = ReplayReport::default();
    let mut seen = HashSet::new();
    let mut deliveries = Vec::new();
    let mut progress: HashMap<i32, i64> = HashMap::new();
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            if idle_since.elapsed() > Duration::from_secs(30) {
                bail!("reading {} stalled", options.dlq_topic);
            }
            continue;
        };
        idle_since = Instant::now();
        let message = result?;
        let (p, offset) = (message.partition(), message.offset());
        progress.insert(p, offset + 1);
        if ends.get(&p).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&p);
        }
        if options.kind.as_deref().is_some_and(|kind| header(&message, "tally.error.kind") != Some(kind)) {
            report.filtered += 1;
            continue;
        }
        let (Some(topic), Some(source_partition), Some(source_offset)) = (
            header(&message, "tally.source.topic"),
            header(&message, "tally.source.partition"),
            header(&message, "tally.source.offset"),
        ) else {
            report.unroutable += 1;
            continue;
        };
        if !seen.insert((topic.to_owned(), source_partition.to_owned(), source_offset.to_owned())) {
            report.duplicates += 1;
            continue;
        }
        report.replayed += 1;
        if !options.dry_run {
            let record = FutureRecord::to(topic)
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default());
            let delivery =
                producer.send_result(record).map_err(|(e, _)| e).context("Failed to enqueue a replayed record")?;
            deliveries.push(delivery);
        }
    }
    if options.dry_run {
        return Ok(report);
    }
    runtime.block_on(async {
        for delivery in deliveries {
            delivery
                .await
                .context("delivery canceled")?
                .map_err(|(e, _)| e)
                .context("a replayed record was not acknowledged")?;
        }
        anyhow::Ok(())
    })?;
    let mut commit = TopicPartitionList::new();
    for (p, next) in progress {
        commit.add_partition_offset(&options.dlq_topic, p, Offset::Offset(next))?;
    }
    if commit.count() > 0 {
        consumer.commit(&commit, CommitMode::Sync).context("Failed to commit replay progress")?;
    }
    Ok(report)
}
