//! Unique-viewer sketch rows in the embedded store: applied in the batch's
//! transaction ([`crate::uniques`] decides what to write), read in one read
//! transaction.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tally_model::counts::FlushChunk;
use tally_model::uniques::Merged;

use super::unavailable;
use crate::model::{ApplyOutcome, Granularity, UniquesRead};
use crate::uniques::{self, CurrentSketches};
use crate::StoreError;

/// The sketch tables: hour rows per salt with their version, day rows.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS uniques_hours (
    video_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    salt INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (video_id, hour, salt, source_partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uniques_days (
    video_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    PRIMARY KEY (video_id, day, source_partition)
) WITHOUT ROWID;
";

/// Merges the sketches of `chunks` (admitted, in log order).
pub(super) fn apply(tx: &Transaction<'_>, chunks: &[FlushChunk]) -> Result<ApplyOutcome, StoreError> {
    let mut outcome = ApplyOutcome::default();
    let mut read_hour = tx
        .prepare_cached(
            "SELECT sketch, version FROM uniques_hours
             WHERE video_id = ?1 AND hour = ?2 AND salt = ?3 AND source_partition = ?4",
        )
        .map_err(unavailable)?;
    let mut read_day = tx
        .prepare_cached("SELECT sketch FROM uniques_days WHERE video_id = ?1 AND day = ?2 AND source_partition = ?3")
        .map_err(unavailable)?;
    let mut write_hour = tx
        .prepare_cached(
            "INSERT INTO uniques_hours (video_id, hour, salt, source_partition, sketch, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (video_id, hour, salt, source_partition) DO UPDATE
             SET sketch = excluded.sketch, version = excluded.version",
        )
        .map_err(unavailable)?;
    let mut write_day = tx
        .prepare_cached(
            "INSERT INTO uniques_days (video_id, day, source_partition, sketch) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (video_id, day, source_partition) DO UPDATE SET sketch = excluded.sketch",
        )
        .map_err(unavailable)?;
    for ((video, partition), updates) in uniques::grouped(chunks) {
        let (_, days) = uniques::keys(&updates);
        let mut current = CurrentSketches::default();
        for update in &updates {
            if current.hours.contains_key(&(update.hour, update.salt)) {
                continue;
            }
            let row: Option<(Vec<u8>, i64)> = read_hour
                .query_row(params![video, update.hour, update.salt, partition], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(unavailable)?;
            if let Some(row) = row {
                current.hours.insert((update.hour, update.salt), row);
            }
        }
        for day in days {
            let row: Option<Vec<u8>> =
                read_day.query_row(params![video, day, partition], |r| r.get(0)).optional().map_err(unavailable)?;
            if let Some(row) = row {
                current.days.insert(day, row);
            }
        }
        let plan = uniques::plan(&updates, current)?;
        outcome.sketches_applied += plan.applied;
        outcome.sketches_stale += plan.stale;
        for write in plan.writes {
            match write.granularity {
                Granularity::Hour => write_hour
                    .execute(params![video, write.bucket, write.salt, partition, write.sketch, write.version])
                    .map_err(unavailable)?,
                _ => write_day.execute(params![video, write.bucket, partition, write.sketch]).map_err(unavailable)?,
            };
        }
    }
    Ok(outcome)
}

/// The union of `video`'s sketches over `[from, to)` (on hours).
pub(super) fn read(connection: &mut Connection, video: &str, from: i64, to: i64) -> Result<UniquesRead, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let mut merged = Merged::default();
    for segment in uniques::read_plan(from, to) {
        let sql = match segment.granularity {
            Granularity::Day => "SELECT sketch FROM uniques_days WHERE video_id = ?1 AND day >= ?2 AND day < ?3",
            _ => "SELECT sketch FROM uniques_hours WHERE video_id = ?1 AND hour >= ?2 AND hour < ?3",
        };
        let mut query = tx.prepare_cached(sql).map_err(unavailable)?;
        let rows = query
            .query_map(params![video, segment.from, segment.to], |r| r.get::<_, Vec<u8>>(0))
            .map_err(unavailable)?;
        for row in rows {
            merged.add(&row.map_err(unavailable)?).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))?;
        }
    }
    Ok(UniquesRead { from_ms: from, to_ms: to, estimate: merged.estimate(), sketches: merged.inputs() })
}
