//! Building and running the writer.
//!
//! Loop: gather a batch of counts records (up to `batch-max-records` or
//! `batch-max-wait`), dead-letter the ones that do not decode, apply the rest
//! (chunks and claims, in log order: the store fences the chunks of
//! superseded owners) to the store in one transaction (retrying retryable errors with
//! exponential backoff, for as long as it takes: lag grows visibly, nothing is
//! lost), write the new totals of the touched videos through to the cache,
//! and only then commit the offsets. A crash anywhere re-applies the batch,
//! which the store's versions make a no-op.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tally_cache::{CacheBackend, CachedTotal};
use tally_kafka::clients::{group_consumer_config, idempotent_producer, is_transient, ProducerSettings};
use tally_kafka::dlq::Provenance;
use tally_kafka::topics::{ensure_topics, tally_topics};
use tally_kafka::topology::{self, TopologyError};
use tally_kafka::{GroupMember, KafkaConfig, KafkaSetupError};
use tally_model::counts::{self, CountsRecord};
use tally_service::traces::{KeyValue, Links, TRACEPARENT};
use tally_service::Readiness;
use tally_store::{CountStore, CountsEntry, StoreError};
use tokio_util::sync::CancellationToken;

use crate::config::WriterConfig;
use crate::lag::{stamp_heartbeat, LagMonitor};
use crate::metrics::WriterMetrics;

/// Name of the writer's readiness check.
pub const STORE_CHECK: &str = "writer.store";

/// Why the writer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// A consumer or producer call failed.
    #[error("writer kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// Metrics could not be registered.
    #[error("cannot register writer metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The store rejected a batch for a reason retrying cannot fix.
    #[error("store refused a batch: {0}")]
    Store(StoreError),
    /// The topics are not those recorded at the first start, or could not
    /// be checked ([`tally_kafka::topology`]).
    #[error("topology check")]
    Topology(#[source] TopologyError),
}

/// The longest a synchronous offset commit may hold up the next batch.
const COMMIT_AT_MOST: Duration = Duration::from_secs(5);

/// The longest shutdown waits for the consumer to leave its group.
const CLOSE_AT_MOST: Duration = Duration::from_secs(2);

/// A built writer.
pub struct WriterService<S: CountStore> {
    config: WriterConfig,
    kafka: KafkaConfig,
    store: S,
    cache: Option<CacheBackend>,
    metrics: WriterMetrics,
    readiness: Readiness,
    dlq: FutureProducer,
}

impl<S: CountStore> WriterService<S> {
    /// Creates topics when configured to, the dead-letter producer and metrics.
    pub async fn build(
        config: &WriterConfig,
        kafka: &KafkaConfig,
        store: S,
        cache: Option<CacheBackend>,
        registry: &Registry,
        readiness: &Readiness,
    ) -> Result<Self, WriterError> {
        kafka.validate_member("writer", config.group_instance_id.as_deref()).map_err(KafkaSetupError::from)?;
        if kafka.create_topics {
            ensure_topics(kafka, &tally_topics(kafka)).await?;
        }
        // Owners and versions in the store belong to one counts topic: a
        // recreated or resized one must not be applied over them.
        topology::check(kafka, "writer").await.map_err(WriterError::Topology)?;
        let settings = ProducerSettings {
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
            queue_capacity: 10_000,
        };
        let dlq = idempotent_producer(kafka, "tally-writer-dlq", &settings)?;
        readiness.register(STORE_CHECK);
        Ok(Self {
            config: config.clone(),
            kafka: kafka.clone(),
            store,
            cache,
            metrics: WriterMetrics::register(registry)?,
            readiness: readiness.clone(),
            dlq,
        })
    }

