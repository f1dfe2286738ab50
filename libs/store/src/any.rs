//! The store a process is configured with, behind one type, so services stay
//! generic over [`CountStore`] while the binary picks at run time.

use tally_model::counts::Owner;

use crate::model::{ApplyOutcome, CountsEntry, Granularity, PeriodSummary, PeriodUniques, Point, Total, UniquesRead};
use crate::trending::{RowVersion, TrendingRow};
use crate::{CountStore, ScyllaStore, SqliteStore, StoreError};

/// The embedded store or the ScyllaDB store. Cheap to clone.
#[derive(Clone)]
pub enum AnyStore {
    /// SQLite, in process.
    Sqlite(SqliteStore),
    /// A ScyllaDB / Cassandra cluster.
    Scylla(ScyllaStore),
}

impl AnyStore {
    /// Which backend, for logs and start-up lines.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Scylla(_) => "scylla",
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call.await,
            AnyStore::Scylla($store) => $call.await,
        }
    };
}

impl CountStore for AnyStore {
    async fn apply(&self, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
        dispatch!(self, s => s.apply(entries))
    }

    async fn owners(&self) -> Result<Vec<(u32, Owner)>, StoreError> {
        dispatch!(self, s => s.owners())
    }

    async fn totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        dispatch!(self, s => s.totals(videos))
    }

    async fn series(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
        step: Granularity,
    ) -> Result<Vec<Point>, StoreError> {
        dispatch!(self, s => s.series(video, from_ms, to_ms, step))
    }

    async fn realtime_minutes(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        dispatch!(self, s => s.realtime_minutes(from_ms, to_ms))
    }

    async fn replace_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        uniques: Option<PeriodUniques>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.replace_batch(period, minutes, uniques))
    }

    async fn uniques(&self, video: String, from_ms: i64, to_ms: i64) -> Result<UniquesRead, StoreError> {
        dispatch!(self, s => s.uniques(video, from_ms, to_ms))
    }

    async fn trending(&self, from_ms: i64, to_ms: i64) -> Result<tally_model::trending::Merged, StoreError> {
        dispatch!(self, s => s.trending(from_ms, to_ms))
    }

    async fn trending_versions(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RowVersion>, StoreError> {
        dispatch!(self, s => s.trending_versions(from_ms, to_ms))
    }

    async fn trending_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<TrendingRow>, StoreError> {
        dispatch!(self, s => s.trending_rows(from_ms, to_ms))
    }

    async fn window_views(
        &self,
        videos: Vec<String>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.window_views(videos, from_ms, to_ms))
    }

    async fn periods(&self) -> Result<Vec<PeriodSummary>, StoreError> {
        dispatch!(self, s => s.periods())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
}
