//! The archiver: its own consumer group on `tally.views`, writing the raw
//! events to Parquet, committing an offset only once the file holding it is
//! durable.
//!
//! File boundaries are a function of the log, so a replay cuts the same
//! files: a file of partition `p` ends before the first record whose offset
//! is a multiple of `records-per-file`, or whose gateway receive hour differs
//! from the file's first record. The last open file of a quiet partition is
//! written once its hour is over (plus `seal-grace`); records of that hour
//! arriving later still would start a new file, as the hour rule would have.
//! On start, a partition resumes after the last offset already archived,
//! whatever the group committed, so nothing is written twice.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tally_config::Secret;
use tally_kafka::clients::{group_consumer_config, is_transient};
use tally_kafka::{GroupMember, KafkaConfig, MembershipError};
use tokio_util::sync::CancellationToken;

use super::layout::{self, HOUR_MS};
use super::parquet_io::{self, ArchiveError, ArchivedView};
use super::storage::ArchiveStorage;

/// The `[archiver]` configuration section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ArchiverConfig {
    /// Admin listener when run on its own.
    pub admin_listen: SocketAddr,
    /// Consumer group of the archiver.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a stable name per
    /// instance, unique in the group, typically the pod name of a
    /// StatefulSet (`TALLY_ARCHIVER__GROUP_INSTANCE_ID` from `metadata.name`).
    /// An instance that restarts within the group's session timeout gets its
    /// partitions back without a rebalance; one that stops keeps them
    /// (uncounted) until its session expires. Absent: dynamic membership.
    pub group_instance_id: Option<String>,
    /// Root of the Parquet archive (Hive layout below it), when `url` is empty.
    pub dir: PathBuf,
    /// Object storage for the archive instead of `dir`, e.g. `s3://bucket/tally-archive`
    /// (S3 and S3-compatible stores); empty keeps the archive in `dir`.
    pub url: String,
    /// Options of the object store: `aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `aws_access_key_id`, `aws_secret_access_key`, …
    /// (the `AWS_*` environment variables are read too).
    pub object_store_options: BTreeMap<String, Secret>,
    /// Records per file at most (files are cut at offsets that are multiples of it).
    pub records_per_file: i64,
    /// How long after its hour ends an open file is written anyway.
    #[serde(with = "humantime_serde")]
    pub seal_grace: Duration,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9084)),
            group_id: "tally-archiver".into(),
            group_instance_id: None,
            dir: PathBuf::from("tally-data/archive"),
            url: String::new(),
            object_store_options: BTreeMap::new(),
            records_per_file: 100_000,
            seal_grace: Duration::from_secs(300),
        }
    }
}

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// Kafka.
    #[error("archiver kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Listing, reading or writing the archive.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Metrics.
    #[error("archiver metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The group settings conflict.
    #[error("invalid Kafka group settings: {0}")]
    Membership(#[from] MembershipError),
}

#[derive(Clone)]
struct Metrics {
    files: IntCounter,
    records: IntCounterVec,
    write_duration: Histogram,
}

impl Metrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            files: IntCounter::new("tally_archiver_files_total", "Parquet files written")?,
            records: IntCounterVec::new(
                Opts::new(
                    "tally_archiver_records_total",
                    "Views records by outcome: archived, malformed, already archived",
                ),
                &["outcome"],
            )?,
            write_duration: Histogram::with_opts(
                HistogramOpts::new("tally_archiver_file_write_duration_seconds", "Time to write and sync one file")
                    .buckets(tally_service::http_metrics::LATENCY_BUCKETS.to_vec()),
            )?,
        };
        // Known outcomes exist from the start, so dashboards and alerts see zeros, not gaps.
        for outcome in ["archived", "malformed", "already_archived"] {
            m.records.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.files.clone()))?;
        registry.register(Box::new(m.records.clone()))?;
        registry.register(Box::new(m.write_duration.clone()))?;
        Ok(m)
    }
}

struct OpenFile {
    start: i64,
    next: i64,
    hour: i64,
    rows: Vec<ArchivedView>,
}

/// A built archiver.
pub struct ArchiverService {
    config: ArchiverConfig,
    kafka: KafkaConfig,
    metrics: Metrics,
    storage: ArchiveStorage,
}

impl ArchiverService {
    /// Registers metrics.
    pub fn build(config: &ArchiverConfig, kafka: &KafkaConfig, registry: &Registry) -> Result<Self, ArchiverError> {
        kafka.validate_member("archiver", config.group_instance_id.as_deref())?;
        let storage = ArchiveStorage::from_config(&config.dir, &config.url, &config.object_store_options)?;
        Ok(Self { config: config.clone(), kafka: kafka.clone(), metrics: Metrics::register(registry)?, storage })
    }