    /// Writes until `shutdown`; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WriterError> {
        let member =
            GroupMember { group_id: &self.config.group_id, instance_id: self.config.group_instance_id.as_deref() };
        let consumer_config = group_consumer_config(&self.kafka, "tally-writer", &member);
        let consumer: Arc<StreamConsumer> = Arc::new(consumer_config.create()?);
        consumer.subscribe(&[&self.kafka.topics.counts])?;
        self.readiness.set(STORE_CHECK, self.store.ping().await.map_err(|e| e.to_string()));
        let mut last_assignment_check = Instant::now();
        let mut lag = LagMonitor::new(&self.kafka.topics.counts, self.metrics.clone());
        loop {
            lag.tick(&consumer);
            if last_assignment_check.elapsed() >= Duration::from_secs(1) {
                last_assignment_check = Instant::now();
                let owned = consumer.assignment()?.count();
                self.metrics.owned_partitions.set(i64::try_from(owned).unwrap_or(i64::MAX));
            }
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                message = consumer.recv() => message,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            let first = match first {
                Ok(message) => message,
                Err(e) if is_transient(&e) => {
                    // The broker is away: lag grows visibly, librdkafka reconnects.
                    tracing::warn!(error = %e, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut batch = Vec::new();
            let mut offsets: HashMap<i32, i64> = HashMap::new();
            let mut links = Links::default();
            self.take(first, &mut batch, &mut offsets, &mut links, &shutdown).await?;
            let deadline = tokio::time::Instant::now() + self.config.batch_max_wait;
            while batch.len() < self.config.batch_max_records {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(message)) => self.take(message, &mut batch, &mut offsets, &mut links, &shutdown).await?,
                    Ok(Err(e)) if is_transient(&e) => break,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
            }
            // Only when tracing is on and the batch carries flushes of traced
            // requests' events; ends when the batch is stored.
            let span = links.start_span(
                "writer batch",
                vec![KeyValue::new("tally.records", i64::try_from(batch.len()).unwrap_or(i64::MAX))],
            );
            let applied = self.apply(batch, &shutdown).await?;
            drop(span);
            if !applied {
                break; // shut down while the store was unavailable: nothing committed
            }
            let mut list = TopicPartitionList::new();
            for (partition, offset) in offsets {
                list.add_partition_offset(&self.kafka.topics.counts, partition, Offset::Offset(offset + 1))?;
            }
            // Off the async threads and bounded: without a coordinator a
            // synchronous commit can wait for minutes. Re-applying after a
            // lost commit is a no-op; log and go on.
            let committer = consumer.clone();
            let commit = tokio::task::spawn_blocking(move || committer.commit(&list, CommitMode::Sync));
            match tokio::time::timeout(COMMIT_AT_MOST, commit).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "offset commit failed; the batch will be re-applied harmlessly");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "offset commit task failed; the batch will be re-applied harmlessly")
                }
                Err(_) => tracing::warn!(
                    limit = ?COMMIT_AT_MOST,
                    "offset commit unanswered; the batch will be re-applied harmlessly"
                ),
            }
            self.metrics.batches.inc();
        }
        // Leaving the group may wait out the session without a coordinator.
        if !tally_kafka::clients::drop_within(consumer, CLOSE_AT_MOST) {
            tracing::warn!(limit = ?CLOSE_AT_MOST, "leaving the consumer group did not finish in time; the session will expire");
        }
        Ok(())
    }

    async fn take(
        &self,
        message: BorrowedMessage<'_>,
        batch: &mut Vec<CountsEntry>,
        offsets: &mut HashMap<i32, i64>,
        links: &mut Links,
        shutdown: &CancellationToken,
    ) -> Result<(), WriterError> {
        let (partition, offset) = (message.partition(), message.offset());
        offsets.insert(partition, offset);
        // The first record of a flush of traced events carries their contexts.
        if let Some(headers) = message.headers() {
            for value in headers.iter().filter(|h| h.key == TRACEPARENT).filter_map(|h| h.value) {
                links.add_traceparent(value);
            }
        }
        match counts::decode(message.payload().unwrap_or_default()) {
            Ok(record) => batch.push(CountsEntry { offset, record }),
            Err(e) => {
                let now = tally_model::timestamp::format_rfc3339_ms(tally_model::timestamp::now_ms());
                let reason = e.to_string();
                let headers = Provenance {
                    kind: "malformed",
                    message: &reason,
                    topic: &self.kafka.topics.counts,
                    partition,
                    offset,
                    service: "tally-writer",
                    time: &now,
                }
                .headers();
                let key = message.key().unwrap_or_default();
                let payload = message.payload().unwrap_or_default();
                // The dead letter must be durable before the offset moves past it.
                loop {
                    let record = FutureRecord::to(&self.kafka.topics.counts_dlq)
                        .key(key)
                        .payload(payload)
                        .headers(headers.clone());
                    match self.dlq.send(record, Duration::from_secs(30)).await {
                        Ok(_) => break,
                        Err((e, _)) if shutdown.is_cancelled() => return Err(WriterError::Client(e)),
                        Err((e, _)) => {
                            tracing::warn!(error = %e, "dead letter not acknowledged; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                self.metrics.dead_letters.inc();
                tracing::warn!(partition, offset, error = %reason, "counts record dead-lettered");
            }
        }
        Ok(())
    }

    /// Applies a batch, retrying while the store is unavailable. `Ok(false)`
    /// when shutdown came first.
    async fn apply(&self, entries: Vec<CountsEntry>, shutdown: &CancellationToken) -> Result<bool, WriterError> {
        if entries.is_empty() {
            return Ok(true);
        }
        let chunks = || {
            entries.iter().filter_map(|e| match &e.record {
                CountsRecord::Chunk(chunk) => Some(chunk),
                CountsRecord::Claim(_) => None,
            })
        };
        let videos: BTreeSet<String> = chunks().flat_map(|c| c.deltas.iter().map(|d| d.video_id.clone())).collect();
        let newest_received = chunks().map(|c| c.header.max_received_ms).max().unwrap_or(0);
        let mut backoff = self.config.retry_initial_backoff;
        loop {
            let started = Instant::now();
            match self.store.apply(entries.clone()).await {
                Ok(outcome) => {
                    self.metrics.batch_duration.observe(started.elapsed().as_secs_f64());
                    self.metrics.deltas.with_label_values(&["applied"]).inc_by(outcome.applied);
                    self.metrics.deltas.with_label_values(&["stale"]).inc_by(outcome.stale);
                    self.metrics.deltas.with_label_values(&["fenced"]).inc_by(outcome.fenced);
                    self.metrics.fenced_chunks.inc_by(outcome.fenced_chunks);
                    self.metrics.sketches.with_label_values(&["applied"]).inc_by(outcome.sketches_applied);
                    self.metrics.sketches.with_label_values(&["stale"]).inc_by(outcome.sketches_stale);
                    let rows = &self.metrics.sketch_rows_written;
                    rows.with_label_values(&["hour"]).inc_by(outcome.sketch_hour_rows_written);
                    rows.with_label_values(&["day"]).inc_by(outcome.sketch_day_rows_written);
                    self.metrics.breaker_state.set(0);
                    self.readiness.set(STORE_CHECK, Ok(()));
                    break;
                }
                Err(e) if e.is_retryable() => {
                    // Backing off is not wedged: TallyWriterBreakerOpen says it.
                    stamp_heartbeat(&self.metrics);
                    self.metrics.retries.inc();
                    self.metrics.breaker_state.set(2);
                    self.readiness.set(STORE_CHECK, Err(e.to_string()));
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "store unavailable; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(false),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_max_backoff);
                }
                Err(e) => return Err(WriterError::Store(e)),
            }
        }
        if newest_received > 0 {
            let lag_ms = tally_model::timestamp::now_ms() - newest_received;
            self.metrics.freshness.observe(lag_ms.max(0) as f64 / 1000.0);
        }
        self.write_through(videos.into_iter().collect()).await;
        Ok(true)
    }

    async fn write_through(&self, videos: Vec<String>) {
        let Some(cache) = &self.cache else { return };
        let totals = match self.store.totals(videos).await {
            Ok(totals) => totals,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read totals for the cache");
                self.metrics.cache_errors.inc();
                return;
            }
        };
        let now = tally_model::timestamp::now_ms();
        let entries: Vec<(String, CachedTotal)> = totals
            .into_iter()
            .map(|t| {
                let entry = CachedTotal {
                    views: t.views,
                    as_of_ms: t.as_of_ms,
                    written_ms: now,
                    batch_views: t.batch_views,
                    exact_through_ms: t.exact_through_ms,
                    batch_generation: t.batch_generation,
                };
                (t.video_id, entry)
            })
            .collect();
        if let Err(e) = cache.put_many(&entries, self.config.cache_retention).await {
            tracing::warn!(error = %e, "cache write-through failed; queries fall back to the store");
            self.metrics.cache_errors.inc();
        }
    }
}
