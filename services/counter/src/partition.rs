//! One owned partition: its open range, dedup window, aggregate, dead letters
//! and the boundaries a previous owner already emitted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tally_model::counting::{dedup_key, CountingRule, Dedup};
use tally_model::counts::{FlushHeader, FlushStats, MinuteSketch};
use tally_model::timestamp::minute_bucket;
use tally_model::wire::{self, WireView};
use tally_model::Salt;

use crate::aggregate::Aggregate;
use crate::dlq::{DeadLetter, DeadReason, DlqGuard, DlqLimitExceeded, DlqLimits};
use crate::viewers::{SketchRow, Viewers};
use tally_service::traces::Links;

/// The rules every partition applies.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Which records are views (lateness, dedup window): the batch recount's rule too.
    pub counting: CountingRule,
    /// Dead-letter limits.
    pub dlq: DlqLimits,
    /// Flush early above this many distinct rows.
    pub max_rows_per_flush: usize,
    /// Pause above this many rows while a flush is in flight.
    pub max_buffered_rows: usize,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// lgK of the unique-viewer sketches (4..=21).
    pub uniques_lg_k: u8,
    /// log2 of the slots of the per-minute trending sketches (3..=16,
    /// checked when the service is built).
    pub trending_lg_max_map_size: u8,
}

/// What the counter does with a decoded record, before dedup.
pub enum Verdict<'a> {
    /// Count it (if not a duplicate).
    Count(WireView<'a>),
    /// Dead-letter it.
    Dead(DeadReason, String),
}

/// Classifies a payload by `rule`; recovery replays the same function, so
/// both lives of a partition decide alike.
pub fn classify<'a>(payload: Option<&'a [u8]>, rule: &CountingRule) -> Verdict<'a> {
    let view = match wire::decode(payload.unwrap_or_default()) {
        Ok(view) => view,
        Err(e) => return Verdict::Dead(DeadReason::Malformed, e.to_string()),
    };
    if let Some(lateness) = rule.lateness(view.received_ms, view.ts_ms) {
        return Verdict::Dead(
            DeadReason::Late,
            format!(
                "event is {lateness} ms older than its receive time; allowed lateness is {} ms",
                rule.allowed_lateness_ms
            ),
        );
    }
    Verdict::Count(view)
}

/// One record of the partition, as the consumer delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input<'a> {
    /// Its offset.
    pub offset: i64,
    /// The broker's timestamp of the record, when it has one.
    pub log_ms: Option<i64>,
    /// Its key.
    pub key: &'a [u8],
    /// Its payload.
    pub payload: &'a [u8],
}

/// Most records one pass of [`PartitionState::process_run`] decodes before deduplicating them.
const PASS: usize = 16;

/// A record to count, decoded and hashed, waiting for its dedup check.
#[derive(Debug, Clone, Copy)]
struct Pending<'a> {
    offset: i64,
    key: u64,
    received_ms: i64,
    video_id: &'a str,
    salt: Salt,
    ts_ms: i64,
    viewer: Option<&'a str>,
}

/// The records of one pass waiting for [`PartitionState::settle`].
struct Pass<'a> {
    records: [Pending<'a>; PASS],
    len: usize,
}

impl Default for Pass<'_> {
    fn default() -> Self {
        let empty =
            Pending { offset: 0, key: 0, received_ms: 0, video_id: "", salt: Salt::NONE, ts_ms: 0, viewer: None };
        Self { records: [empty; PASS], len: 0 }
    }
}

impl<'a> Pass<'a> {
    fn push(&mut self, record: Pending<'a>) {
        self.records[self.len] = record;
        self.len += 1;
    }
}

/// A sealed range, ready to emit; its header names the owner that sealed it.
#[derive(Debug)]
pub struct FlushJob {
    /// Source partition.
    pub partition: i32,
    /// The range and its version (chunk fields filled in by the emitter).
    pub header: FlushHeader,
    /// Deltas, sorted.
    pub rows: Vec<(Box<str>, Salt, i64, u32)>,
    /// Hourly sketches of the viewers, sorted.
    pub uniques: Vec<SketchRow>,
    /// Trending sketches, one per minute of `rows`, in minute order.
    pub trending: Vec<MinuteSketch>,
    /// Dead letters of the range.
    pub dead: Vec<DeadLetter>,
    /// The trace contexts of the range's records of traced requests.
    pub links: Links,
    /// When it was sealed.
    pub sealed_at: Instant,
}

