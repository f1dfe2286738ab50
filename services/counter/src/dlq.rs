//! Dead letters: the original record plus its provenance in headers
//! ([`tally_kafka::dlq`]), and the limit past which the consumer halts
//! instead of dead-lettering everything.

use rdkafka::message::OwnedHeaders;
use tally_kafka::dlq::Provenance;

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The payload is not a valid views record.
    Malformed,
    /// The event is older than the allowed lateness.
    Late,
}

impl DeadReason {
    /// Label and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Late => "late",
        }
    }
}

/// A dead letter waiting to be produced with the flush of its range.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Why.
    pub reason: DeadReason,
    /// Human-readable detail.
    pub message: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key.
    pub key: Vec<u8>,
    /// Original payload.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// Provenance headers for this dead letter read from `topic`.
    pub fn headers(&self, topic: &str, service: &str) -> OwnedHeaders {
        let now = tally_model::timestamp::format_rfc3339_ms(tally_model::timestamp::now_ms());
        Provenance {
            kind: self.reason.as_str(),
            message: &self.message,
            topic,
            partition: self.partition,
            offset: self.offset,
            service,
            time: &now,
        }
        .headers()
    }
}

/// The consumer refuses to go on: too many records are malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "dead-letter limit exceeded on partition {partition}: {malformed} malformed of {read} records \
     ({consecutive} in a row) in the range from offset {range_start}; fix the producer or raise \
     counter.dlq-max-ratio / counter.dlq-max-consecutive, then restart (nothing after offset {range_start} was committed)"
)]
pub struct DlqLimitExceeded {
    /// The partition.
    pub partition: i32,
    /// Start of the range being counted.
    pub range_start: i64,
    /// Records read in the range.
    pub read: u32,
    /// Malformed records in the range.
    pub malformed: u32,
    /// Malformed records in a row.
    pub consecutive: u32,
}

/// Tracks malformed records of one range against the limit.
#[derive(Debug, Clone, Default)]
pub struct DlqGuard {
    read: u32,
    malformed: u32,
    consecutive: u32,
}

/// The configured limits.
#[derive(Debug, Clone, Copy)]
pub struct DlqLimits {
    /// Largest malformed share of a range.
    pub max_ratio: f64,
    /// Records before the ratio applies.
    pub min_records: u32,
    /// Largest run of malformed records.
    pub max_consecutive: u32,
}

impl DlqGuard {
    /// Records one record; `malformed` says whether it was.
    pub fn record(&mut self, malformed: bool) {
        self.read += 1;
        if malformed {
            self.malformed += 1;
            self.consecutive += 1;
        } else {
            self.consecutive = 0;
        }
    }

    /// Whether the limit is exceeded.
    pub fn exceeded(&self, limits: &DlqLimits) -> bool {
        self.consecutive >= limits.max_consecutive
            || (self.read >= limits.min_records && f64::from(self.malformed) > limits.max_ratio * f64::from(self.read))
    }

    /// The error describing the excess.
    pub fn error(&self, partition: i32, range_start: i64) -> DlqLimitExceeded {
        DlqLimitExceeded {
            partition,
            range_start,
            read: self.read,
            malformed: self.malformed,
            consecutive: self.consecutive,
        }
    }

    /// Starts a new range.
    pub fn reset(&mut self) {
        self.read = 0;
        self.malformed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DlqLimits = DlqLimits { max_ratio: 0.5, min_records: 10, max_consecutive: 5 };

    #[test]
    fn scattered_poison_is_tolerated() {
        let mut guard = DlqGuard::default();
        for i in 0..1_000 {
            guard.record(i % 10 == 0);
            assert!(!guard.exceeded(&LIMITS));
        }
    }

    #[test]
    fn a_run_of_poison_or_a_high_share_halts() {
        let mut run = DlqGuard::default();
        for _ in 0..5 {
            run.record(true);
        }
        assert!(run.exceeded(&LIMITS));
        let mut share = DlqGuard::default();
        for i in 0..20 {
            share.record(i % 3 != 0);
        }
        assert!(share.exceeded(&LIMITS));
        assert!(share.error(3, 100).to_string().contains("partition 3"));
    }
}
