//! One acknowledgement wait per request, not one per record.
//!
//! Every record of a request carries the request's [`PendingRequest`] as its
//! delivery opaque. The producer's polling thread counts the broker's answers
//! down in [`RequestAcks::delivery`]; the last answer completes the request:
//! the first error, if any, goes to the waiting handler, and the request's
//! [`Admission`] (its permits and its share of the in-flight gauge) is
//! released. A `FutureProducer` gives every record its own oneshot channel,
//! future and task wake-up; for a 1,000-event request that bookkeeping cost
//! more than the produce calls themselves (BENCHMARKS.md, "Where the CPU goes
//! in `tally standalone`").
//!
//! The count starts at one, the enqueuing request's own hold, so that
//! answers arriving while records are still being enqueued cannot complete
//! the request early; [`PendingRequest::all_enqueued`] gives that hold back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// The gateway's producer: delivery reports go to [`RequestAcks`].
pub type GatewayProducer = ThreadedProducer<RequestAcks>;

/// What the broker said about a whole request: `Err` with the first refusal.
pub type RequestOutcome = Result<(), KafkaError>;

/// The producer context that counts each request's acknowledgements.
pub struct RequestAcks;

impl ClientContext for RequestAcks {}

impl ProducerContext for RequestAcks {
    type DeliveryOpaque = Arc<PendingRequest>;

    fn delivery(&self, result: &DeliveryResult<'_>, request: Arc<PendingRequest>) {
        if let Err((error, _)) = result {
            request.refused(error.clone());
        }
        request.answered();
    }
}

/// A request's hold on the gateway's in-flight bound: its permits and its
/// events in the in-flight gauge, both given back when dropped.
pub struct Admission {
    _permits: OwnedSemaphorePermit,
    in_flight: IntGauge,
    events: i64,
}

impl Admission {
    /// Holds `permits` for `events` events, counted in `in_flight` until dropped.
    pub fn new(permits: OwnedSemaphorePermit, in_flight: IntGauge, events: usize) -> Self {
        let events = i64::try_from(events).expect("a request's events fit in an i64");
        in_flight.add(events);
        Self { _permits: permits, in_flight, events }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.sub(self.events);
    }
}

/// One request's records on their way to the broker.
pub struct PendingRequest {
    /// Records enqueued and not yet answered, plus one while the request is
    /// still enqueuing.
    unanswered: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    /// Taken once, by whoever brings `unanswered` to zero. If the producer
    /// drops records without answering (it does not, but a purge could),
    /// dropping the last reference still releases the admission and the
    /// waiting handler sees its channel closed.
    completion: Mutex<Option<Completion>>,
}

struct Completion {
    reply: oneshot::Sender<RequestOutcome>,
    admission: Admission,
}

impl PendingRequest {
    /// A request holding `admission`, and the channel its outcome arrives on.
    pub fn new(admission: Admission) -> (Arc<Self>, oneshot::Receiver<RequestOutcome>) {
        let (reply, outcome) = oneshot::channel();
        let request = Self {
            unanswered: AtomicUsize::new(1),
            first_error: Mutex::new(None),
            completion: Mutex::new(Some(Completion { reply, admission })),
        };
        (Arc::new(request), outcome)
    }

    /// Counts a record about to be enqueued.
    pub fn enqueuing(&self) {
        self.unanswered.fetch_add(1, Ordering::AcqRel);
    }

    /// Uncounts a record the producer refused to enqueue.
    pub fn not_enqueued(&self) {
        let before = self.unanswered.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 1, "the enqueuing request's own hold keeps the count above zero");
    }

    /// Gives back the enqueuing request's hold: from now on the last answer completes it.
    pub fn all_enqueued(&self) {
        self.answered();
    }

    fn refused(&self, error: KafkaError) {
        self.first_error.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(error);
    }

    fn answered(&self) {
        if self.unanswered.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let completion = self.completion.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(Completion { reply, admission }) = completion else {
            unreachable!("a request completes once: its count reaches zero once");
        };
        let outcome = match self.first_error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(error) => Err(error),
            None => Ok(()),
        };
        drop(admission);
        // The handler may have stopped waiting (ack timeout): nobody to tell.
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;
    use tokio::sync::Semaphore;

    use super::*;

    fn admission(permits: &Arc<Semaphore>, gauge: &IntGauge, events: u32) -> Admission {
        Admission::new(permits.clone().try_acquire_many_owned(events).unwrap(), gauge.clone(), events as usize)
    }

    #[test]
    fn a_request_completes_at_its_last_answer_and_then_releases_its_permits() {
        let permits = Arc::new(Semaphore::new(10));
        let gauge = IntGauge::new("in_flight", "test").unwrap();
        let (request, mut outcome) = PendingRequest::new(admission(&permits, &gauge, 3));
        for _ in 0..3 {
            request.enqueuing();
        }
        request.answered();
        request.answered();
        request.all_enqueued();
        assert!(outcome.try_recv().is_err(), "one record is still unanswered");
        assert_eq!((permits.available_permits(), gauge.get()), (7, 3));
        request.answered();
        assert!(matches!(outcome.try_recv(), Ok(Ok(()))));
        assert_eq!((permits.available_permits(), gauge.get()), (10, 0));
    }

    #[test]
    fn answers_before_the_last_record_is_enqueued_do_not_complete_the_request() {
        let permits = Arc::new(Semaphore::new(10));
        let gauge = IntGauge::new("in_flight", "test").unwrap();
        let (request, mut outcome) = PendingRequest::new(admission(&permits, &gauge, 2));
        request.enqueuing();
        request.answered();
        assert!(outcome.try_recv().is_err(), "the second record is not enqueued yet");
        request.enqueuing();
        request.answered();
        request.all_enqueued();
        assert!(matches!(outcome.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn the_first_refusal_is_the_requests_outcome_and_a_record_never_enqueued_is_not_awaited() {
        let permits = Arc::new(Semaphore::new(10));
        let gauge = IntGauge::new("in_flight", "test").unwrap();
        let (request, mut outcome) = PendingRequest::new(admission(&permits, &gauge, 3));
        request.enqueuing();
        request.enqueuing();
        request.enqueuing();
        request.not_enqueued();
        request.refused(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        request.answered();
        request.refused(KafkaError::Canceled);
        request.answered();
        request.all_enqueued();
        match outcome.try_recv() {
            Ok(Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))) => {}
            other => panic!("expected the first refusal, got {other:?}"),
        }
        assert_eq!(permits.available_permits(), 10);
    }

    #[test]
    fn a_request_dropped_unanswered_releases_its_admission_and_closes_its_channel() {
        let permits = Arc::new(Semaphore::new(10));
        let gauge = IntGauge::new("in_flight", "test").unwrap();
        let (request, mut outcome) = PendingRequest::new(admission(&permits, &gauge, 4));
        request.enqueuing();
        drop(request);
        assert!(matches!(outcome.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert_eq!((permits.available_permits(), gauge.get()), (10, 0));
    }
}
