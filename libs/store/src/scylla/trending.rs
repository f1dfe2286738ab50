//! Trending sketch rows in `trending_minutes`: one partition per hour, rows
//! per (minute, source partition). The store reads the rows a batch's
//! updates touch, lets [`crate::trending::plan`] decide, and writes each
//! changed row with the flush version as its cell timestamp, so a stale
//! writer's sum loses to a newer one. Window reads go hour partition by
//! hour partition: sums of the sketches, or the rows with their versions
//! (versions only, for the query service's hour sums).

use std::collections::HashMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tally_model::trending::Merged;

use super::{unavailable, ScyllaStore};
use crate::model::{ApplyOutcome, Granularity};
use crate::trending::{self, RowVersion, TrendingRow, TrendingUpdate};
use crate::StoreError;

/// A stored row: its sketch and version.
type StoredRow = (Vec<u8>, i64);

/// The statements of `trending_minutes`, prepared once.
pub(super) struct TrendingStatements {
    read_row: PreparedStatement,
    write_row: PreparedStatement,
    read_range: PreparedStatement,
    read_range_versions: PreparedStatement,
    read_range_rows: PreparedStatement,
}

impl TrendingStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| async move {
            let mut statement = session.prepare(cql).await.map_err(unavailable)?;
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(Self {
            read_row: prepare(format!(
                "SELECT sketch, version FROM {ks}.trending_minutes WHERE hour = ? AND minute = ? AND source_partition = ?"
            ))
            .await?,
            write_row: prepare(format!(
                "INSERT INTO {ks}.trending_minutes (hour, minute, source_partition, sketch, version) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            read_range: prepare(format!(
                "SELECT sketch FROM {ks}.trending_minutes WHERE hour = ? AND minute >= ? AND minute < ?"
            ))
            .await?,
            read_range_versions: prepare(format!(
                "SELECT minute, source_partition, version FROM {ks}.trending_minutes \
                 WHERE hour = ? AND minute >= ? AND minute < ?"
            ))
            .await?,
            read_range_rows: prepare(format!(
                "SELECT minute, source_partition, version, sketch FROM {ks}.trending_minutes \
                 WHERE hour = ? AND minute >= ? AND minute < ?"
            ))
            .await?,
        })
    }
}

impl ScyllaStore {
    /// Adds the trending sketches of the admitted chunks (in log order).
    pub(super) async fn apply_trending(&self, updates: Vec<TrendingUpdate>) -> Result<ApplyOutcome, StoreError> {
        if updates.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let statements = &self.inner.trending;
        let concurrency = self.inner.config.concurrency.max(1);
        let rows: Vec<((i64, i32), Option<StoredRow>)> = stream::iter(trending::keys(&updates))
            .map(|(minute, partition)| async move {
                let hour = Granularity::Hour.bucket(minute);
                let rows = self.select::<(Vec<u8>, i64)>(&statements.read_row, (hour, minute, partition)).await?;
                Ok::<_, StoreError>(((minute, partition), rows.into_iter().next()))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let current: HashMap<(i64, i32), (Vec<u8>, i64)> =
            rows.into_iter().filter_map(|(key, row)| row.map(|row| (key, row))).collect();
        let plan = trending::plan(&updates, current)?;
        let writes = stream::iter(plan.writes).map(|w| {
            let hour = Granularity::Hour.bucket(w.minute);
            (hour, w.minute, w.source_partition, w.sketch, w.version, w.version)
        });
        writes
            .map(|values| async move { self.run(&statements.write_row, values).await })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(ApplyOutcome { trending_applied: plan.applied, trending_stale: plan.stale, ..ApplyOutcome::default() })
    }

    /// The sum of every row in `[from, to)` (on minutes).
    pub(super) async fn read_trending(&self, from: i64, to: i64) -> Result<Merged, StoreError> {
        let rows = self.select_hours::<(Vec<u8>,)>(&self.inner.trending.read_range, from, to).await?;
        let mut merged = Merged::default();
        for (sketch,) in &rows {
            merged.add(sketch).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))?;
        }
        Ok(merged)
    }

    /// The key and version of every row in `[from, to)` (on minutes), without
    /// sketches: the blobs stay on the nodes.
    pub(super) async fn read_trending_versions(&self, from: i64, to: i64) -> Result<Vec<RowVersion>, StoreError> {
        let statement = &self.inner.trending.read_range_versions;
        let rows = self.select_hours::<(i64, i32, i64)>(statement, from, to).await?;
        Ok(rows
            .into_iter()
            .map(|(minute, source_partition, version)| RowVersion { minute, source_partition, version })
            .collect())
    }

    /// Every row in `[from, to)` (on minutes), sketch and version.
    pub(super) async fn read_trending_rows(&self, from: i64, to: i64) -> Result<Vec<TrendingRow>, StoreError> {
        let statement = &self.inner.trending.read_range_rows;
        let rows = self.select_hours::<(i64, i32, i64, Vec<u8>)>(statement, from, to).await?;
        Ok(rows
            .into_iter()
            .map(|(minute, source_partition, version, sketch)| TrendingRow {
                minute,
                source_partition,
                version,
                sketch,
            })
            .collect())
    }

    /// `statement` (bound to `hour, from, to`) run on every hour partition
    /// `[from, to)` touches; rows in hour order, each hour in clustering order
    /// (minute, then source partition).
    async fn select_hours<R>(&self, statement: &PreparedStatement, from: i64, to: i64) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata> + Send + 'static,
    {
        let hours: Vec<i64> =
            (Granularity::Hour.bucket(from)..to).step_by(Granularity::Hour.millis() as usize).collect();
        let concurrency = self.inner.config.concurrency.max(1);
        let parts: Vec<Vec<R>> = stream::iter(hours)
            .map(|hour| self.select::<R>(statement, (hour, from, to)))
            .buffered(concurrency)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }
}
