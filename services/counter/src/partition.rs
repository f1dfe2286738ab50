//! One owned partition: its open range, dedup window, aggregate, dead letters
//! and the boundaries a previous owner already emitted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tally_model::counts::{FlushHeader, FlushStats};
use tally_model::timestamp::minute_bucket;
use tally_model::wire::{self, WireView};
use tally_model::Salt;

use crate::aggregate::Aggregate;
use crate::dedup::{dedup_key, Dedup};
use crate::dlq::{DeadLetter, DeadReason, DlqGuard, DlqLimitExceeded, DlqLimits};

/// The rules every partition applies.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Events older than this (receive time minus event time) are late.
    pub allowed_lateness_ms: i64,
    /// Dead-letter limits.
    pub dlq: DlqLimits,
    /// Flush early above this many distinct rows.
    pub max_rows_per_flush: usize,
    /// Pause above this many rows while a flush is in flight.
    pub max_buffered_rows: usize,
    /// Flush at least this often.
    pub flush_interval: Duration,
}

/// What the counter does with a decoded record, before dedup.
pub enum Verdict<'a> {
    /// Count it (if not a duplicate).
    Count(WireView<'a>),
    /// Dead-letter it.
    Dead(DeadReason, String),
}

/// Classifies a payload; recovery replays the same function, so both lives
/// of a partition decide alike.
pub fn classify(payload: Option<&[u8]>, allowed_lateness_ms: i64) -> Verdict<'_> {
    let view = match wire::decode(payload.unwrap_or_default()) {
        Ok(view) => view,
        Err(e) => return Verdict::Dead(DeadReason::Malformed, e.to_string()),
    };
    let lateness = view.received_ms.saturating_sub(view.ts_ms);
    if lateness > allowed_lateness_ms {
        return Verdict::Dead(
            DeadReason::Late,
            format!("event is {lateness} ms older than its receive time; allowed lateness is {allowed_lateness_ms} ms"),
        );
    }
    Verdict::Count(view)
}

/// A sealed range, ready to emit.
#[derive(Debug)]
pub struct FlushJob {
    /// Source partition.
    pub partition: i32,
    /// The range and its version (chunk fields filled in by the emitter).
    pub header: FlushHeader,
    /// Deltas, sorted.
    pub rows: Vec<(Box<str>, Salt, i64, u32)>,
    /// Dead letters of the range.
    pub dead: Vec<DeadLetter>,
    /// When it was sealed.
    pub sealed_at: Instant,
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
    stats: FlushStats,
    dead: Vec<DeadLetter>,
    guard: DlqGuard,
    forced_ends: VecDeque<i64>,
    in_flight: Option<i64>,
    last_flush: Instant,
    /// Receive time of the last record processed.
    pub last_received_ms: i64,
    /// Whether the worker paused it.
    pub paused: bool,
    /// Paused, and no longer blocked: waiting for the consumer thread to
    /// resume it and seek back to `next`.
    pub resume_pending: bool,
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
            stats: FlushStats::default(),
            dead: Vec::new(),
            guard: DlqGuard::default(),
            forced_ends: forced_ends.into(),
            in_flight: None,
            last_flush: Instant::now(),
            last_received_ms: 0,
            paused: false,
            resume_pending: false,
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

