//! Values stored and read.

use serde::Serialize;
use tally_model::counts::{CountsRecord, FlushChunk};

/// Bucket sizes of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Granularity {
    /// Bucket length in milliseconds.
    pub const fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    /// Its code in both stores' tables (`granularity` columns): 0 minute,
    /// 1 hour, 2 day (the all-time rollup is 3).
    pub const fn code(self) -> i8 {
        match self {
            Self::Minute => 0,
            Self::Hour => 1,
            Self::Day => 2,
        }
    }

    /// Start of the bucket holding `ts_ms`.
    pub fn bucket(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.millis()) * self.millis()
    }

    /// Parses `minute`, `hour` or `day`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// A video's all-time total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Total {
    /// The video.
    pub video_id: String,
    /// Views counted.
    pub views: i64,
    /// Everything received by the gateway up to this time (epoch ms) is
    /// included, as far as the counter has flushed it; 0 when nothing was applied yet.
    pub as_of_ms: i64,
    /// The part of `views` recounted by the batch layer: the views of the
    /// reconciled periods. The rest (`views - batch_views`) is real time: every
    /// minute outside a reconciled period, before the first one included.
    pub batch_views: i64,
    /// End of the latest period the batch layer reconciled; `None` before the first.
    pub exact_through_ms: Option<i64>,
    /// Generation of the batch layer the total was read at: 0 before the
    /// first reconcile, greater after every later one. Two reads of one video
    /// at one generation differ only by real-time counts, which only grow, so
    /// `(batch_generation, views)` orders two reads of a video by store state
    /// (what the cache compares).
    pub batch_generation: i64,
}

/// What the reconciler records for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodSummary {
    /// Period start, epoch ms.
    pub start_ms: i64,
    /// Period end (exclusive), epoch ms.
    pub end_ms: i64,
    /// Views the batch recount found.
    pub batch_views: i64,
    /// Views the real-time path had counted.
    pub realtime_views: i64,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Bucket start, epoch ms.
    pub bucket_ms: i64,
    /// Views in the bucket.
    pub views: i64,
}

/// Unique viewers of a video over whole hours.
#[derive(Debug, Clone, PartialEq)]
pub struct UniquesRead {
    /// First hour read, epoch ms.
    pub from_ms: i64,
    /// End of the last hour read (exclusive), epoch ms.
    pub to_ms: i64,
    /// The estimate and bounds of the union of the real-time sketches.
    pub estimate: tally_model::uniques::UniquesEstimate,
    /// Stored sketches merged.
    pub sketches: usize,
    /// When the batch recount has counted every part of the range (the
    /// whole days and edge hours of [`crate::uniques::read_plan`]): the
    /// video's exact distinct viewers in each part, in order.
    pub counted_parts: Option<Vec<u64>>,
    /// End of the latest reconciled period, as for totals.
    pub exact_through_ms: Option<i64>,
}

impl UniquesRead {
    /// The answer: the sketches' estimate narrowed by the batch counts of
    /// the parts when there are some (the count itself for one part).
    pub fn answer(&self) -> tally_model::uniques::UniquesEstimate {
        match &self.counted_parts {
            Some(parts) => self.estimate.within_parts(parts),
            None => self.estimate,
        }
    }
}

/// The batch recount's exact distinct viewers, recorded with one reconciled
/// period (one whole UTC hour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodUniques {
    /// Distinct viewers in the hour, per video that had any.
    pub hour: Vec<(String, u64)>,
    /// When every hour of the period's UTC day is reconciled with this one:
    /// the day's distinct viewers.
    pub day: Option<DayUniques>,
}

/// Exact distinct viewers of one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayUniques {
    /// Start of the day, epoch ms.
    pub day_ms: i64,
    /// Distinct viewers in the day, per video that had any.
    pub viewers: Vec<(String, u64)>,
}

/// The effect of one apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// Deltas applied.
    pub applied: u64,
    /// Deltas ignored because their row already had that version or newer,
    /// or because their chunk of a superseded owner came before its
    /// successor's claim (a replay: decided when first read, no zombie).
    pub stale: u64,
    /// Deltas dropped because their chunk's owner had been superseded before
    /// the chunk was emitted (its successor's claim came first: a zombie counter).
    pub fenced: u64,
    /// Chunks dropped for the same reason.
    pub fenced_chunks: u64,
    /// Unique-viewer sketches merged into their hour rows.
    pub sketches_applied: u64,
    /// Sketches ignored because their hour row already had their version or newer.
    pub sketches_stale: u64,
    /// Unique-viewer hour rows written (each row once per batch).
    pub sketch_hour_rows_written: u64,
    /// Unique-viewer day rows written (each row once per batch).
    pub sketch_day_rows_written: u64,
    /// Trending sketches added to their minute rows.
    pub trending_applied: u64,
    /// Trending sketches ignored because their minute row already had their version or newer.
    pub trending_stale: u64,
}

impl ApplyOutcome {
    /// Both outcomes added up.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            applied: self.applied + other.applied,
            stale: self.stale + other.stale,
            fenced: self.fenced + other.fenced,
            fenced_chunks: self.fenced_chunks + other.fenced_chunks,
            sketches_applied: self.sketches_applied + other.sketches_applied,
            sketches_stale: self.sketches_stale + other.sketches_stale,
            sketch_hour_rows_written: self.sketch_hour_rows_written + other.sketch_hour_rows_written,
            sketch_day_rows_written: self.sketch_day_rows_written + other.sketch_day_rows_written,
            trending_applied: self.trending_applied + other.trending_applied,
            trending_stale: self.trending_stale + other.trending_stale,
        }
    }
}

/// A counts record and the offset it was read at in its counts partition
/// (the position that orders claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountsEntry {
    /// Offset in the counts partition.
    pub offset: i64,
    /// The record.
    pub record: CountsRecord,
}

impl CountsEntry {
    /// A chunk whose position does not matter (no claim in its batch).
    pub fn chunk(chunk: FlushChunk) -> Self {
        Self { offset: -1, record: CountsRecord::Chunk(chunk) }
    }
}
