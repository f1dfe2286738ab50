//! State shared by the consumer thread (poll, rebalance callbacks) and the
//! processing thread: owned partitions, the flush channels, and the marks
//! that tell fresh records from stale ones.
//!
//! Rebalance callbacks run inside `poll` on the consumer thread. On revoke,
//! the revoked partitions are drained: their in-flight flushes are awaited,
//! what they counted since is sealed and emitted, and the ends are committed
//! synchronously, so the next owner starts where this one stopped. Records
//! polled but not yet processed are dropped uncommitted (the next owner
//! counts them once); so are open ranges after a lost assignment. On
//! assign, each new partition is claimed ([`crate::claim`]) and recovered
//! ([`crate::recovery`]) before any of its records is processed. With an
//! incremental protocol (`cooperative-sticky`, or the `consumer` protocol)
//! both callbacks name only the partitions that move: the others keep
//! counting through the rebalance, their marks still valid. A partition's
//! life (owned, draining, released) is one state machine
//! ([`crate::ownership`]); a flush's acknowledgement counts only for the
//! owner that sealed it. Between
//! rebalances, acknowledged ends are committed in the background
//! ([`crate::commits`]); the results come back through the commit callback,
//! also inside `poll`.
//!
//! # Marks
//!
//! The consumer thread copies records into batches for the processing
//! thread, so a batch may still be queued when a partition is revoked and
//! assigned again, or sought back after a pause. Every such event bumps
//! [`Shared::marks`] on the consumer thread, between polls; each batch
//! carries the mark it was polled under and each partition the mark from
//! which its records are valid, so records fetched before the event are skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use crate::claim::{ClaimError, Claimer};
use crate::commits::{self, Verdict};
use crate::emitter::Completion;
use crate::lag::{Position, Positions};
use crate::metrics::CounterMetrics;
use crate::ownership::Partitions;
use crate::partition::{FlushJob, PartitionState};
use crate::recovery::{self, RecoveryContext, RecoveryError};
use crate::worker::WorkerError;

/// How long a revoke waits for a partition's flushes in flight before it
/// gives them up to the next owner (who re-emits them).
const REVOKE_WAIT: Duration = Duration::from_secs(60);

/// How long a take-over asks for the group's committed offsets.
const COMMITTED_OFFSETS_WAIT: Duration = Duration::from_secs(10);

/// State shared between the threads of one counter.
pub struct Shared {
    inner: Mutex<Inner>,
    /// How partitions are taken over.
    pub recovery: RecoveryContext,
    /// Claims partitions before they are taken over.
    pub claimer: Claimer,
    /// The counter's metrics.
    pub metrics: CounterMetrics,
    /// Positions of owned partitions, read by the lag monitor.
    pub positions: Positions,
    /// Bumped (on the consumer thread only) by every rebalance callback and seek.
    pub marks: AtomicU64,
}

/// What the lock guards.
pub struct Inner {
    /// The partitions this counter holds or held.
    pub partitions: Partitions,
    /// Acknowledged flushes, from the emitter.
    pub completions: Receiver<Completion>,
    /// Sealed flushes, to the emitter.
    pub jobs: UnboundedSender<FlushJob>,
    /// An error raised inside a callback, surfaced by the processing thread.
    pub failure: Option<WorkerError>,
}

/// The consumer context: rebalance handling and commit results.
pub struct CounterContext {
    /// The shared state.
    pub shared: std::sync::Arc<Shared>,
}

impl ClientContext for CounterContext {}