/// Whether the consumer delivers a partition's records (backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Its records are fetched and counted.
    Flowing,
    /// Paused by the processing thread: it cannot take more records now.
    Paused,
    /// Paused and no longer blocked: waiting for the consumer thread to
    /// resume it and seek back to `next`.
    ResumeWanted,
}

impl FlushJob {
    /// The owner that sealed it (the token of its claim).
    pub fn owner(&self) -> u64 {
        self.header.owner
    }
}

/// State of one owned partition.
#[derive(Debug)]
pub struct PartitionState {
    /// The partition.
    pub partition: i32,
    /// Incarnation of the source topic.
    pub epoch: u32,
    /// The token of this counter's claim on the partition (carried by every chunk).
    pub owner: u64,
    range_start: i64,
    next: i64,
    dedup: Dedup,
    aggregate: Aggregate,
    viewers: Viewers,
    stats: FlushStats,
    dead: Vec<DeadLetter>,
    links: Links,
    guard: DlqGuard,
    forced_ends: VecDeque<i64>,
    in_flight: Option<i64>,
    last_flush: Instant,
    /// End of the last acknowledged flush, stored for commit, while the
    /// background commit has not confirmed it (committed synchronously on
    /// revoke and at shutdown).
    acknowledged: Option<i64>,
    /// Records whose receive time the dedup window did not trust (clamped to
    /// the broker's time plus the allowed skew) since the last
    /// [`Self::take_clock_skew_clamped`].
    clock_skew_clamped: u64,
    /// Whether the consumer delivers its records (backpressure).
    pub flow: Flow,
    /// Records of batches polled before this mark (before the partition was
    /// assigned or last sought) are stale (see [`crate::shared`]).
    pub valid_from_mark: u64,
}

impl PartitionState {
    /// A partition claimed as `owner`, starting at `start` with a rebuilt
    /// `dedup` window and the ends a previous owner emitted beyond `start`
    /// (to be re-emitted exactly).
    pub fn new(partition: i32, epoch: u32, owner: u64, start: i64, dedup: Dedup, forced_ends: Vec<i64>) -> Self {
        Self {
            partition,
            epoch,
            owner,
            range_start: start,
            next: start,
            dedup,
            aggregate: Aggregate::default(),
            viewers: Viewers::default(),
            stats: FlushStats::default(),
            dead: Vec::new(),
            links: Links::default(),
            guard: DlqGuard::default(),
            forced_ends: forced_ends.into(),
            in_flight: None,
            last_flush: Instant::now(),
            acknowledged: None,
            clock_skew_clamped: 0,
            flow: Flow::Flowing,
            valid_from_mark: 0,
        }
    }

    /// Next offset this partition expects.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// Records held by the dedup window.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Distinct rows buffered.
    pub fn buffered_rows(&self) -> usize {
        self.aggregate.distinct_rows()
    }

    /// Whether the partition must not take more records now: it reached a
    /// boundary it cannot seal yet, or its buffer is full while a flush is in flight.
    pub fn blocked(&self, rules: &Rules) -> bool {
        self.in_flight.is_some()
            && (self.forced_ends.front() == Some(&self.next)
                || self.aggregate.distinct_rows() >= rules.max_buffered_rows)
    }

    /// Processes one record. Records before `next` (redelivered after a
    /// seek) are ignored. Returns false, without taking it, when the record
    /// lies at or past the next forced end: the range must be sealed there
    /// first (see [`Self::reaches_forced_end`]).
    pub fn process(&mut self, record: Input<'_>, rules: &Rules) -> Result<bool, DlqLimitExceeded> {
        if self.reaches_forced_end(record.offset) {
            return Ok(false);
        }
        let mut pass = Pass::default();
        let outcome = self.classify_into(record, rules, &mut pass);
        self.settle(&pass, rules.uniques_lg_k);
        outcome.map(|()| true)
    }

