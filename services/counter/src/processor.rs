//! The processing thread: counts the batches of records the consumer thread
//! copies out of librdkafka, one lock acquisition per batch, seals flushes,
//! commits what the emitter reports acknowledged, and pauses partitions for
//! backpressure (resuming is left to the consumer thread, which must seek).
//!
//! Polling librdkafka costs about as much per record as counting it, so the
//! two run on separate threads.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use tally_model::counting::BYTES_PER_ENTRY;

use crate::outcomes::OutcomeTally;
use crate::partition::{Flow, Input, PartitionState, Rules};
use crate::shared::{position, CounterContext, Inner, Shared};
use crate::worker::WorkerError;

/// Most records per batch.
pub const BATCH: usize = 4_096;

/// How often (at most) the processing thread seals due ranges, applies
/// backpressure and publishes gauges and positions while records flow; and
/// how long it waits for a batch before doing so anyway.
const HOUSEKEEPING: Duration = Duration::from_millis(10);

/// Records copied out of the consumer: one buffer for all keys and payloads,
/// reused from batch to batch (no allocation per record).
#[derive(Debug, Default)]
pub struct Batch {
    /// The mark the records were polled under (see [`crate::shared`]).
    pub mark: u64,
    records: Vec<Record>,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Record {
    partition: i32,
    offset: i64,
    log_ms: Option<i64>,
    key: Range<usize>,
    payload: Range<usize>,
    /// The W3C `traceparent` header of a traced request's record.
    traceparent: Option<Range<usize>>,
}

impl Batch {
    /// An empty batch with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self { mark: 0, records: Vec::with_capacity(records), bytes: Vec::with_capacity(bytes) }
    }

    /// Copies one record in; `log_ms` is the broker's timestamp of it, when
    /// it has one; `traceparent` its trace context, when its request was traced.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        log_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        traceparent: Option<&[u8]>,
    ) {
        let key = self.append(key.unwrap_or_default());
        let payload = self.append(payload.unwrap_or_default());
        let traceparent = traceparent.map(|value| self.append(value));
        self.records.push(Record { partition, offset, log_ms, key, payload, traceparent });
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Empties it, keeping its buffers.
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
    }
}

/// The processing thread's view of the counter.
pub struct Processor<'a> {
    /// The consumer (pause and commit are safe from any thread).
    pub consumer: &'a BaseConsumer<CounterContext>,
    /// The shared state.
    pub shared: &'a Shared,
    /// Classification and flush rules.
    pub rules: &'a Rules,
    /// Set when a paused partition may be resumed: the consumer thread resumes and seeks it.
    pub resume_wanted: &'a AtomicBool,
}