    /// Archives until `shutdown`. Open files are not written at shutdown:
    /// the next run re-reads their records from the committed offsets.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ArchiverError> {
        let mut archived: HashMap<i32, i64> = HashMap::new();
        for (_, (partition, _, end)) in self.storage.list().await? {
            let entry = archived.entry(partition).or_insert(end);
            *entry = (*entry).max(end);
        }
        let member =
            GroupMember { group_id: &self.config.group_id, instance_id: self.config.group_instance_id.as_deref() };
        let consumer: StreamConsumer = group_consumer_config(&self.kafka, "tally-archiver", &member).create()?;
        consumer.subscribe(&[&self.kafka.topics.views])?;
        let mut open: HashMap<i32, OpenFile> = HashMap::new();
        let mut last_tick = Instant::now();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => match message {
                    Ok(message) => Some(message),
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "consumer error; retrying");
                        None
                    }
                    Err(e) => return Err(e.into()),
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => None,
            };
            if let Some(message) = message {
                let (partition, offset) = (message.partition(), message.offset());
                if offset < archived.get(&partition).copied().unwrap_or(0) {
                    self.metrics.records.with_label_values(&["already_archived"]).inc();
                } else if let Some(file) = open.get(&partition).filter(|f| offset < f.next) {
                    let _ = file; // redelivered after a rebalance: already buffered
                } else {
                    match tally_model::wire::decode(message.payload().unwrap_or_default()) {
                        Err(_) => self.metrics.records.with_label_values(&["malformed"]).inc(),
                        Ok(view) => {
                            let hour = view.received_ms.div_euclid(HOUR_MS) * HOUR_MS;
                            let cut = open.get(&partition).is_some_and(|f| {
                                f.hour != hour || (offset % self.config.records_per_file == 0 && offset > f.start)
                            });
                            if cut {
                                if let Some(file) = open.remove(&partition) {
                                    self.seal(&consumer, partition, file, offset, &mut archived).await?;
                                }
                            }
                            let file = open.entry(partition).or_insert_with(|| OpenFile {
                                start: offset,
                                next: offset,
                                hour,
                                rows: Vec::new(),
                            });
                            file.rows.push(ArchivedView {
                                partition,
                                offset,
                                video_id: view.video_id.to_owned(),
                                salt: view.salt.0,
                                ts_ms: view.ts_ms,
                                received_ms: view.received_ms,
                                log_ms: message.timestamp().to_millis(),
                                event_id: view.event_id.to_owned(),
                                viewer_id: view.viewer_id.map(str::to_owned),
                                attributes: view.attributes.map(str::to_owned),
                            });
                        }
                    }
                    if let Some(file) = open.get_mut(&partition) {
                        file.next = offset + 1;
                    }
                }
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                let now = tally_model::timestamp::now_ms();
                let grace = i64::try_from(self.config.seal_grace.as_millis()).unwrap_or(i64::MAX);
                let due: Vec<i32> =
                    open.iter().filter(|(_, f)| now > f.hour + HOUR_MS + grace).map(|(p, _)| *p).collect();
                for partition in due {
                    if let Some(file) = open.remove(&partition) {
                        let end = file.next;
                        self.seal(&consumer, partition, file, end, &mut archived).await?;
                    }
                }
            }
        }
    }

    async fn seal(
        &self,
        consumer: &StreamConsumer,
        partition: i32,
        file: OpenFile,
        end: i64,
        archived: &mut HashMap<i32, i64>,
    ) -> Result<(), ArchiverError> {
        let started = Instant::now();
        let path = format!("{}/{}", layout::hour_prefix(file.hour), layout::file_name(partition, file.start, end));
        let bytes = parquet_io::encode(&file.rows, &path)?;
        self.storage.put(&path, bytes).await?;
        self.metrics.write_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.files.inc();
        self.metrics.records.with_label_values(&["archived"]).inc_by(file.rows.len() as u64);
        archived.insert(partition, end);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.kafka.topics.views, partition, Offset::Offset(end))?;
        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
            // The file is durable; the archive itself says how far we got.
            tracing::warn!(partition, end, error = %e, "commit after archiving failed");
        }
        tracing::debug!(partition, start = file.start, end, rows = file.rows.len(), "archived");
        Ok(())
    }
}
