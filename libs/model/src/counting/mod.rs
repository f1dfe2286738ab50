//! The counting rule: which records of `tally.views` are views. Written
//! once, applied by the real-time counter (`tally-counter`, record by record
//! as it consumes a partition) and by the batch recount (`tally-reconciler`,
//! over the archive of the same partition), so that the two agree exactly
//! when nothing failed.
//!
//! Per partition, in offset order, a record is
//!
//! 1. **late** when the gateway received it more than the allowed lateness
//!    after its event time: the counter dead-letters it (it is not counted
//!    and does not enter the dedup window);
//! 2. else a **duplicate** when the dedup window holds an earlier record of
//!    the same `(video_id, event_id)` received at most the window before or
//!    after it ([`dedup`]);
//! 3. else **counted**, in the minute of its event time.
//!
//! The receive time the window uses is the gateway's, unless it runs more
//! than `max_clock_skew_ms` ahead of the broker's timestamp of the record
//! (the log-append time: `tally.views` is created with
//! `message.timestamp.type=LogAppendTime`); then it is the broker's time
//! plus that skew ([`CountingRule::trusted_received`]). Without this, one
//! gateway whose clock runs 20 minutes ahead would push the window's newest
//! time 20 minutes ahead and trim every record of the partitions it feeds.
//! A clock running behind needs no guard here: the window is trimmed
//! against its newest time only. Lateness is judged by the gateway's own
//! receive time, as before: a dead letter replayed later keeps its lateness.
//!
//! The rule is a function of the partition's records alone (no clock, no
//! process state), so a replay decides exactly as the first pass did.
//!
//! # Layout
//!
//! - this file: [`CountingRule`], and [`PartitionFold`], the rule applied record by record.
//! - [`dedup`]: the dedup window.

pub mod dedup;

pub use dedup::{dedup_key, Dedup, BYTES_PER_ENTRY};

/// The parameters of the rule; the counter and the recount must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountingRule {
    /// Records received more than this after their event time are late.
    pub allowed_lateness_ms: i64,
    /// Resends received within this time of an earlier copy still in the window are duplicates.
    pub dedup_window_ms: i64,
    /// Most records one partition's window holds (a memory bound that, at high
    /// rates, shortens the window below `dedup_window_ms`).
    pub dedup_max_entries: usize,
    /// How far ahead of the broker's timestamp of a record its gateway receive
    /// time may be before the window trusts the broker's time instead.
    pub max_clock_skew_ms: i64,
}

impl CountingRule {
    /// How late a record received at `received_ms` with event time `ts_ms`
    /// is, when that is more than the allowed lateness.
    pub fn lateness(&self, received_ms: i64, ts_ms: i64) -> Option<i64> {
        let lateness = received_ms.saturating_sub(ts_ms);
        (lateness > self.allowed_lateness_ms).then_some(lateness)
    }

    /// The receive time the dedup window uses for a record the gateway
    /// received at `received_ms` and the broker logged at `log_ms` (when the
    /// record has a timestamp): never more than the allowed skew ahead of
    /// the broker's time.
    pub fn trusted_received(&self, received_ms: i64, log_ms: Option<i64>) -> Trusted {
        match log_ms.map(|log| log.saturating_add(self.max_clock_skew_ms)) {
            Some(limit) if received_ms > limit => Trusted { received_ms: limit, clamped: true },
            _ => Trusted { received_ms, clamped: false },
        }
    }

    /// An empty dedup window of this rule.
    pub fn window(&self) -> Dedup {
        Dedup::new(self.dedup_window_ms, self.dedup_max_entries)
    }
}

/// A record's receive time as the dedup window uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trusted {
    /// The time, epoch ms.
    pub received_ms: i64,
    /// Whether the gateway's time ran too far ahead and the broker's was used.
    pub clamped: bool,
}

/// What the rule decides about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A view.
    Counted,
    /// A resend of a view still in the window.
    Duplicate,
    /// Received too long after its event time (the counter dead-letters it).
    Late,
}