    /// Processes the first records of `records` (all of this partition, in
    /// offset order; `view` gives each as an [`Input`]) exactly as
    /// [`Self::process`] would one by one, and returns how many it took:
    /// never past a record after which [`Self::due`] or [`Self::blocked`]
    /// could change, so the caller checks them between calls just as it
    /// would between records. At least one, unless the first record lies at
    /// or past the next forced end: then none, and the range is due (or
    /// blocked while a flush is in flight) at that end.
    ///
    /// Why in passes: decoding and hashing a pass first, then deduplicating
    /// it in a loop of its own, lets the CPU overlap the dedup window's cache
    /// misses (independent lookups in a row) instead of waiting for each.
    pub fn process_run<'a, T>(
        &mut self,
        records: &'a [T],
        view: impl Fn(&'a T) -> Input<'a>,
        now: Instant,
        rules: &Rules,
    ) -> Result<usize, DlqLimitExceeded> {
        let limit = self.unchecked_records(now, rules).min(PASS).min(records.len());
        let mut pass = Pass::default();
        let mut taken = 0;
        let mut outcome = Ok(());
        while taken < limit {
            let record = view(&records[taken]);
            if self.reaches_forced_end(record.offset) {
                break;
            }
            taken += 1;
            outcome = self.classify_into(record, rules, &mut pass);
            if outcome.is_err() || self.forced_ends.front() == Some(&self.next) {
                break;
            }
        }
        self.settle(&pass, rules.uniques_lg_k);
        outcome.map(|()| taken)
    }

    /// Whether a record at `offset` lies at or past the next forced end, so
    /// that the range must be sealed at that end before the record is
    /// taken. When the offsets jumped over the end (the records before it
    /// were deleted by retention while the partition waited, or the
    /// consumer was reset past them), the missing offsets are skipped:
    /// `next` moves to the end, so the previous owner's range is sealed
    /// with its version instead of waiting for an offset that never comes.
    fn reaches_forced_end(&mut self, offset: i64) -> bool {
        let Some(&end) = self.forced_ends.front() else { return false };
        if offset < end {
            return false;
        }
        if self.next < end {
            tracing::warn!(
                partition = self.partition,
                from = self.next,
                to = end,
                resumed_at = offset,
                "offsets up to a re-emitted range's end are gone (deleted by retention?); sealing the range at its end"
            );
            self.next = end;
        }
        true
    }

    /// How many records may be processed before [`Self::due`] or
    /// [`Self::blocked`] must be asked again (at least 1). A record adds at
    /// most one distinct row, so the row limits cannot be crossed sooner; a
    /// flush due by time is due after the next record; forced boundaries
    /// are checked record by record in [`Self::process_run`].
    fn unchecked_records(&self, now: Instant, rules: &Rules) -> usize {
        let rows = self.aggregate.distinct_rows();
        let mut room = rules.max_rows_per_flush.saturating_sub(rows);
        if self.in_flight.is_some() {
            room = room.min(rules.max_buffered_rows.saturating_sub(rows));
        } else if now >= self.last_flush + rules.flush_interval {
            room = 0;
        }
        room.max(1)
    }

