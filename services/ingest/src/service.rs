//! Building and running the gateway: `IngestService::build(config)` then
//! `run(shutdown)`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header;
use axum::routing::{get, post};
use axum::{middleware, Router};
use prometheus::Registry;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use tally_kafka::clients::{idempotent_producer_with_context, ProducerSettings};
use tally_kafka::topics::{ensure_topics, tally_topics};
use tally_kafka::{KafkaConfig, KafkaSetupError};
use tally_model::hot::HotKeyDetector;
use tally_model::viewer::Pseudonymizer;
use tally_model::{Limits, SaltPolicy};
use tally_service::http_metrics::{self, HttpMetrics};
use tally_service::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::acks::RequestAcks;
use crate::config::IngestConfig;
use crate::handler::{self, AppState};
use crate::metrics::IngestMetrics;
use crate::publish::Publisher;
use crate::rate_limit::RateLimiter;
use tally_service::api_keys::ApiKeys;

/// The OpenAPI document of the public API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Name of the gateway's readiness check.
pub const KAFKA_CHECK: &str = "ingest.kafka";

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(std::io::Error),
    /// Serving failed.
    #[error("ingest server failed: {0}")]
    Serve(std::io::Error),
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Metrics could not be registered.
    #[error("cannot register ingest metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The configuration is inconsistent.
    #[error("invalid ingest configuration: {0}")]
    Config(String),
    /// The producer failed fatally: only a restart gives a working one.
    #[error(transparent)]
    ProducerFatal(#[from] tally_kafka::fatal::FatalError),
}

/// A built gateway, bound and ready to run.
pub struct IngestService {
    listener: TcpListener,
    router: Router,
    publisher: Publisher,
    readiness: Readiness,
    kafka: KafkaConfig,
    flush_timeout: Duration,
    serve_options: tally_service::serve::ServeOptions,
}

impl IngestService {
    /// Binds the public listener, connects the producer, creates topics when
    /// configured to, and registers metrics in `registry`.
    pub async fn build(
        config: &IngestConfig,
        kafka: &KafkaConfig,
        registry: &Registry,
        readiness: &Readiness,
    ) -> Result<Self, IngestError> {
        if config.delivery_timeout < config.ack_timeout {
            return Err(IngestError::Config("delivery-timeout must be at least ack-timeout".into()));
        }
        let salt_policy = SaltPolicy::new(&config.salting).map_err(|e| IngestError::Config(e.to_string()))?;
        if kafka.create_topics {
            ensure_topics(kafka, &tally_topics(kafka)).await?;
        }
        let metrics = IngestMetrics::register(registry)?;
        let http = HttpMetrics::register(registry, "ingest")?;
        let settings = ProducerSettings {
            delivery_timeout: config.delivery_timeout,
            linger: config.linger,
            // librdkafka must never be the one to refuse: admission does it first.
            queue_capacity: config.max_in_flight_events + 1024,
        };
        let producer = idempotent_producer_with_context(kafka, "tally-ingest", &settings, RequestAcks)?;
        let publisher = Publisher::new(
            producer,
            &kafka.topics.views,
            config.max_in_flight_events,
            config.ack_timeout,
            metrics.clone(),
        );
        let mut limiter = RateLimiter::default();
        for key in &config.api_keys {
            limiter.add(&key.name, key.events_per_sec, key.burst);
        }
        let salting = &config.salting;
        let detector = HotKeyDetector::new(
            salting.detect_threshold_per_sec,
            i64::try_from(salting.hold.as_millis()).unwrap_or(i64::MAX),
            salting.detector_capacity,
        );
        let state = Arc::new(AppState {
            publisher: publisher.clone(),
            keys: ApiKeys::new(config.api_keys.iter().map(|k| (k.name.as_str(), &k.key))),
            limiter,
            limits: Limits {
                max_events: config.max_events,
                max_future_skew_ms: i64::try_from(config.max_future_skew.as_millis()).unwrap_or(i64::MAX),
                max_attributes_bytes: config.max_attributes_bytes,
            },
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            retry_after_secs: config.retry_after.as_secs().max(1),
            salt_policy,
            detector: Mutex::new(detector),
            metrics,
            viewers: config.viewer_id_key.as_ref().map(|key| Pseudonymizer::new(key.expose().as_bytes())),
        });
        if config.viewer_id_key.is_none() {
            tracing::warn!(
                "ingest.viewer-id-key is not set: viewer ids are dropped at the gateway, unique viewers count nobody"
            );
        }
        let router = Router::new()
            .route("/v1/events", post(handler::post_events))
            .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }))
            .fallback(handler::not_found)
            .method_not_allowed_fallback(handler::method_not_allowed)
            .with_state(state)
            .layer(middleware::from_fn_with_state(http, http_metrics::track));
        let listener = tally_service::serve::bind(config.listen, "ingest").await.map_err(IngestError::Bind)?;
        readiness.register(KAFKA_CHECK);
        Ok(Self {
            listener,
            router,
            publisher,
            readiness: readiness.clone(),
            kafka: kafka.clone(),
            flush_timeout: config.delivery_timeout,
            serve_options: tally_service::serve::ServeOptions { header_read_timeout: config.header_read_timeout },
        })
    }

    /// The bound public address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown`, then stops accepting, lets in-flight requests
    /// finish (they wait for their acknowledgements) and flushes the producer.
    /// A fatal producer error ends it at once with an error: every request
    /// would be refused until a restart.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let probe = tokio::spawn(probe_broker(
            self.publisher.clone(),
            self.kafka.topics.views.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        ));
        let producer = self.publisher.producer().clone();
        let served = tokio::select! {
            served = tally_service::serve::serve_with(self.listener, self.router, shutdown, self.serve_options) => served,
            fatal = tally_kafka::fatal::watch(producer.client()) => {
                probe.abort();
                return Err(fatal.into());
            }
        };
        probe.abort();
        let producer = self.publisher.producer().clone();
        let flush_timeout = self.flush_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(flush_timeout))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "producer flush at shutdown incomplete");
        }
        served.map_err(IngestError::Serve)
    }
}

/// Marks the gateway ready while broker metadata for the views topic answers.
async fn probe_broker(publisher: Publisher, topic: String, readiness: Readiness, shutdown: CancellationToken) {
    loop {
        let producer = publisher.producer().clone();
        let topic_name = topic.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic_name), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            match metadata.topics().first() {
                Some(t) if !t.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic {topic_name} has no partitions")),
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        readiness.set(KAFKA_CHECK, outcome);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