/// One record as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed<'a> {
    /// Its offset in its partition.
    pub offset: i64,
    /// The video.
    pub video_id: &'a str,
    /// The idempotency key.
    pub event_id: &'a str,
    /// Event time, epoch ms.
    pub ts_ms: i64,
    /// Gateway receive time, epoch ms.
    pub received_ms: i64,
    /// The broker's timestamp of the record, epoch ms, when known.
    pub log_ms: Option<i64>,
}

/// The rule applied to one partition's records, one at a time, in offset
/// order. (The counter applies the same steps in passes of a few records,
/// for speed; its tests check both decide alike.)
#[derive(Debug)]
pub struct PartitionFold {
    rule: CountingRule,
    window: Dedup,
}

impl PartitionFold {
    /// A fold starting with an empty window.
    pub fn new(rule: CountingRule) -> Self {
        Self { rule, window: rule.window() }
    }

    /// Decides about the next record of the partition.
    pub fn decide(&mut self, record: &Observed<'_>) -> Decision {
        if self.rule.lateness(record.received_ms, record.ts_ms).is_some() {
            return Decision::Late;
        }
        let key = dedup_key(record.video_id, record.event_id);
        let received = self.rule.trusted_received(record.received_ms, record.log_ms);
        if self.window.check(record.offset, key, received.received_ms) {
            Decision::Duplicate
        } else {
            Decision::Counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rule() -> CountingRule {
        CountingRule {
            allowed_lateness_ms: 60 * MIN,
            dedup_window_ms: 10 * MIN,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: MIN,
        }
    }

    fn observed(offset: i64, event_id: &str, ts_ms: i64, received_ms: i64) -> Observed<'_> {
        Observed { offset, video_id: "v", event_id, ts_ms, received_ms, log_ms: Some(received_ms) }
    }

    #[test]
    fn late_records_are_decided_before_dedup_and_stay_out_of_the_window() {
        let mut fold = PartitionFold::new(rule());
        assert_eq!(fold.decide(&observed(0, "e1", 0, 61 * MIN)), Decision::Late);
        assert_eq!(
            fold.decide(&observed(1, "e1", 30 * MIN, 61 * MIN)),
            Decision::Counted,
            "the late copy left no trace"
        );
        assert_eq!(fold.decide(&observed(2, "e1", 30 * MIN, 65 * MIN)), Decision::Duplicate);
        assert_eq!(fold.decide(&observed(3, "e1", 30 * MIN, 80 * MIN)), Decision::Counted, "past the window");
    }

    #[test]
    fn a_receive_time_ahead_of_the_broker_by_more_than_the_skew_is_clamped() {
        let rule = rule();
        let t = 100 * MIN;
        assert_eq!(rule.trusted_received(t + MIN, Some(t)), Trusted { received_ms: t + MIN, clamped: false });
        assert_eq!(rule.trusted_received(t + 20 * MIN, Some(t)), Trusted { received_ms: t + MIN, clamped: true });
        assert_eq!(rule.trusted_received(t - 20 * MIN, Some(t)), Trusted { received_ms: t - 20 * MIN, clamped: false });
        assert_eq!(rule.trusted_received(t + 20 * MIN, None), Trusted { received_ms: t + 20 * MIN, clamped: false });

        // One gateway 20 minutes ahead does not trim the window of the others.
        let mut fold = PartitionFold::new(rule);
        let at = |offset, event_id, received_ms, log_ms| Observed {
            offset,
            video_id: "v",
            event_id,
            ts_ms: t,
            received_ms,
            log_ms: Some(log_ms),
        };
        assert_eq!(fold.decide(&at(0, "e1", t, t)), Decision::Counted);
        assert_eq!(fold.decide(&at(1, "x", t + 20 * MIN, t + 1_000)), Decision::Counted);
        assert_eq!(fold.decide(&at(2, "e1", t + 2 * MIN, t + 2 * MIN)), Decision::Duplicate);
    }
}
