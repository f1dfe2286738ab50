//! Trending sketch rows in the embedded store: applied in the batch's
//! transaction ([`crate::trending`] decides what to write), summed over a
//! window in one read transaction, or read with their versions for the
//! query service's hour sums; and the exact views of a window.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tally_model::counts::FlushChunk;
use tally_model::trending::Merged;

use super::{batch_rows, realtime_rows, reconciled, unavailable};
use crate::layers;
use crate::model::{ApplyOutcome, Granularity};
use crate::trending::{self, RowVersion, TrendingRow};
use crate::StoreError;

/// One row per `(minute, source partition)` with its version.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trending_minutes (
    minute INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (minute, source_partition)
) WITHOUT ROWID;
";

/// Adds the trending sketches of `chunks` (admitted, in log order).
pub(super) fn apply(tx: &Transaction<'_>, chunks: &[FlushChunk]) -> Result<ApplyOutcome, StoreError> {
    let updates = trending::updates(chunks);
    if updates.is_empty() {
        return Ok(ApplyOutcome::default());
    }
    let mut read = tx
        .prepare_cached("SELECT sketch, version FROM trending_minutes WHERE minute = ?1 AND source_partition = ?2")
        .map_err(unavailable)?;
    let mut current = HashMap::new();
    for (minute, partition) in trending::keys(&updates) {
        let row: Option<(Vec<u8>, i64)> = read
            .query_row(params![minute, partition], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(unavailable)?;
        if let Some(row) = row {
            current.insert((minute, partition), row);
        }
    }
    let plan = trending::plan(&updates, current)?;
    let mut write = tx
        .prepare_cached(
            "INSERT INTO trending_minutes (minute, source_partition, sketch, version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (minute, source_partition) DO UPDATE SET sketch = excluded.sketch, version = excluded.version",
        )
        .map_err(unavailable)?;
    for w in &plan.writes {
        write.execute(params![w.minute, w.source_partition, w.sketch, w.version]).map_err(unavailable)?;
    }
    Ok(ApplyOutcome { trending_applied: plan.applied, trending_stale: plan.stale, ..ApplyOutcome::default() })
}

/// The sum of every row in `[from, to)` (on minutes).
pub(super) fn read(connection: &mut Connection, from: i64, to: i64) -> Result<Merged, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let mut query = tx
        .prepare_cached("SELECT sketch FROM trending_minutes WHERE minute >= ?1 AND minute < ?2")
        .map_err(unavailable)?;
    let rows = query.query_map(params![from, to], |r| r.get::<_, Vec<u8>>(0)).map_err(unavailable)?;
    let mut merged = Merged::default();
    for row in rows {
        merged.add(&row.map_err(unavailable)?).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))?;
    }
    Ok(merged)
}

/// The key and version of every row in `[from, to)` (on minutes), without sketches.
pub(super) fn read_versions(connection: &mut Connection, from: i64, to: i64) -> Result<Vec<RowVersion>, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let mut query = tx
        .prepare_cached(
            "SELECT minute, source_partition, version FROM trending_minutes
             WHERE minute >= ?1 AND minute < ?2 ORDER BY minute, source_partition",
        )
        .map_err(unavailable)?;
    let rows = query
        .query_map(params![from, to], |r| {
            Ok(RowVersion { minute: r.get(0)?, source_partition: r.get(1)?, version: r.get(2)? })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Every row in `[from, to)` (on minutes), sketch and version.
pub(super) fn read_rows(connection: &mut Connection, from: i64, to: i64) -> Result<Vec<TrendingRow>, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let mut query = tx
        .prepare_cached(
            "SELECT minute, source_partition, version, sketch FROM trending_minutes
             WHERE minute >= ?1 AND minute < ?2 ORDER BY minute, source_partition",
        )
        .map_err(unavailable)?;
    let rows = query
        .query_map(params![from, to], |r| {
            Ok(TrendingRow { minute: r.get(0)?, source_partition: r.get(1)?, version: r.get(2)?, sketch: r.get(3)? })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Views of each of `videos` in `[from, to)` (on minutes) by the rule of
/// [`crate::layers`], rollups where whole hours and days fit.
pub(super) fn window_views(
    connection: &mut Connection,
    videos: Vec<String>,
    from: i64,
    to: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let (reconciled, _) = reconciled(&tx)?;
    let segments: Vec<layers::Segment> =
        reconciled.outside(from, to).into_iter().flat_map(|(a, b)| layers::segments(a, b, Granularity::Day)).collect();
    let inside = reconciled.inside(from, to);
    let mut out = Vec::with_capacity(videos.len());
    for video in videos {
        let mut views = 0;
        for segment in &segments {
            views += realtime_rows(&tx, &video, *segment)?.iter().map(|r| r.1).sum::<i64>();
        }
        for (a, b) in &inside {
            views += batch_rows(&tx, &video, *a, *b)?.iter().map(|r| r.1).sum::<i64>();
        }
        out.push((video, views));
    }
    Ok(out)
}