impl Processor<'_> {
    /// Counts batches until the consumer thread hangs up; spent batches go
    /// back through `spare` for reuse.
    pub fn run(&self, batches: &Receiver<Batch>, spare: &SyncSender<Batch>) -> Result<(), WorkerError> {
        let mut outcomes = OutcomeTally::default();
        let mut last_housekeeping = Instant::now();
        loop {
            let received = batches.recv_timeout(HOUSEKEEPING);
            let mut inner = self.shared.lock();
            if let Some(failure) = inner.failure.take() {
                return Err(failure);
            }
            let now = Instant::now();
            let idle = match received {
                Ok(mut batch) => {
                    let outcome = self.count(&mut inner, &batch, now, &mut outcomes);
                    batch.clear();
                    let _ = spare.try_send(batch);
                    outcome?;
                    false
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            self.shared.complete_ready(&mut inner, self.consumer)?;
            if idle || now.duration_since(last_housekeeping) >= HOUSEKEEPING {
                last_housekeeping = now;
                self.seal_due(&mut inner, &mut outcomes)?;
                self.apply_backpressure(&mut inner)?;
                outcomes.publish(&self.shared.metrics);
                self.shared.positions.update_all(inner.partitions.owned().map(|s| (s.partition, position(s))));
            }
        }
    }

    fn count(
        &self,
        inner: &mut Inner,
        batch: &Batch,
        now: Instant,
        outcomes: &mut OutcomeTally,
    ) -> Result<(), WorkerError> {
        let records = &batch.records;
        let mut i = 0;
        while i < records.len() {
            // Records come in runs of one partition (one fetched message set each).
            let partition = records[i].partition;
            let end = records[i..].iter().position(|r| r.partition != partition).map_or(records.len(), |n| i + n);
            let Some(state) = inner.partitions.owned_mut(partition) else {
                i = end;
                continue;
            };
            if batch.mark < state.valid_from_mark {
                i = end; // fetched before the partition was (re)assigned or sought
                continue;
            }
            while i < end {
                if state.flow != Flow::Flowing || state.blocked(self.rules) {
                    // Not now: pause; the rest of the run is refetched from `next` after resume.
                    if state.flow == Flow::Flowing {
                        self.pause(state)?;
                    }
                    i = end;
                    break;
                }
                let view = |r: &Record| Input {
                    offset: r.offset,
                    log_ms: r.log_ms,
                    key: &batch.bytes[r.key.clone()],
                    payload: &batch.bytes[r.payload.clone()],
                };
                let taken = state.process_run(&records[i..end], view, now, self.rules)?;
                for traced in records[i..i + taken].iter().filter_map(|r| r.traceparent.clone()) {
                    state.link(&batch.bytes[traced]);
                }
                i += taken;
                // Checked after every run: a forced boundary must be sealed exactly there.
                if state.due(now, self.rules) {
                    let job = state.seal(now, self.rules);
                    outcomes.add_job(&job);
                    inner.jobs.send(job).map_err(|_| WorkerError::EmitterGone)?;
                }
            }
        }
        Ok(())
    }

    fn pause(&self, state: &mut PartitionState) -> Result<(), WorkerError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.shared.recovery.views_topic, state.partition);
        self.consumer.pause(&list)?;
        state.flow = Flow::Paused;
        self.shared.metrics.pauses.inc();
        Ok(())
    }

    fn seal_due(&self, inner: &mut Inner, outcomes: &mut OutcomeTally) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut jobs = Vec::new();
        for state in inner.partitions.owned_iter_mut() {
            if state.due(now, self.rules) {
                jobs.push(state.seal(now, self.rules));
            }
        }
        for job in jobs {
            outcomes.add_job(&job);
            inner.jobs.send(job).map_err(|_| WorkerError::EmitterGone)?;
        }
        Ok(())
    }

    fn apply_backpressure(&self, inner: &mut Inner) -> Result<(), WorkerError> {
        let mut paused = 0;
        let mut clamped = 0;
        for state in inner.partitions.owned_iter_mut() {
            clamped += state.take_clock_skew_clamped();
            let blocked = state.blocked(self.rules);
            if blocked && state.flow == Flow::Flowing {
                self.pause(state)?;
            } else if !blocked && state.flow == Flow::Paused {
                state.flow = Flow::ResumeWanted;
                self.resume_wanted.store(true, Ordering::SeqCst);
            }
            paused += i64::from(state.flow != Flow::Flowing);
        }
        let metrics = &self.shared.metrics;
        metrics.clock_skew_clamped.inc_by(clamped);
        metrics.paused_partitions.set(paused);
        let entries: usize = inner.partitions.owned().map(PartitionState::dedup_len).sum();
        metrics.dedup_entries.set(entries as i64);
        metrics.dedup_bytes.set((entries * BYTES_PER_ENTRY) as i64);
        metrics.buffered_rows.set(inner.partitions.owned().map(PartitionState::buffered_rows).sum::<usize>() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_keys_and_payloads_apart_and_is_reused() {
        let mut batch = Batch::with_capacity(4, 64);
        batch.push(1, 10, Some(5), Some(b"k1"), Some(b"payload-1"), Some(b"00-trace"));
        batch.push(2, 20, None, None, Some(b""), None);
        batch.push(1, 11, Some(6), Some(b"k"), None, None);
        let seen: Vec<(i32, i64, &[u8], &[u8])> = batch
            .records
            .iter()
            .map(|r| (r.partition, r.offset, &batch.bytes[r.key.clone()], &batch.bytes[r.payload.clone()]))
            .collect();
        assert_eq!(
            seen,
            vec![(1, 10, &b"k1"[..], &b"payload-1"[..]), (2, 20, &b""[..], &b""[..]), (1, 11, &b"k"[..], &b""[..])]
        );
        let traced: Vec<Option<&[u8]>> =
            batch.records.iter().map(|r| r.traceparent.clone().map(|t| &batch.bytes[t])).collect();
        assert_eq!(traced, vec![Some(&b"00-trace"[..]), None, None]);
        let capacity = batch.bytes.capacity();
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.bytes.capacity(), capacity, "buffers are kept");
    }
}