impl ConsumerContext for CounterContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.shared.marks.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.shared.metrics.partitions_revoked.inc_by(revoked.len() as u64);
            let mut inner = self.shared.lock();
            if let Err(e) = self.shared.release(&mut inner, consumer, &revoked) {
                inner.failure.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.shared.marks.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Assign(list) = rebalance {
            let assigned: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.shared.metrics.partitions_assigned.inc_by(assigned.len() as u64);
            if let Err(e) = self.shared.take_over(consumer, &assigned) {
                tracing::error!(error = %e, "taking over partitions failed");
                self.shared.lock().failure.get_or_insert(e);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.shared.committed(&result, offsets);
    }
}

impl Shared {
    /// Shared state with no partition owned yet.
    pub fn new(
        recovery: RecoveryContext,
        claimer: Claimer,
        metrics: CounterMetrics,
        completions: Receiver<Completion>,
        jobs: UnboundedSender<FlushJob>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner { partitions: Partitions::default(), completions, jobs, failure: None }),
            recovery,
            claimer,
            positions: Positions::new(metrics.clone()),
            metrics,
            marks: AtomicU64::new(0),
        }
    }

    /// Locks the shared state (a poisoned lock is taken over: the state is
    /// consistent between records).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The group's committed offsets of `list` (`None` for a partition the
    /// group never committed), asked in short steps so that a shutdown is
    /// noticed: `Ok(None)` when it came first.
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer<CounterContext>,
        list: TopicPartitionList,
    ) -> Result<Option<HashMap<i32, Option<i64>>>, WorkerError> {
        let deadline = Instant::now() + COMMITTED_OFFSETS_WAIT;
        let committed = loop {
            if self.recovery.stop.is_cancelled() {
                return Ok(None);
            }
            match consumer.committed_offsets(list.clone(), recovery::STOP_CHECK) {
                Ok(committed) => break committed,
                Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut)) if Instant::now() < deadline => {}
                Err(e) => return Err(e.into()),
            }
        };
        let offsets = committed
            .elements()
            .iter()
            .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
            .collect();
        Ok(Some(offsets))
    }

    fn take_over(&self, consumer: &BaseConsumer<CounterContext>, assigned: &[i32]) -> Result<(), WorkerError> {
        let topic = &self.recovery.views_topic;
        let mut list = TopicPartitionList::new();
        for p in assigned {
            list.add_partition(topic, *p);
        }
        // librdkafka keeps a partition's pause across unassign and assign: one
        // paused for backpressure when it was revoked would never be fetched again.
        consumer.resume(&list)?;
        let Some(committed) = self.committed_offsets(consumer, list)? else {
            tracing::info!(?assigned, "shutting down during a take-over; the partitions are left to their next owner");
            return Ok(());
        };
        for p in assigned {
            let started = Instant::now();
            let committed = committed.get(p).copied().flatten();
            let taken = self
                .claimer
                .claim(*p, committed.unwrap_or(-1))
                .map_err(WorkerError::from)
                .and_then(|claimed| Ok((claimed, recovery::recover(&self.recovery, *p, committed, claimed)?)));
            let (claimed, mut recovered) = match taken {
                Ok(taken) => taken,
                Err(
                    WorkerError::Claim(ClaimError::Stopped { .. })
                    | WorkerError::Recovery(RecoveryError::Stopped { .. }),
                ) => {
                    tracing::info!(
                        partition = p,
                        "shutting down during a take-over; the partition is left to its next owner"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            self.metrics.recovery_duration.observe(started.elapsed().as_secs_f64());
            self.metrics.reemitted_ranges.inc_by(recovered.forced as u64);
            tracing::info!(
                partition = p,
                start = recovered.state.next_offset(),
                epoch = recovered.state.epoch,
                reemit = recovered.forced,
                replayed = recovered.replayed,
                owner = format_args!("{:016x}", claimed.owner),
                claim_offset = claimed.offset,
                "partition claimed and taken over"
            );
            recovered.state.valid_from_mark = self.marks.load(Ordering::SeqCst);
            let mut inner = self.lock();
            self.positions.update(*p, position(&recovered.state));
            inner.partitions.own(recovered.state)?;
            self.metrics.owned_partitions.set(inner.partitions.owned_count() as i64);
        }
        Ok(())
    }

    /// Drains `partitions` before they go: waits for their in-flight
    /// flushes, seals what they counted since and waits for that flush too,
    /// commits the acknowledged ends synchronously (the next owner starts
    /// there, with nothing to count again), and releases the partitions.
    /// A lost assignment (the group moved on without us) or a failure is not
    /// sealed: the partitions may already be counted by their next owner.
    fn release(
        &self,
        inner: &mut Inner,
        consumer: &BaseConsumer<CounterContext>,
        partitions: &[i32],
    ) -> Result<(), WorkerError> {
        let selected = |p: i32| partitions.contains(&p);
        inner.partitions.drain(selected);
        let deadline = Instant::now() + REVOKE_WAIT;
        let mut may_seal = !consumer.assignment_lost() && inner.failure.is_none();
        loop {
            while inner.partitions.draining_in_flight(selected) {
                let wait = deadline.saturating_duration_since(Instant::now());
                match inner.completions.recv_timeout(wait) {
                    Ok(done) => self.complete(inner, consumer, done)?,
                    Err(RecvTimeoutError::Timeout) => {
                        tracing::warn!("revoking with a flush still unacknowledged; the next owner re-emits it");
                        may_seal = false;
                        break;
                    }
                    Err(RecvTimeoutError::Disconnected) => return Err(WorkerError::EmitterGone),
                }
            }
            if !std::mem::take(&mut may_seal) {
                break;
            }
            let sealed = self.seal_draining(inner, selected)?;
            if sealed == 0 {
                break;
            }
            self.metrics.revoke_flushes.inc_by(sealed as u64);
        }
        if consumer.assignment_lost() {
            // The group moved on: a commit now would be refused, and the
            // partitions' next owners start from the last committed ends.
            self.forget(inner, selected);
            return Ok(());
        }
        // Released even when the commit fails: they are not ours any more.
        let committed = self.commit_acknowledged(inner, selected, |list| consumer.commit(&list, CommitMode::Sync));
        self.forget(inner, selected);
        committed
    }

    /// Releases the draining partitions `selected` picks (see [`crate::ownership`]).
    pub fn forget(&self, inner: &mut Inner, selected: impl Fn(i32) -> bool) {
        for state in inner.partitions.release(selected) {
            tracing::info!(partition = state.partition, dropped_rows = state.buffered_rows(), "partition released");
            self.positions.remove(state.partition);
        }
        self.metrics.owned_partitions.set(inner.partitions.owned_count() as i64);
    }

    /// Seals the open range of every draining partition `selected` picks
    /// that can be sealed without cutting a previous life's boundary (no
    /// flush in flight, records counted) and hands the flushes to the
    /// emitter (revoke, shutdown). Returns how many were sealed.
    pub fn seal_draining(&self, inner: &mut Inner, selected: impl Fn(i32) -> bool) -> Result<usize, WorkerError> {
        let now = Instant::now();
        let jobs: Vec<FlushJob> = inner
            .partitions
            .draining_mut(selected)
            .filter(|state| state.can_seal_at_shutdown())
            .map(|state| state.seal(now, &self.recovery.rules))
            .collect();
        let sealed = jobs.len();
        for job in jobs {
            inner.jobs.send(job).map_err(|_| WorkerError::EmitterGone)?;
        }
        Ok(sealed)
    }

    /// Stores an acknowledged flush's end for the background commit (no
    /// broker round trip on this thread) and lets its partition seal the
    /// next one, if the flush's owner still holds the partition. A flush of
    /// another owner (one the drain gave up on, acknowledged after the
    /// partition was released or claimed anew) is ignored: the range it
    /// covers is not counted by whoever holds the partition now.
    pub fn complete(
        &self,
        inner: &mut Inner,
        consumer: &BaseConsumer<CounterContext>,
        done: Completion,
    ) -> Result<(), WorkerError> {
        let state = match inner.partitions.held_by(done.partition, done.owner) {
            Ok(state) => state,
            Err(stale) => {
                self.metrics.stale_completions.inc();
                tracing::warn!(
                    partition = done.partition,
                    end = done.end,
                    owner = format_args!("{:016x}", done.owner),
                    ?stale,
                    "a flush of an owner that no longer holds the partition was acknowledged; its end is not committed"
                );
                return Ok(());
            }
        };
        commits::store(consumer, &self.recovery.views_topic, done.partition, done.end)
            .map_err(|source| WorkerError::Commit { partition: done.partition, offset: done.end, source })?;
        state.complete(done.end);
        self.metrics.flushes.inc();
        self.metrics.flush_rows.observe(done.rows as f64);
        self.metrics.flush_duration.observe(done.sealed_at.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits, and waits for, the acknowledged ends the background commit
    /// has not confirmed yet, of the partitions `selected` picks (revoke,
    /// shutdown), so the next owner starts as late as possible. A failure is
    /// logged and counted and, unless another member took this member's
    /// static identity, not an error: the next owner re-emits the flushes
    /// after the last committed end, exactly.
    ///
    /// `commit` commits the list it is given and waits (on revoke: a
    /// synchronous commit; at shutdown: one bounded by the drain budget).
    pub fn commit_acknowledged(
        &self,
        inner: &mut Inner,
        selected: impl Fn(i32) -> bool,
        commit: impl FnOnce(TopicPartitionList) -> KafkaResult<()>,
    ) -> Result<(), WorkerError> {
        let mut ends: Vec<(i32, i64)> = inner
            .partitions
            .held_iter_mut()
            .filter(|state| selected(state.partition))
            .filter_map(|state| Some((state.partition, state.acknowledged()?)))
            .collect();
        let Some(&(partition, offset)) = ends.iter().min() else { return Ok(()) };
        ends.sort_unstable();
        let topic = &self.recovery.views_topic;
        let list =
            commits::offsets(topic, &ends).map_err(|source| WorkerError::Commit { partition, offset, source })?;
        let result = commit(list.clone());
        match commits::judge(&result, &list, topic, |p| inner.partitions.holds(p)) {
            Verdict::Committed => {
                for state in inner.partitions.held_iter_mut() {
                    if let Some(&(_, end)) = ends.iter().find(|(p, _)| *p == state.partition) {
                        state.confirm_committed(end);
                    }
                }
                Ok(())
            }
            Verdict::Retried(code) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %code, ?ends, "final offset commit failed; the next owner re-emits the flushes after the last committed end");
                Ok(())
            }
            Verdict::Expelled(code) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %code, ?ends, "final offset commit rejected: the group moved on without this member; the next owner re-emits the flushes after the last committed end");
                Ok(())
            }
            Verdict::Fenced(code) => {
                self.metrics.commit_failures.inc();
                tracing::error!(error = %code, ?ends, "final offset commit rejected: another member has this member's group-instance-id");
                Err(WorkerError::Fenced(code))
            }
        }
    }

    /// Handles the result of a background commit (inside `poll`, on the
    /// consumer thread): a success confirms the acknowledged ends it covers;
    /// a failure is logged and counted. A member the group moved on without
    /// counts on until librdkafka revokes its partitions as lost and rejoins
    /// (what it emits meanwhile is fenced by its successors' claims); a
    /// member whose static identity another member took stops the counter.
    pub fn committed(&self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        let topic = &self.recovery.views_topic;
        let mut inner = self.lock();
        let verdict = commits::judge(result, offsets, topic, |p| inner.partitions.holds(p));
        match verdict {
            Verdict::Committed => {
                for element in offsets.elements_for_topic(topic) {
                    let (partition, Offset::Offset(done)) = (element.partition(), element.offset()) else { continue };
                    if let Some(state) = inner.partitions.held_iter_mut().find(|s| s.partition == partition) {
                        state.confirm_committed(done);
                    }
                }
            }
            Verdict::Retried(code) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %code, offsets = ?offsets, "offset commit failed; the stored offsets are committed again on the next tick");
            }
            Verdict::Expelled(code) => {
                self.metrics.commit_failures.inc();
                tracing::warn!(error = %code, offsets = ?offsets, "offset commit rejected: the group moved on without this member; it rejoins");
            }
            Verdict::Fenced(code) => {
                self.metrics.commit_failures.inc();
                tracing::error!(error = %code, offsets = ?offsets, "offset commit rejected: another member has this member's group-instance-id; stopping");
                inner.failure.get_or_insert(WorkerError::Fenced(code));
            }
        }
    }

    /// Handles every acknowledgement already received.
    pub fn complete_ready(
        &self,
        inner: &mut Inner,
        consumer: &BaseConsumer<CounterContext>,
    ) -> Result<(), WorkerError> {
        while let Ok(done) = inner.completions.try_recv() {
            self.complete(inner, consumer, done)?;
        }
        Ok(())
    }
}

/// Where a partition stands, for the lag monitor.
pub fn position(state: &PartitionState) -> Position {
    Position { next_offset: state.next_offset() }
}

#[cfg(test)]
mod tests;
