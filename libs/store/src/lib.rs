//! Count storage: the counter's deltas applied idempotently, with rollups,
//! and the reads the query service needs.
//!
//! Guarantee 3 of the design: replaying the counts topic from any offset
//! changes no stored count. Every minute row `(video_id, minute, salt,
//! source_partition)` keeps the version (`epoch`, `end` offset) of the last
//! delta applied to it; a delta is applied only when its version is newer,
//! and the hour, day and all-time rollups move by exactly the deltas that
//! were applied, in the same transaction. No blind `+n` counter columns.
//!
//! A chunk also names the counter that emitted it (its owner token); the
//! claims on the counts topic say who owns each source partition, and
//! [`fence`] drops the chunks of superseded owners (zombies) in the same
//! transaction, so a counter that wakes up after losing its partitions cannot
//! count a range twice. The current owners are stored with the counts.
//!
//! The batch layer (the reconciler's recount of closed periods) is stored
//! beside it. Every read follows one rule ([`layers`]): batch counts for
//! exactly the reconciled periods, real-time counts for every other minute
//! (before the first period, in gaps between periods, after the last one).
//!
//! # Layout
//!
//! - [`model`]: what is stored and read ([`Granularity`], [`Total`], [`Point`], [`CountsEntry`]).
//! - [`fence`]: admitting the chunks of a batch in log order (both stores).
//! - [`layers`]: which minutes reads take from the batch layer, which from real time (both stores).
//! - [`uniques`]: unique-viewer sketch rows: what an apply writes, which rows a read merges (both stores).
//! - [`trending`]: trending sketch rows per (minute, source partition): what an apply writes (both stores);
//!   [`trending::hours`]: the query side's sums of closed hours, reused while their rows are unchanged.
//! - [`sqlite`]: the embedded store (rusqlite, bundled SQLite, WAL).
//! - [`scylla`]: the ScyllaDB / Cassandra store (`infra/scylla/schema.cql`).
//! - [`any`]: [`AnyStore`], the configured one of the two.
//! - this file: the [`CountStore`] interface and [`StoreError`].

pub mod any;
pub mod fence;
pub mod layers;
pub mod model;
pub mod scylla;
pub mod sqlite;
pub mod trending;
pub mod uniques;

use std::future::Future;

pub use any::AnyStore;
pub use model::{
    ApplyOutcome, CountsEntry, DayUniques, Granularity, PeriodSummary, PeriodUniques, Point, Total, UniquesRead,
};
pub use scylla::{ScyllaConfig, ScyllaStore};
pub use sqlite::{SqliteStore, Synchronous};
use tally_model::counts::Owner;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the operation; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (never retried).
    #[error("invalid store request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The one range rule of [`CountStore::series`]: `from` strictly before `to`.
pub(crate) fn check_range(from_ms: i64, to_ms: i64) -> Result<(), StoreError> {
    if from_ms >= to_ms {
        return Err(StoreError::Invalid("`from` must be before `to`".into()));
    }
    Ok(())
}

/// What every count store offers. Implementations must make [`CountStore::apply`]
/// idempotent under replay (see the crate documentation).
pub trait CountStore: Send + Sync + 'static {
    /// Applies counts records in log order, in one transaction where the
    /// store has them: claims move the stored owners, chunks of a superseded
    /// owner are fenced, and the deltas of the others are applied unless their
    /// row already has their version. Returns what happened to the deltas.
    fn apply(&self, entries: Vec<CountsEntry>) -> impl Future<Output = Result<ApplyOutcome, StoreError>> + Send;

    /// The stored owner of every source partition that has one.
    fn owners(&self) -> impl Future<Output = Result<Vec<(u32, Owner)>, StoreError>> + Send;

    /// All-time totals of `videos` (0 for a video nobody watched): batch
    /// counts of the reconciled periods plus real-time counts of every other minute.
    fn totals(&self, videos: Vec<String>) -> impl Future<Output = Result<Vec<Total>, StoreError>> + Send;

    /// Views of `video` per `step` bucket, from the bucket holding `from_ms`
    /// through the one holding the last millisecond before `to_ms`, by the
    /// same rule as totals; buckets without views are omitted.
    fn series(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
        step: Granularity,
    ) -> impl Future<Output = Result<Vec<Point>, StoreError>> + Send;

    /// Real-time views per `(video, minute)` in `[from_ms, to_ms)`, salts and
    /// source partitions merged.
    fn realtime_minutes(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64, i64)>, StoreError>> + Send;

    /// Replaces the batch counts of one period (idempotent: reconciling a
    /// period again leaves the same state) and records its summary. Every
    /// minute must lie in the period, and the period must be new and overlap
    /// no reconciled one, or be exactly one (a rerun): [`StoreError::Invalid`]
    /// otherwise. Moves the batch generation ([`Total::batch_generation`]).
    /// With `uniques` (the period must then be one whole UTC hour), also
    /// replaces the exact distinct viewers of the hour, and of its day when
    /// given, and marks them counted ([`UniquesRead::counted_parts`]).
    fn replace_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        uniques: Option<PeriodUniques>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Unique viewers of `video` in the hours from the one holding `from_ms`
    /// through the one holding the last millisecond before `to_ms`: the union
    /// of its sketches over every salt and source partition ([`uniques`]).
    fn uniques(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<UniquesRead, StoreError>> + Send;

    /// The sum of the trending sketches of every source partition over the
    /// minutes from the one holding `from_ms` through the one holding the
    /// last millisecond before `to_ms` ([`trending`]).
    fn trending(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<tally_model::trending::Merged, StoreError>> + Send;

    /// The key and version of every trending sketch row over the same
    /// minutes as [`CountStore::trending`], without their sketches: what the
    /// query service compares to know which cached hour sums are still
    /// current ([`trending::hours`]). Ordered by minute, then source partition.
    fn trending_versions(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<trending::RowVersion>, StoreError>> + Send;

    /// Every trending sketch row over the same minutes as
    /// [`CountStore::trending`], with its key and version, so that a sum of
    /// them carries the versions it was built from. Ordered as [`CountStore::trending_versions`].
    fn trending_rows(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<trending::TrendingRow>, StoreError>> + Send;

    /// Views of each of `videos` over the same minutes as [`CountStore::trending`],
    /// by the rule of totals and series (batch counts for the reconciled
    /// periods, real-time counts for every other minute): what a minute
    /// series of the range sums to.
    fn window_views(
        &self,
        videos: Vec<String>,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// The reconciled periods, oldest first.
    fn periods(&self) -> impl Future<Output = Result<Vec<PeriodSummary>, StoreError>> + Send;

    /// Cheap reachability check for `/readyz` and circuit breakers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
