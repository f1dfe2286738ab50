//! The consumer thread: poll, count, seal flushes, commit what the emitter
//! reports acknowledged, and hand partitions over cleanly on rebalance.
//!
//! Rebalance callbacks run inside `poll` on this thread. On revoke, the
//! worker waits for the revoked partitions' in-flight flushes to be
//! acknowledged and commits them; their unsealed records are dropped
//! uncommitted (never emitted, so the next owner counts them once). On
//! assign, each new partition is recovered ([`crate::recovery`]) before any
//! of its records is processed.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::dedup::BYTES_PER_ENTRY;
use crate::dlq::DlqLimitExceeded;
use crate::emitter::Completion;
use crate::metrics::CounterMetrics;
use crate::partition::{FlushJob, PartitionState, Rules};
use crate::recovery::{self, RecoveryContext, RecoveryError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Too many malformed records: halting instead of dead-lettering everything.
    #[error(transparent)]
    DlqLimit(#[from] DlqLimitExceeded),
    /// A partition could not be taken over.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// Committing an offset failed.
    #[error("committing offset {offset} of partition {partition}: {source}")]
    Commit {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
    /// The emitter stopped.
    #[error("the flush emitter stopped")]
    EmitterGone,
    /// The consumer failed.
    #[error("consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// State shared between the poll loop and the rebalance callbacks.
pub struct Shared {
    inner: Mutex<Inner>,
    recovery: RecoveryContext,
    metrics: CounterMetrics,
}

struct Inner {
    states: HashMap<i32, PartitionState>,
    completions: Receiver<Completion>,
    jobs: UnboundedSender<FlushJob>,
    /// An error raised inside a callback, surfaced by the poll loop.
    failure: Option<WorkerError>,
}

/// The consumer context: rebalance handling.
pub struct CounterContext {
    shared: Arc<Shared>,
}

impl ClientContext for CounterContext {}

impl ConsumerContext for CounterContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let mut inner = self.shared.lock();
            if let Err(e) = inner.release(consumer, &revoked, &self.shared.recovery.views_topic, &self.shared.metrics) {
                inner.failure.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            if let Err(e) = self.shared.take_over(consumer, &assigned) {
                tracing::error!(error = %e, "taking over partitions failed");
                self.shared.lock().failure.get_or_insert(e);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_over(&self, consumer: &BaseConsumer<CounterContext>, assigned: &[i32]) -> Result<(), WorkerError> {
        let topic = &self.recovery.views_topic;
        let mut list = TopicPartitionList::new();
        for p in assigned {
            list.add_partition(topic, *p);
        }
        let committed: HashMap<i32, Option<i64>> = consumer
            .committed_offsets(list, Duration::from_secs(10))?
            .elements()
            .iter()
            .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
            .collect();
        for p in assigned {
            let started = Instant::now();
            let recovered = recovery::recover(&self.recovery, *p, committed.get(p).copied().flatten())?;
            self.metrics.recovery_duration.observe(started.elapsed().as_secs_f64());
            self.metrics.reemitted_ranges.inc_by(recovered.forced as u64);
            tracing::info!(
                partition = p,
                start = recovered.state.next_offset(),
                epoch = recovered.state.epoch,
                reemit = recovered.forced,
                replayed = recovered.replayed,
                "partition taken over"
            );
            let mut inner = self.lock();
            inner.states.insert(*p, recovered.state);
            self.metrics.owned_partitions.set(inner.states.len() as i64);
        }
        Ok(())
    }
}

impl Inner {
    /// Waits for the in-flight flushes of `partitions`, commits them, and forgets the partitions.
    fn release(
        &mut self,
        consumer: &BaseConsumer<CounterContext>,
        partitions: &[i32],
        topic: &str,
        metrics: &CounterMetrics,
    ) -> Result<(), WorkerError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while partitions.iter().any(|p| self.states.get(p).is_some_and(|s| s.in_flight().is_some())) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.completions.recv_timeout(wait) {
                Ok(done) => self.complete(consumer, done, topic, metrics)?,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!("revoking with a flush still unacknowledged; the next owner re-emits it");
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(WorkerError::EmitterGone),
            }
        }
        for p in partitions {
            if let Some(state) = self.states.remove(p) {
                tracing::info!(partition = p, dropped_rows = state.buffered_rows(), "partition released");
                metrics.lag_records.remove_label_values(&[&p.to_string()]).ok();
                metrics.lag_seconds.remove_label_values(&[&p.to_string()]).ok();
            }
        }
        metrics.owned_partitions.set(self.states.len() as i64);
        Ok(())
    }

    fn complete(
        &mut self,
        consumer: &BaseConsumer<CounterContext>,
        done: Completion,
        topic: &str,
        metrics: &CounterMetrics,
    ) -> Result<(), WorkerError> {
        let Some(state) = self.states.get_mut(&done.partition) else { return Ok(()) };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, done.partition, Offset::Offset(done.end))
            .map_err(|source| WorkerError::Commit { partition: done.partition, offset: done.end, source })?;
        consumer.commit(&list, CommitMode::Sync).map_err(|source| WorkerError::Commit {
            partition: done.partition,
            offset: done.end,
            source,
        })?;
        state.complete(done.end);
        metrics.flushes.inc();
        metrics.flush_rows.observe(done.rows as f64);
        metrics.flush_duration.observe(done.sealed_at.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The poll loop's configuration.
pub struct Worker {
    consumer: BaseConsumer<CounterContext>,
    shared: Arc<Shared>,
    rules: Rules,
    lag_interval: Duration,
}

impl Worker {
    /// Builds the consumer (subscribed to the views topic) around `shared` state.
    pub fn new(
        consumer_config: rdkafka::ClientConfig,
        recovery: RecoveryContext,
        metrics: CounterMetrics,
        completions: Receiver<Completion>,
        jobs: UnboundedSender<FlushJob>,
        lag_interval: Duration,
    ) -> Result<Self, WorkerError> {
        let rules = recovery.rules.clone();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { states: HashMap::new(), completions, jobs, failure: None }),
            recovery,
            metrics,
        });
        let consumer: BaseConsumer<CounterContext> =
            consumer_config.create_with_context(CounterContext { shared: shared.clone() })?;
        consumer.subscribe(&[&shared.recovery.views_topic])?;
        Ok(Self { consumer, shared, rules, lag_interval })
    }

    /// Polls until `shutdown`, then seals what it can (nothing after an
    /// error), waits for the acknowledgements (up to `drain`), commits, and
    /// leaves the group.
    pub fn run(self, shutdown: CancellationToken, drain: Duration) -> Result<(), WorkerError> {
        let outcome = self.poll_loop(&shutdown);
        // After a failure (a halt at the dead-letter limit above all) the open
        // ranges must not be emitted: only in-flight flushes are finished.
        let drained = self.drain(drain, outcome.is_ok());
        outcome.and(drained)
    }

    fn poll_loop(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let topic = self.shared.recovery.views_topic.clone();
        let metrics = &self.shared.metrics;
        let mut last_lag = Instant::now();
        let mut unassigned_since = Instant::now();
        let rejoin_after = self.shared.recovery.kafka.rejoin_when_unassigned;
        let mut since_check = 0u32;
        let mut outcomes = [0u64; 4];
        while !shutdown.is_cancelled() {
            let message = self.consumer.poll(Duration::from_millis(50));
            let mut inner = self.shared.lock();
            if let Some(failure) = inner.failure.take() {
                return Err(failure);
            }
            match message {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    if let Some(state) = inner.states.get_mut(&partition) {
                        if state.blocked(&self.rules) || state.paused {
                            // Not now: pause, and the record is refetched from `next` after resume.
                            if !state.paused {
                                let mut list = TopicPartitionList::new();
                                list.add_partition(&topic, partition);
                                self.consumer.pause(&list)?;
                                state.paused = true;
                            }
                        } else {
                            state.process(message.offset(), message.key(), message.payload(), &self.rules)?;
                            since_check += 1;
                            if state.due(Instant::now(), &self.rules) && state.in_flight().is_none() {
                                let job = state.seal(Instant::now());
                                publish_job_stats(&mut outcomes, &job);
                                inner.jobs.send(job).map_err(|_| WorkerError::EmitterGone)?;
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => since_check = u32::MAX,
            }
            while let Ok(done) = inner.completions.try_recv() {
                inner.complete(&self.consumer, done, &topic, metrics)?;
            }
            if since_check >= 256 {
                since_check = 0;
                self.seal_due(&mut inner, &mut outcomes)?;
                self.apply_backpressure(&mut inner, &topic)?;
                publish_outcomes(metrics, &mut outcomes);
            }
            if last_lag.elapsed() >= self.lag_interval {
                last_lag = Instant::now();
                self.publish_lag(&inner, &topic);
                if !inner.states.is_empty() {
                    unassigned_since = Instant::now();
                } else if rejoin_after.is_some_and(|after| unassigned_since.elapsed() >= after) {
                    tracing::warn!("no partition assigned for too long; rejoining the group");
                    drop(inner);
                    self.consumer.unsubscribe();
                    self.consumer.subscribe(&[&topic])?;
                    unassigned_since = Instant::now();
                }
            }
        }
        Ok(())
    }

    fn seal_due(&self, inner: &mut Inner, outcomes: &mut [u64; 4]) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut jobs = Vec::new();
        for state in inner.states.values_mut() {
            if state.due(now, &self.rules) {
                jobs.push(state.seal(now));
            }
        }
        for job in jobs {
            publish_job_stats(outcomes, &job);
            inner.jobs.send(job).map_err(|_| WorkerError::EmitterGone)?;
        }
        Ok(())
    }

    fn apply_backpressure(&self, inner: &mut Inner, topic: &str) -> Result<(), WorkerError> {
        let mut paused = 0;
        for state in inner.states.values_mut() {
            let blocked = state.blocked(&self.rules);
            if blocked && !state.paused {
                let mut list = TopicPartitionList::new();
                list.add_partition(topic, state.partition);
                self.consumer.pause(&list)?;
                state.paused = true;
            } else if !blocked && state.paused {
                let mut list = TopicPartitionList::new();
                list.add_partition(topic, state.partition);
                self.consumer.resume(&list)?;
                self.consumer.seek(
                    topic,
                    state.partition,
                    Offset::Offset(state.next_offset()),
                    Duration::from_secs(5),
                )?;
                state.paused = false;
            }
            paused += i64::from(state.paused);
        }
        let metrics = &self.shared.metrics;
        metrics.paused_partitions.set(paused);
        let entries: usize = inner.states.values().map(PartitionState::dedup_len).sum();
        metrics.dedup_entries.set(entries as i64);
        metrics.dedup_bytes.set((entries * BYTES_PER_ENTRY) as i64);
        metrics.buffered_rows.set(inner.states.values().map(PartitionState::buffered_rows).sum::<usize>() as i64);
        Ok(())
    }

    fn publish_lag(&self, inner: &Inner, topic: &str) {
        let metrics = &self.shared.metrics;
        let now_ms = tally_model::timestamp::now_ms();
        let (mut sum, mut max_seconds) = (0i64, 0i64);
        for state in inner.states.values() {
            let Ok((_, high)) = self.consumer.fetch_watermarks(topic, state.partition, Duration::from_secs(1)) else {
                continue;
            };
            let lag = (high - state.next_offset()).max(0);
            let seconds =
                if lag > 0 && state.last_received_ms > 0 { (now_ms - state.last_received_ms) / 1000 } else { 0 };
            let label = state.partition.to_string();
            metrics.lag_records.with_label_values(&[&label]).set(lag);
            metrics.lag_seconds.with_label_values(&[&label]).set(seconds);
            sum += lag;
            max_seconds = max_seconds.max(seconds);
        }
        metrics.lag_records_sum.set(sum);
        metrics.lag_seconds_max.set(max_seconds);
    }

    fn drain(&self, drain: Duration, seal_open_ranges: bool) -> Result<(), WorkerError> {
        let topic = self.shared.recovery.views_topic.clone();
        let metrics = &self.shared.metrics;
        let mut inner = self.shared.lock();
        let now = Instant::now();
        let mut jobs = Vec::new();
        for state in inner.states.values_mut() {
            if seal_open_ranges && state.can_seal_at_shutdown() {
                jobs.push(state.seal(now));
            }
        }
        for job in jobs {
            if inner.jobs.send(job).is_err() {
                return Err(WorkerError::EmitterGone);
            }
        }
        let deadline = Instant::now() + drain;
        while inner.states.values().any(|s| s.in_flight().is_some()) {
            match inner.completions.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(done) => inner.complete(&self.consumer, done, &topic, metrics)?,
                Err(_) => {
                    tracing::warn!("shutdown with flushes unacknowledged; they are re-emitted on restart");
                    break;
                }
            }
        }
        inner.states.clear();
        Ok(())
    }
}

fn publish_job_stats(outcomes: &mut [u64; 4], job: &FlushJob) {
    let stats = job.header.stats;
    outcomes[0] += u64::from(stats.counted);
    outcomes[1] += u64::from(stats.duplicates);
    for dead in &job.dead {
        match dead.reason {
            crate::dlq::DeadReason::Late => outcomes[2] += 1,
            crate::dlq::DeadReason::Malformed => outcomes[3] += 1,
        }
    }
}

fn publish_outcomes(metrics: &CounterMetrics, outcomes: &mut [u64; 4]) {
    for (index, outcome) in ["counted", "duplicate", "late", "malformed"].iter().enumerate() {
        if outcomes[index] > 0 {
            metrics.events.with_label_values(&[outcome]).inc_by(outcomes[index]);
            if index >= 2 {
                metrics.dead_letters.with_label_values(&[outcome]).inc_by(outcomes[index]);
            }
            outcomes[index] = 0;
        }
    }
}
