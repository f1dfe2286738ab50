//! Publishing a request's events: admitted against a bound, produced with
//! `acks=all`, answered only when every record is acknowledged.
//!
//! Admission takes one permit per event before anything is enqueued, so a
//! request is either wholly refused (503, nothing produced) or wholly handed
//! to the producer. Permits are released when the broker answers for each
//! record, not when the HTTP request gives up waiting, so the bound holds
//! even while the broker is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;

use crate::metrics::IngestMetrics;

/// One record: partition key and encoded payload.
pub type Record = (Vec<u8>, Vec<u8>);

/// Why a request's events were not (all) acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Too many events in flight: nothing was produced.
    #[error("too many events awaiting acknowledgement")]
    Overloaded,
    /// The broker did not acknowledge everything within the ack timeout;
    /// some records may still arrive.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker or producer refused a record.
    #[error("the broker refused a record: {0}")]
    Broker(KafkaError),
}

/// Produces records to one topic under an in-flight bound.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    admission: Arc<Semaphore>,
    capacity: usize,
    ack_timeout: Duration,
    metrics: IngestMetrics,
}

impl Publisher {
    /// A publisher admitting at most `capacity` unacknowledged events.
    pub fn new(
        producer: FutureProducer,
        topic: &str,
        capacity: usize,
        ack_timeout: Duration,
        metrics: IngestMetrics,
    ) -> Self {
        Self {
            producer,
            topic: Arc::from(topic),
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
            ack_timeout,
            metrics,
        }
    }

    /// Whether a request of at least one event could be admitted now. When
    /// not, the request is refused before its body is read; when it is, the
    /// request's own admission may still find too little room.
    pub fn has_room(&self) -> bool {
        self.admission.available_permits() > 0
    }

    /// The producer, for readiness checks and the final flush.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Produces every record and waits for all acknowledgements; with a
    /// `traceparent` (a traced request), every record carries it as a header.
    pub async fn publish(&self, records: Vec<Record>, traceparent: Option<&str>) -> Result<(), PublishError> {
        let count = records.len();
        let permits = u32::try_from(count)
            .ok()
            .filter(|n| (*n as usize) <= self.capacity)
            .and_then(|n| self.admission.clone().try_acquire_many_owned(n).ok())
            .ok_or(PublishError::Overloaded)?;
        self.metrics.in_flight_events.add(count as i64);
        let started = Instant::now();
        let mut deliveries = FuturesUnordered::new();
        let mut enqueue_error = None;
        let headers = traceparent.map(|value| {
            OwnedHeaders::new().insert(Header { key: tally_service::traces::TRACEPARENT, value: Some(value) })
        });
        for (key, payload) in &records {
            let mut record = FutureRecord::to(&self.topic).key(key.as_slice()).payload(payload.as_slice());
            if let Some(headers) = &headers {
                record = record.headers(headers.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => {
                    enqueue_error = Some(e);
                    break;
                }
            }
        }
        drop(records);
        // Waiting happens in its own task so that permits stay held until the
        // broker has answered for every enqueued record, even after this
        // request has stopped waiting.
        let metrics = self.metrics.clone();
        let waiter = tokio::spawn(async move {
            let mut first_error = None;
            while let Some(outcome) = deliveries.next().await {
                let error = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, _))) => Some(e),
                    Err(_canceled) => Some(KafkaError::Canceled),
                };
                if first_error.is_none() {
                    first_error = error;
                }
            }
            metrics.in_flight_events.sub(count as i64);
            drop(permits);
            first_error
        });
        if let Some(e) = enqueue_error {
            return Err(match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::Overloaded,
                other => PublishError::Broker(other),
            });
        }
        match tokio::time::timeout(self.ack_timeout, waiter).await {
            Err(_elapsed) => Err(PublishError::Timeout(self.ack_timeout)),
            Ok(Err(join_error)) => Err(PublishError::Broker(KafkaError::Canceled)).inspect_err(|_| {
                tracing::error!(error = %join_error, "delivery waiter failed");
            }),
            Ok(Ok(Some(e))) => Err(PublishError::Broker(e)),
            Ok(Ok(None)) => {
                self.metrics.produce_duration.observe(started.elapsed().as_secs_f64());
                Ok(())
            }
        }
    }
}
