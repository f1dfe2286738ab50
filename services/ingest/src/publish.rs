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

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use tokio::sync::Semaphore;

use crate::acks::{Admission, GatewayProducer, PendingRequest};
use crate::metrics::IngestMetrics;

/// One event's record, as the gateway produces it.
pub struct Record {
    /// The partition key (the video, salted when the video is configured hot).
    pub key: Vec<u8>,
    /// The event in the wire format.
    pub payload: Vec<u8>,
}

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
    producer: Arc<GatewayProducer>,
    topic: Arc<str>,
    admission: Arc<Semaphore>,
    capacity: usize,
    ack_timeout: Duration,
    metrics: IngestMetrics,
}

impl Publisher {
    /// A publisher admitting at most `capacity` unacknowledged events.
    pub fn new(
        producer: GatewayProducer,
        topic: &str,
        capacity: usize,
        ack_timeout: Duration,
        metrics: IngestMetrics,
    ) -> Self {
        Self {
            producer: Arc::new(producer),
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
    pub fn producer(&self) -> &Arc<GatewayProducer> {
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
        // The admission travels with the records: it is released when the
        // broker has answered for every enqueued one, even after this request
        // has stopped waiting, so the bound holds while the broker is down.
        let (request, outcome) =
            PendingRequest::new(Admission::new(permits, self.metrics.in_flight_events.clone(), count));
        let started = Instant::now();
        let headers = traceparent.map(|value| {
            OwnedHeaders::new().insert(Header { key: tally_service::traces::TRACEPARENT, value: Some(value) })
        });
        let mut enqueue_error = None;
        for record in &records {
            request.enqueuing();
            let mut produced = BaseRecord::with_opaque_to(&self.topic, Arc::clone(&request))
                .key(record.key.as_slice())
                .payload(record.payload.as_slice());
            if let Some(headers) = &headers {
                produced = produced.headers(headers.clone());
            }
            if let Err((e, _)) = self.producer.send(produced) {
                request.not_enqueued();
                enqueue_error = Some(e);
                break;
            }
        }
        request.all_enqueued();
        drop(request);
        drop(records);
        if let Some(e) = enqueue_error {
            return Err(match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::Overloaded,
                other => PublishError::Broker(other),
            });
        }
        match tokio::time::timeout(self.ack_timeout, outcome).await {
            Err(_elapsed) => Err(PublishError::Timeout(self.ack_timeout)),
            Ok(Err(_dropped_unanswered)) => Err(PublishError::Broker(KafkaError::Canceled)),
            Ok(Ok(Err(e))) => Err(PublishError::Broker(e)),
            Ok(Ok(Ok(()))) => {
                self.metrics.produce_duration.observe(started.elapsed().as_secs_f64());
                Ok(())
            }
        }
    }
}
