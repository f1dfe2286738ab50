//! The consumer thread: polls librdkafka (rebalance callbacks run inside
//! `poll`, see [`crate::shared`]), copies records into batches for the
//! processing thread ([`crate::processor`]), resumes and seeks partitions
//! paused for backpressure, and at shutdown seals what it can, waits for the
//! acknowledgements and commits them synchronously.
//!
//! Lag is measured on a thread of its own ([`crate::lag`]), so a slow broker
//! never stalls polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::{drop_within, run_within, Unfinished};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::claim::{ClaimError, Claimer};
use crate::dlq::DlqLimitExceeded;
use crate::emitter::Completion;
use crate::lag::{BrokerLagSource, LagMonitor};
use crate::metrics::CounterMetrics;
use crate::partition::{Flow, FlushJob, Rules};
use crate::processor::{Batch, Processor, BATCH};
use crate::recovery::{RecoveryContext, RecoveryError};
use crate::shared::{CounterContext, Shared};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Too many malformed records: halting instead of dead-lettering everything.
    #[error(transparent)]
    DlqLimit(#[from] DlqLimitExceeded),
    /// A partition could not be taken over.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// A partition could not be claimed.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// A partition's state machine was driven out of order.
    #[error(transparent)]
    Ownership(#[from] crate::ownership::OwnershipError),
    /// Storing or committing an offset failed.
    #[error("committing offset {offset} of partition {partition}: {source}")]
    Commit {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
    /// The group coordinator rejected an offset commit because another
    /// member has this member's `group-instance-id` (see [`crate::commits`]).
    #[error("offset commit rejected, another member has this member's group-instance-id: {0}")]
    Fenced(rdkafka::error::RDKafkaErrorCode),
    /// The emitter stopped.
    #[error("the flush emitter stopped")]
    EmitterGone,
    /// The consumer failed.
    #[error("consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A thread (processing, lag monitor) could not be started.
    #[error("starting a counter thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The processing thread panicked.
    #[error("the processing thread panicked")]
    Panicked,
}

/// Batches queued between the consumer thread and the processing thread.
const QUEUED_BATCHES: usize = 4;

/// Bytes reserved per batch for keys and payloads (grows when needed).
const BATCH_BYTES: usize = BATCH * 128;

/// Of the drain budget, what the final commit keeps for itself: waiting for
/// acknowledgements stops this long (plus [`CLOSE_RESERVE`]) before the end.
const COMMIT_RESERVE: Duration = Duration::from_secs(2);

/// Of the drain budget, what closing the consumer keeps for itself.
const CLOSE_RESERVE: Duration = Duration::from_secs(1);

/// How long one poll waits for the first record of a batch.
const POLL_WAIT: Duration = Duration::from_millis(20);

/// The consumer, its shared state and the rules.
pub struct Worker {
    /// Shared with the thread of the final commit at shutdown, which may outlive the drain.
    consumer: Arc<BaseConsumer<CounterContext>>,
    shared: Arc<Shared>,
    rules: Rules,
    lag_interval: Duration,
    /// Whether the warning about producer timestamps on the views topic was logged.
    create_time_warned: AtomicBool,
}

impl Worker {
    /// Builds the consumer (subscribed to the views topic) around `shared` state.
    pub fn new(
        consumer_config: rdkafka::ClientConfig,
        recovery: RecoveryContext,
        claimer: Claimer,
        metrics: CounterMetrics,
        completions: Receiver<Completion>,
        jobs: UnboundedSender<FlushJob>,
        lag_interval: Duration,
    ) -> Result<Self, WorkerError> {
        let rules = recovery.rules.clone();
        let shared = Arc::new(Shared::new(recovery, claimer, metrics, completions, jobs));
        let consumer: BaseConsumer<CounterContext> =
            consumer_config.create_with_context(CounterContext { shared: shared.clone() })?;
        consumer.subscribe(&[&shared.recovery.views_topic])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            shared,
            rules,
            lag_interval,
            create_time_warned: AtomicBool::new(false),
        })
    }

    /// Counts until `shutdown`, then seals what it can (nothing after an
    /// error), waits for the acknowledgements, commits, and leaves the group,
    /// all within `drain` (the final commit keeps at least 1 s).
    pub fn run(self, shutdown: CancellationToken, drain: Duration) -> Result<(), WorkerError> {
        let watermarks = BrokerLagSource::new(&self.shared.recovery.kafka, &self.shared.recovery.views_topic)?;
        let mut lag = LagMonitor::spawn(self.shared.positions.clone(), watermarks, self.lag_interval)?;
        let outcome = self.consume(&shutdown);
        let deadline = Instant::now() + drain;
        // Not waited for here: its broker requests must not eat the drain.
        lag.request_stop();
        // After a failure (a halt at the dead-letter limit above all) the open
        // ranges must not be emitted: only in-flight flushes are finished.
        let drained = self.drain(deadline, outcome.is_ok());
        // Without a reachable coordinator, leaving the group may wait out the session.
        let budget = deadline.saturating_duration_since(Instant::now()).max(CLOSE_RESERVE);
        if !drop_within(self.consumer, budget) {
            tracing::warn!(?budget, "leaving the consumer group did not finish in time; the session will expire");
        }
        if !lag.stop_within(deadline.saturating_duration_since(Instant::now())) {
            tracing::debug!("the lag monitor is still in a broker request; it ends with it");
        }
        outcome.and(drained)
    }

    /// Polls on this thread and counts on a scoped processing thread until
    /// `shutdown` or an error on either.
    fn consume(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let (batches_tx, batches_rx) = std::sync::mpsc::sync_channel::<Batch>(QUEUED_BATCHES);
        let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Batch>(QUEUED_BATCHES + 2);
        let resume_wanted = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let processor = Processor {
                consumer: &self.consumer,
                shared: &self.shared,
                rules: &self.rules,
                resume_wanted: &resume_wanted,
            };
            let handle = std::thread::Builder::new()
                .name("tally-counter-proc".into())
                .spawn_scoped(scope, move || processor.run(&batches_rx, &spare_tx))?;
            let polled = self.poll_loop(shutdown, &batches_tx, &spare_rx, &resume_wanted, &handle);
            drop(batches_tx);
            let processed = handle.join().unwrap_or(Err(WorkerError::Panicked));
            polled.and(processed)
        })
    }

    fn poll_loop(
        &self,
        shutdown: &CancellationToken,
        batches: &SyncSender<Batch>,
        spare: &Receiver<Batch>,
        resume_wanted: &AtomicBool,
        processor: &ScopedJoinHandle<'_, Result<(), WorkerError>>,
    ) -> Result<(), WorkerError> {
        let topic = self.shared.recovery.views_topic.clone();
        let mut batch = Batch::with_capacity(BATCH, BATCH_BYTES);
        while !shutdown.is_cancelled() && !processor.is_finished() {
            if resume_wanted.swap(false, Ordering::SeqCst) {
                self.resume_ready(&topic)?;
            }
            if !self.collect(&mut batch, batches, spare) {
                break;
            }
        }
        Ok(())
    }

    /// Polls up to [`BATCH`] records (waiting only for the first) and hands
    /// them to the processing thread. A rebalance callback inside a poll
    /// bumps the mark: the records before it leave in a batch of their own.
    /// Returns false when the processing thread is gone.
    fn collect(&self, batch: &mut Batch, batches: &SyncSender<Batch>, spare: &Receiver<Batch>) -> bool {
        let ship = |batch: &mut Batch| {
            let next = spare.try_recv().unwrap_or_else(|_| Batch::with_capacity(BATCH, BATCH_BYTES));
            batches.send(std::mem::replace(batch, next)).is_ok()
        };
        batch.mark = self.shared.marks.load(Ordering::SeqCst);
        let mut timeout = POLL_WAIT;
        while batch.len() < BATCH {
            let polled = self.consumer.poll(timeout);
            timeout = Duration::ZERO;
            let mark = self.shared.marks.load(Ordering::SeqCst);
            if mark != batch.mark {
                if !batch.is_empty() && !ship(batch) {
                    return false;
                }
                batch.mark = mark;
            }
            match polled {
                Some(Ok(message)) => {
                    let timestamp = message.timestamp();
                    if let Timestamp::CreateTime(_) = timestamp {
                        self.warn_create_time();
                    }
                    // Only records of traced requests have headers.
                    let traceparent = message.headers().and_then(|headers| {
                        headers.iter().find(|h| h.key == tally_service::traces::TRACEPARENT).and_then(|h| h.value)
                    });
                    batch.push(
                        message.partition(),
                        message.offset(),
                        timestamp.to_millis(),
                        message.key(),
                        message.payload(),
                        traceparent,
                    )
                }
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    // Fenced (a duplicate group-instance-id, say): this consumer
                    // will never fetch again. Stop, so the supervisor or an
                    // operator sees it, rather than run without partitions.
                    tracing::error!(error = %e, "the consumer failed fatally; stopping");
                    self.shared.lock().failure.get_or_insert(WorkerError::Kafka(e));
                    break;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => break,
            }
        }
        batch.is_empty() || ship(batch)
    }

    /// Warns once that the views topic carries the producers' timestamps
    /// (`CreateTime`): the gateways' own clocks, against which a gateway
    /// clock running ahead cannot be told (see `tally_model::counting`).
    fn warn_create_time(&self) {
        if !self.create_time_warned.load(Ordering::Relaxed) && !self.create_time_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                topic = %self.shared.recovery.views_topic,
                "the views topic keeps producer timestamps (CreateTime): the dedup window cannot guard against a gateway clock running ahead; set message.timestamp.type=LogAppendTime on it"
            );
        }
    }

    /// Resumes the partitions the processing thread unblocked, seeking each
    /// back to its next offset; records polled before are stale from now on.
    fn resume_ready(&self, topic: &str) -> Result<(), WorkerError> {
        let mut inner = self.shared.lock();
        for state in inner.partitions.owned_iter_mut() {
            if state.flow != Flow::ResumeWanted {
                continue;
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(topic, state.partition);
            self.consumer.resume(&list)?;
            self.consumer.seek(topic, state.partition, Offset::Offset(state.next_offset()), Duration::from_secs(5))?;
            state.valid_from_mark = self.shared.marks.fetch_add(1, Ordering::SeqCst) + 1;
            state.flow = Flow::Flowing;
        }
        Ok(())
    }

    /// Everything before `deadline`: acknowledgements, the final commit; the
    /// caller closes the consumer in what is left.
    fn drain(&self, deadline: Instant, seal_open_ranges: bool) -> Result<(), WorkerError> {
        let mut inner = self.shared.lock();
        inner.partitions.drain(|_| true);
        if seal_open_ranges {
            self.shared.seal_draining(&mut inner, |_| true)?;
        }
        let acknowledged_by = deadline.checked_sub(COMMIT_RESERVE + CLOSE_RESERVE).unwrap_or(deadline);
        while inner.partitions.draining_in_flight(|_| true) {
            match inner.completions.recv_timeout(acknowledged_by.saturating_duration_since(Instant::now())) {
                Ok(done) => self.shared.complete(&mut inner, &self.consumer, done)?,
                Err(_) => {
                    tracing::warn!("shutdown with flushes unacknowledged; they are re-emitted on restart");
                    break;
                }
            }
        }
        // The background commit may not have sent the last ends yet. Without
        // a reachable coordinator a synchronous commit waits out the group
        // session (45 s by default): wait for it within the drain budget only.
        let budget = deadline.saturating_duration_since(Instant::now() + CLOSE_RESERVE).max(CLOSE_RESERVE);
        let consumer = self.consumer.clone();
        let committed =
            self.shared.commit_acknowledged(&mut inner, |_| true, |list| commit_within(consumer, list, budget));
        let held: Vec<i32> = inner.partitions.held_iter_mut().map(|s| s.partition).collect();
        if let Err(e) = crate::commits::forget_stored(&self.consumer, &self.shared.recovery.views_topic, &held) {
            tracing::warn!(error = %e, "clearing stored offsets before closing the consumer failed");
        }
        self.shared.forget(&mut inner, |_| true);
        committed
    }
}

/// Commits `list` synchronously on a thread of its own and waits for it at
/// most `budget`; past it the commit is left to finish (or fail) on its own,
/// and the flushes after the last committed end are re-emitted by the next owner.
fn commit_within(
    consumer: Arc<BaseConsumer<CounterContext>>,
    list: TopicPartitionList,
    budget: Duration,
) -> KafkaResult<()> {
    let commit = move || consumer.commit(&list, CommitMode::Sync);
    match run_within("tally-counter-final-commit", budget, commit) {
        Ok(committed) => committed,
        Err(Unfinished::NotStarted) => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::Fail)),
        Err(Unfinished::TimedOut) => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::OperationTimedOut)),
    }
}
