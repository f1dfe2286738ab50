//! Building and running the counter: `CounterService::build(config)` then `run(shutdown)`.

use std::time::Duration;

use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use tally_kafka::clients::{group_consumer_config, idempotent_producer, millis, ProducerSettings};
use tally_kafka::topics::{ensure_topics, partition_count, tally_topics};
use tally_kafka::topology::{self, TopologyError};
use tally_kafka::{GroupMember, KafkaConfig, KafkaSetupError};
use tally_service::Readiness;
use tokio_util::sync::CancellationToken;

use crate::claim::{claimant_name, Claimer};
use crate::config::CounterConfig;
use crate::dlq::DlqLimits;
use crate::emitter::{self, Destination};
use crate::metrics::CounterMetrics;
use crate::partition::Rules;
use crate::recovery::RecoveryContext;
use crate::worker::{Worker, WorkerError};

/// How often stored offsets are committed in the background unless the
/// operator sets `auto.commit.interval.ms`: well under the flush interval,
/// so a restart re-emits little, and one request for all partitions.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Name of the counter's readiness check.
pub const KAFKA_CHECK: &str = "counter.kafka";

/// Why the counter could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Metrics could not be registered.
    #[error("cannot register counter metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The worker stopped with an error.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The counts topic has no partitions.
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    /// A task could not be joined.
    #[error("counter task failed: {0}")]
    Join(String),
    /// The producer failed fatally: only a restart gives a working one.
    #[error(transparent)]
    ProducerFatal(#[from] tally_kafka::fatal::FatalError),
    /// The topics are not those recorded at the first start, their
    /// retention breaks the counter's recovery, or they could not be
    /// checked ([`tally_kafka::topology`]).
    #[error("topology check")]
    Topology(#[source] TopologyError),
    /// `counter.uniques-lg-k` is outside what sketches allow.
    #[error("counter.uniques-lg-k: {0}")]
    UniquesLgK(#[from] tally_model::uniques::UniquesError),
    /// `counter.trending-lg-max-map-size` is outside what sketches allow.
    #[error("counter.trending-lg-max-map-size: {0}")]
    TrendingLgMaxMapSize(#[from] tally_model::trending::TrendingError),
}

/// A built counter, ready to run.
pub struct CounterService {
    config: CounterConfig,
    kafka: KafkaConfig,
    metrics: CounterMetrics,
    producer: FutureProducer,
    counts_partitions: i32,
    /// The views topic's incarnation, from the recorded topology.
    views_epoch: u32,
    readiness: Readiness,
}

impl CounterService {
    /// Creates topics when configured to, the producer and the metrics.
    pub async fn build(
        config: &CounterConfig,
        kafka: &KafkaConfig,
        registry: &Registry,
        readiness: &Readiness,
    ) -> Result<Self, CounterError> {
        kafka.validate_member("counter", config.group_instance_id.as_deref()).map_err(KafkaSetupError::from)?;
        tally_model::uniques::new_sketch(config.uniques_lg_k)?;
        tally_model::trending::new_sketch(config.trending_lg_max_map_size)?;
        if kafka.create_topics {
            ensure_topics(kafka, &tally_topics(kafka)).await?;
        }
        let recorded = topology::check(kafka, "counter").await.map_err(CounterError::Topology)?;
        topology::retention::check(kafka).await.map_err(CounterError::Topology)?;
        let metrics = CounterMetrics::register(registry)?;
        let settings = ProducerSettings {
            delivery_timeout: config.delivery_timeout,
            linger: Duration::from_millis(5),
            queue_capacity: 100_000,
        };
        let producer = idempotent_producer(kafka, "tally-counter", &settings)?;
        let counts_topic = kafka.topics.counts.clone();
        let kafka_for_metadata = kafka.clone();
        let counts_partitions = tokio::task::spawn_blocking(move || {
            partition_count(&kafka_for_metadata, &counts_topic, Duration::from_secs(10))
        })
        .await
        .map_err(|e| CounterError::Join(e.to_string()))??;
        let counts_partitions = i32::try_from(counts_partitions).unwrap_or(0);
        if counts_partitions == 0 {
            return Err(CounterError::NoPartitions(kafka.topics.counts.clone()));
        }
        readiness.register(KAFKA_CHECK);
        Ok(Self {
            config: config.clone(),
            kafka: kafka.clone(),
            metrics,
            producer,
            counts_partitions,
            views_epoch: recorded.views_epoch,
            readiness: readiness.clone(),
        })
    }

    /// Counts until `shutdown`, then drains for at most `drain`.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) -> Result<(), CounterError> {
        let c = &self.config;
        let topics = &self.kafka.topics;
        let rules = Rules {
            counting: c.counting_rule(),
            dlq: DlqLimits {
                max_ratio: c.dlq_max_ratio,
                min_records: c.dlq_min_records,
                max_consecutive: c.dlq_max_consecutive,
            },
            max_rows_per_flush: c.max_rows_per_flush,
            max_buffered_rows: c.max_buffered_rows,
            flush_interval: c.flush_interval,
            uniques_lg_k: c.uniques_lg_k,
            trending_lg_max_map_size: c.trending_lg_max_map_size,
        };
        let recovery = RecoveryContext {
            kafka: self.kafka.clone(),
            views_topic: topics.views.clone(),
            counts_topic: topics.counts.clone(),
            counts_partitions: self.counts_partitions,
            views_epoch: self.views_epoch,
            rules,
            read_timeout: Duration::from_secs(30),
            stop: shutdown.clone(),
        };
        let destination = Destination {
            views_topic: topics.views.clone(),
            counts_topic: topics.counts.clone(),
            counts_partitions: self.counts_partitions,
            dlq_topic: topics.views_dlq.clone(),
            chunk_rows: c.chunk_rows,
            chunk_sketch_bytes: c.chunk_sketch_bytes,
        };
        let member = GroupMember { group_id: &c.group_id, instance_id: c.group_instance_id.as_deref() };
        let mut consumer = group_consumer_config(&self.kafka, "tally-counter", &member);
        // Offsets are committed in the background, but only those the counter
        // stores (ends of acknowledged flushes, see `commits`); these two are
        // not the operator's to change, or exactly-once would break.
        consumer.set("enable.auto.commit", "true").set("enable.auto.offset.store", "false");
        if !self.kafka.consumer_properties.contains_key("auto.commit.interval.ms") {
            consumer.set("auto.commit.interval.ms", millis(COMMIT_INTERVAL));
        }
        // KIP-714 client telemetry costs a locked histogram update on every
        // poll (one per record here); the counter exports its own metrics.
        if !self.kafka.consumer_properties.contains_key("enable.metrics.push") {
            consumer.set("enable.metrics.push", "false");
        }
        // Rebalance callbacks recover partitions inside poll: allow them time.
        if !self.kafka.consumer_properties.contains_key("max.poll.interval.ms") {
            consumer.set("max.poll.interval.ms", millis(Duration::from_secs(300)));
        }
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // The emitter outlives the worker's drain; it stops when the job channel closes.
        let emitter_stop = CancellationToken::new();
        let claimer = Claimer::new(
            self.producer.clone(),
            topics.counts.clone(),
            self.counts_partitions,
            claimant_name(),
            c.delivery_timeout.max(Duration::from_secs(10)),
            shutdown.clone(),
        );
        let emitted = emitter::run(self.producer, destination, jobs_rx, done_tx, emitter_stop.clone());
        let stop_counting = shutdown.clone();
        let emitter = tokio::spawn(async move {
            // The worker drains and stops; the error is reported below.
            emitted.await.inspect_err(|_| stop_counting.cancel())
        });
        let worker = Worker::new(consumer, recovery, claimer, self.metrics, done_rx, jobs_tx, c.lag_interval)?;
        self.readiness.set(KAFKA_CHECK, Ok(()));
        let stop = shutdown.clone();
        let outcome = tokio::task::spawn_blocking(move || worker.run(stop, drain))
            .await
            .map_err(|e| CounterError::Join(e.to_string()))?;
        emitter_stop.cancel();
        if let Ok(Err(fatal)) = emitter.await {
            shutdown.cancel();
            return Err(fatal.into());
        }
        if outcome.is_err() {
            // Make sure the rest of the process stops too: a halted counter is an incident.
            shutdown.cancel();
        }
        outcome.map_err(CounterError::from)
    }
}