    /// The first half of processing one record, in offset order: range,
    /// classification, dead letters, the dead-letter limit; a record to
    /// count goes into `pass` for [`Self::settle`].
    fn classify_into<'a>(
        &mut self,
        record: Input<'a>,
        rules: &Rules,
        pass: &mut Pass<'a>,
    ) -> Result<(), DlqLimitExceeded> {
        let Input { offset, log_ms, key, payload } = record;
        if offset < self.next {
            return Ok(());
        }
        self.stats.read += 1;
        match classify(Some(payload), &rules.counting) {
            Verdict::Dead(reason, message) => {
                self.stats.dead_lettered += 1;
                self.dead.push(DeadLetter {
                    reason,
                    message,
                    partition: self.partition,
                    offset,
                    key: key.to_vec(),
                    payload: payload.to_vec(),
                });
                self.guard.record(reason == DeadReason::Malformed);
            }
            Verdict::Count(view) => {
                self.guard.record(false);
                let received = rules.counting.trusted_received(view.received_ms, log_ms);
                self.clock_skew_clamped += u64::from(received.clamped);
                pass.push(Pending {
                    offset,
                    key: dedup_key(view.video_id, view.event_id),
                    received_ms: received.received_ms,
                    video_id: view.video_id,
                    salt: view.salt,
                    ts_ms: view.ts_ms,
                    viewer: view.viewer_id,
                });
            }
        }
        self.next = offset + 1;
        if self.guard.exceeded(&rules.dlq) {
            return Err(self.guard.error(self.partition, self.range_start));
        }
        Ok(())
    }

    /// The second half: deduplicates the pass in offset order, then counts
    /// what is new (the aggregate is a sum: its order does not matter).
    fn settle(&mut self, pass: &Pass<'_>, uniques_lg_k: u8) {
        let records = &pass.records[..pass.len];
        let mut duplicate = [false; PASS];
        for (record, duplicate) in records.iter().zip(&mut duplicate) {
            *duplicate = self.dedup.check(record.offset, record.key, record.received_ms);
        }
        for (record, duplicate) in records.iter().zip(duplicate) {
            if duplicate {
                self.stats.duplicates += 1;
            } else {
                self.stats.counted += 1;
                self.aggregate.add(record.video_id, record.salt, minute_bucket(record.ts_ms));
                if let Some(viewer) = record.viewer {
                    self.viewers.add(record.video_id, record.salt, record.ts_ms, viewer, uniques_lg_k);
                }
            }
        }
    }

    /// Whether the open range should be sealed now.
    pub fn due(&self, now: Instant, rules: &Rules) -> bool {
        if self.in_flight.is_some() || self.next == self.range_start {
            return false;
        }
        match self.forced_ends.front() {
            Some(end) => *end == self.next,
            None => {
                self.aggregate.distinct_rows() >= rules.max_rows_per_flush
                    || now >= self.last_flush + rules.flush_interval
            }
        }
    }

    /// Whether sealing now would respect the boundaries of a previous life
    /// (at shutdown: an unfinished forced range is dropped, not sealed early).
    pub fn can_seal_at_shutdown(&self) -> bool {
        self.in_flight.is_none()
            && self.next > self.range_start
            && self.forced_ends.front().is_none_or(|end| *end == self.next)
    }

    /// Seals the open range into a flush job.
    pub fn seal(&mut self, now: Instant, rules: &Rules) -> FlushJob {
        let end = self.next;
        if self.forced_ends.front() == Some(&end) {
            self.forced_ends.pop_front();
        }
        let header = FlushHeader {
            epoch: self.epoch,
            source_partition: u32::try_from(self.partition).unwrap_or(0),
            owner: self.owner,
            start: self.range_start,
            end,
            chunk_index: 0,
            chunk_count: 1,
            dedup_horizon: self.dedup.horizon(end),
            max_received_ms: self.dedup.max_received_ms(),
            stats: std::mem::take(&mut self.stats),
        };
        let rows = self.aggregate.drain_sorted();
        let trending = crate::trending::minute_sketches(rules.trending_lg_max_map_size, &rows).unwrap_or_else(|e| {
            // Unreachable: the size is checked when the service is built. The
            // counts still go out; the window's error bound just misses them.
            tracing::error!(partition = self.partition, error = %e, "no trending sketches for this flush");
            Vec::new()
        });
        let job = FlushJob {
            partition: self.partition,
            header,
            rows,
            uniques: self.viewers.drain_sorted(),
            trending,
            dead: std::mem::take(&mut self.dead),
            links: std::mem::take(&mut self.links),
            sealed_at: now,
        };
        self.range_start = end;
        self.guard.reset();
        self.in_flight = Some(end);
        self.last_flush = now;
        job
    }

    /// Records the trace context of a record of a traced request taken into
    /// the open range: the flush's span links to it.
    pub fn link(&mut self, traceparent: &[u8]) {
        self.links.add_traceparent(traceparent);
    }

    /// Marks the flush ending at `end` as acknowledged: the next one may be
    /// sealed, and `end` awaits its commit.
    pub fn complete(&mut self, end: i64) {
        if self.in_flight == Some(end) {
            self.in_flight = None;
        }
        self.acknowledged = Some(self.acknowledged.map_or(end, |before| before.max(end)));
    }

    /// Records clamped since the last call (for the metric).
    pub fn take_clock_skew_clamped(&mut self) -> u64 {
        std::mem::take(&mut self.clock_skew_clamped)
    }

    /// The acknowledged end the background commit has not confirmed yet.
    pub fn acknowledged(&self) -> Option<i64> {
        self.acknowledged
    }

    /// A commit of `committed` succeeded: an acknowledged end up to it is confirmed.
    pub fn confirm_committed(&mut self, committed: i64) {
        if self.acknowledged.is_some_and(|end| end <= committed) {
            self.acknowledged = None;
        }
    }

    /// The end of the flush in flight, if any.
    pub fn in_flight(&self) -> Option<i64> {
        self.in_flight
    }
}

#[cfg(test)]
mod tests;
