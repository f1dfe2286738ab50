//! Unique-viewer sketch rows in the embedded store: applied in the batch's
//! transaction ([`crate::uniques`] decides what to write), read in one read
//! transaction with the batch recount's exact counts of the read's parts.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tally_model::counts::FlushChunk;
use tally_model::uniques::Merged;

use super::unavailable;
use crate::model::{ApplyOutcome, Granularity, PeriodSummary, PeriodUniques, UniquesRead};
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
CREATE TABLE IF NOT EXISTS batch_uniques (
    granularity INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    video_id TEXT NOT NULL,
    viewers INTEGER NOT NULL,
    PRIMARY KEY (granularity, bucket, video_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_uniques_counted (
    granularity INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    PRIMARY KEY (granularity, bucket)
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
        outcome = outcome.plus(plan.outcome());
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
    let (reconciled, _) = super::reconciled(&tx)?;
    let counted_parts = counted_parts(&tx, video, from, to)?;
    Ok(UniquesRead {
        from_ms: from,
        to_ms: to,
        estimate: merged.estimate(),
        sketches: merged.inputs(),
        counted_parts,
        exact_through_ms: reconciled.exact_through(),
    })
}

/// The batch counts of `video` in every part of `[from, to)`, if every part is counted.
fn counted_parts(connection: &Connection, video: &str, from: i64, to: i64) -> Result<Option<Vec<u64>>, StoreError> {
    let parts = uniques::counted_parts(from, to);
    let mut marked = connection
        .prepare_cached("SELECT 1 FROM batch_uniques_counted WHERE granularity = ?1 AND bucket = ?2")
        .map_err(unavailable)?;
    for (granularity, bucket) in &parts {
        if marked.query_row(params![granularity.code(), bucket], |_| Ok(())).optional().map_err(unavailable)?.is_none()
        {
            return Ok(None);
        }
    }
    let mut viewers = connection
        .prepare_cached("SELECT viewers FROM batch_uniques WHERE granularity = ?1 AND bucket = ?2 AND video_id = ?3")
        .map_err(unavailable)?;
    let mut counts = Vec::with_capacity(parts.len());
    for (granularity, bucket) in parts {
        let count: Option<i64> = viewers
            .query_row(params![granularity.code(), bucket, video], |r| r.get(0))
            .optional()
            .map_err(unavailable)?;
        counts.push(u64::try_from(count.unwrap_or(0)).map_err(|_| StoreError::Invalid("negative viewers".into()))?);
    }
    Ok(Some(counts))
}

/// Replaces the batch counts of the period's hour (and day, when given)
/// and marks them counted, in the period's transaction.
pub(super) fn replace_batch(
    tx: &Transaction<'_>,
    period: &PeriodSummary,
    counted: &PeriodUniques,
) -> Result<(), StoreError> {
    uniques::check_period_uniques(period, counted)?;
    replace_bucket(tx, Granularity::Hour, period.start_ms, &counted.hour)?;
    if let Some(day) = &counted.day {
        replace_bucket(tx, Granularity::Day, day.day_ms, &day.viewers)?;
    }
    Ok(())
}

fn replace_bucket(
    tx: &Transaction<'_>,
    granularity: Granularity,
    bucket: i64,
    viewers: &[(String, u64)],
) -> Result<(), StoreError> {
    let code = granularity.code();
    tx.execute("DELETE FROM batch_uniques WHERE granularity = ?1 AND bucket = ?2", params![code, bucket])
        .map_err(unavailable)?;
    let mut insert = tx
        .prepare_cached("INSERT INTO batch_uniques (granularity, bucket, video_id, viewers) VALUES (?1, ?2, ?3, ?4)")
        .map_err(unavailable)?;
    for (video, count) in viewers {
        let count = i64::try_from(*count).map_err(|_| StoreError::Invalid(format!("{count} viewers")))?;
        insert.execute(params![code, bucket, video, count]).map_err(unavailable)?;
    }
    tx.execute(
        "INSERT OR IGNORE INTO batch_uniques_counted (granularity, bucket) VALUES (?1, ?2)",
        params![code, bucket],
    )
    .map_err(unavailable)?;
    Ok(())
}