    /// Processes the record at `offset`. Records before `next` (redelivered
    /// after a seek) are ignored.
    pub fn process(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        rules: &Rules,
    ) -> Result<(), DlqLimitExceeded> {
        if offset < self.next {
            return Ok(());
        }
        self.stats.read += 1;
        match classify(payload, rules.allowed_lateness_ms) {
            Verdict::Dead(reason, message) => {
                self.stats.dead_lettered += 1;
                self.dead.push(DeadLetter {
                    reason,
                    message,
                    partition: self.partition,
                    offset,
                    key: key.unwrap_or_default().to_vec(),
                    payload: payload.unwrap_or_default().to_vec(),
                });
                self.guard.record(reason == DeadReason::Malformed);
            }
            Verdict::Count(view) => {
                self.guard.record(false);
                self.last_received_ms = view.received_ms;
                if self.dedup.check(offset, dedup_key(view.video_id, view.event_id), view.received_ms) {
                    self.stats.duplicates += 1;
                } else {
                    self.stats.counted += 1;
                    self.aggregate.add(view.video_id, view.salt, minute_bucket(view.ts_ms));
                }
            }
        }
        self.next = offset + 1;
        if self.guard.exceeded(&rules.dlq) {
            return Err(self.guard.error(self.partition, self.range_start));
        }
        Ok(())
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
    pub fn seal(&mut self, now: Instant) -> FlushJob {
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
        let job = FlushJob {
            partition: self.partition,
            header,
            rows: self.aggregate.drain_sorted(),
            dead: std::mem::take(&mut self.dead),
            sealed_at: now,
        };
        self.range_start = end;
        self.guard.reset();
        self.in_flight = Some(end);
        self.last_flush = now;
        job
    }

    /// Marks the flush ending at `end` as acknowledged and committed.
    pub fn complete(&mut self, end: i64) {
        if self.in_flight == Some(end) {
            self.in_flight = None;
        }
    }

    /// The end of the flush in flight, if any.
    pub fn in_flight(&self) -> Option<i64> {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_model::{EventId, VideoId, ViewEvent};

    use super::*;

    fn rules() -> Rules {
        Rules {
            allowed_lateness_ms: 3_600_000,
            dlq: DlqLimits { max_ratio: 0.5, min_records: 10, max_consecutive: 3 },
            max_rows_per_flush: 1_000,
            max_buffered_rows: 2,
            flush_interval: Duration::from_secs(1),
        }
    }

    fn record(video: &str, id: &str, ts_ms: i64, received_ms: i64) -> Vec<u8> {
        let event = ViewEvent {
            video_id: VideoId::parse(video).unwrap(),
            ts_ms,
            event_id: EventId::parse(id).unwrap(),
            viewer_id: None,
            attributes: None::<Arc<str>>,
            received_ms,
        };
        let mut out = Vec::new();
        wire::encode(&event, Salt(0), &mut out);
        out
    }

    #[test]
    fn a_range_counts_dedups_and_dead_letters_then_seals() {
        let t = 1_795_341_600_000;
        let mut p = PartitionState::new(0, 0, 1, 10, Dedup::new(600_000, 1_000), vec![]);
        p.process(10, None, Some(&record("v", "e1", t, t)), &rules()).unwrap();
        p.process(11, None, Some(&record("v", "e1", t, t + 1_000)), &rules()).unwrap();
        p.process(12, None, Some(b"garbage"), &rules()).unwrap();
        p.process(13, None, Some(&record("v", "e2", t - 7_200_000, t)), &rules()).unwrap();
        p.process(14, None, Some(&record("v", "e3", t + 60_000, t + 60_000)), &rules()).unwrap();
        p.process(12, None, Some(b"redelivered"), &rules()).unwrap();
        let job = p.seal(Instant::now());
        assert_eq!((job.header.start, job.header.end), (10, 15));
        assert_eq!(job.header.stats, FlushStats { read: 5, counted: 2, duplicates: 1, dead_lettered: 2 });
        let rows: Vec<(i64, u32)> = job.rows.iter().map(|r| (r.2, r.3)).collect();
        assert_eq!(rows, vec![(t, 1), (t + 60_000, 1)]);
        let reasons: Vec<(&str, i64)> = job.dead.iter().map(|d| (d.reason.as_str(), d.offset)).collect();
        assert_eq!(reasons, vec![("malformed", 12), ("late", 13)]);
        assert_eq!(job.header.dedup_horizon, 10);
        assert!(!p.due(Instant::now() + Duration::from_secs(5), &rules()), "one flush in flight at a time");
        p.complete(15);
        assert_eq!(p.in_flight(), None);
    }

    #[test]
    fn a_forced_boundary_is_sealed_exactly_and_blocks_until_possible() {
        let t = 1_795_341_600_000;
        let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![2, 4]);
        p.process(0, None, Some(&record("v", "a", t, t)), &rules()).unwrap();
        assert!(!p.due(Instant::now() + Duration::from_secs(60), &rules()), "timers do not cut a forced range");
        p.process(1, None, Some(&record("v", "b", t, t)), &rules()).unwrap();
        assert!(p.due(Instant::now(), &rules()));
        assert_eq!(p.seal(Instant::now()).header.end, 2);
        p.process(2, None, Some(&record("v", "c", t, t)), &rules()).unwrap();
        p.process(3, None, Some(&record("v", "d", t, t)), &rules()).unwrap();
        assert!(p.blocked(&rules()), "at the next boundary while the first flush is in flight");
        p.complete(2);
        assert!(!p.blocked(&rules()));
        assert_eq!(p.seal(Instant::now()).header.end, 4);
    }

    #[test]
    fn a_run_of_poison_trips_the_limit() {
        let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![]);
        p.process(0, None, Some(b"x"), &rules()).unwrap();
        p.process(1, None, Some(b"x"), &rules()).unwrap();
        let err = p.process(2, None, Some(b"x"), &rules()).unwrap_err();
        assert_eq!(err.consecutive, 3);
    }
}
