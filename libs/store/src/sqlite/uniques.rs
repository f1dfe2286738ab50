//! Unique-viewer sketch rows in the embedded store: applied in the batch's
//! transaction ([`crate::uniques`] decides what to write, and when a day row
//! folds its hours: [`crate::uniques::fold`]), read in one read transaction
//! with the batch recount's exact counts of the read's parts.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tally_model::counts::FlushChunk;
use tally_model::uniques::Merged;

use super::unavailable;
use crate::model::{ApplyOutcome, Granularity, PeriodSummary, PeriodUniques, UniquesRead};
use crate::uniques::{self, CurrentSketches, DayState, PendingFold, SketchWrite, StoredHour};
use crate::StoreError;

/// The sketch tables: hour rows per salt with their version, day rows with
/// what they hold ([`crate::uniques::DayState`]). Columns before the sketch
/// are read without it: SQLite reads a record's overflow pages, where most
/// of an 8 KiB blob lives, only for a column stored in them, so the writer
/// reads a day row's `version` and `newest_hour` at the cost of one page.
/// A database whose `uniques_days` lacks those columns is not migrated: no
/// deployed store has one.
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
    version INTEGER NOT NULL,
    newest_hour INTEGER NOT NULL,
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
    let mut read_day_state = tx
        .prepare_cached(
            "SELECT version, newest_hour FROM uniques_days WHERE video_id = ?1 AND day = ?2 AND source_partition = ?3",
        )
        .map_err(unavailable)?;
    let mut write_hour = tx
        .prepare_cached(
            "INSERT INTO uniques_hours (video_id, hour, salt, source_partition, sketch, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (video_id, hour, salt, source_partition) DO UPDATE
             SET sketch = excluded.sketch, version = excluded.version",
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
            let state = read_day_state
                .query_row(params![video, day, partition], |r| {
                    Ok(DayState { version: r.get(0)?, newest_hour: r.get(1)? })
                })
                .optional()
                .map_err(unavailable)?;
            if let Some(state) = state {
                current.days.insert(day, state);
            }
        }
        let plan = uniques::plan(&updates, current)?;
        outcome = outcome.plus(plan.outcome());
        // Folds read the hour rows as they were before the batch: `fold` takes the batch's own.
        for pending in &plan.folds {
            fold_day(tx, &video, partition, pending, &plan.writes)?;
        }
        for write in &plan.writes {
            write_hour
                .execute(params![video, write.hour, write.salt, partition, write.sketch, write.version])
                .map_err(unavailable)?;
        }
    }
    Ok(outcome)
}

/// Reads what folding `pending` needs and writes the day row.
fn fold_day(
    tx: &Transaction<'_>,
    video: &str,
    partition: i32,
    pending: &PendingFold,
    written: &[SketchWrite],
) -> Result<(), StoreError> {
    let day_sketch: Option<Vec<u8>> = tx
        .prepare_cached("SELECT sketch FROM uniques_days WHERE video_id = ?1 AND day = ?2 AND source_partition = ?3")
        .map_err(unavailable)?
        .query_row(params![video, pending.day, partition], |r| r.get(0))
        .optional()
        .map_err(unavailable)?;
    let held_through = pending.previous.map_or(i64::MIN, |row| row.version);
    let (start, end) = pending.hours();
    let mut unheld = tx
        .prepare_cached(
            "SELECT hour, salt, version, sketch FROM uniques_hours
             WHERE video_id = ?1 AND hour >= ?2 AND hour < ?3 AND source_partition = ?4 AND version > ?5",
        )
        .map_err(unavailable)?;
    let stored = unheld
        .query_map(params![video, start, end, partition, held_through], |r| {
            Ok(StoredHour { hour: r.get(0)?, salt: r.get(1)?, version: r.get(2)?, sketch: r.get(3)? })
        })
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    let day = uniques::fold::fold(pending, day_sketch.as_deref(), &stored, written)?;
    tx.prepare_cached(
        "INSERT INTO uniques_days (video_id, day, source_partition, version, newest_hour, sketch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (video_id, day, source_partition) DO UPDATE
         SET version = excluded.version, newest_hour = excluded.newest_hour, sketch = excluded.sketch",
    )
    .map_err(unavailable)?
    .execute(params![video, day.day, partition, day.state.version, day.state.newest_hour, day.sketch])
    .map_err(unavailable)?;
    Ok(())
}

/// The union of `video`'s sketches over `[from, to)` (on hours): the day
/// rows of whole days with the hour rows they do not hold
/// ([`crate::uniques::fold::needs_hour`], here in SQL), the edge hours' rows.
pub(super) fn read(connection: &mut Connection, video: &str, from: i64, to: i64) -> Result<UniquesRead, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let mut merged = Merged::default();
    let mut add = |sketch: rusqlite::Result<Vec<u8>>| -> Result<(), StoreError> {
        merged.add(&sketch.map_err(unavailable)?).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))
    };
    for segment in uniques::read_plan(from, to) {
        let bounds = params![video, segment.from, segment.to];
        if segment.granularity == Granularity::Day {
            let mut days = tx
                .prepare_cached("SELECT sketch FROM uniques_days WHERE video_id = ?1 AND day >= ?2 AND day < ?3")
                .map_err(unavailable)?;
            for sketch in days.query_map(bounds, |r| r.get(0)).map_err(unavailable)? {
                add(sketch)?;
            }
            // The day row of an hour row: the one whose day starts less than a day before it.
            let mut unheld = tx
                .prepare_cached(
                    "SELECT h.sketch FROM uniques_hours h
                     LEFT JOIN uniques_days d ON d.video_id = h.video_id AND d.source_partition = h.source_partition
                         AND d.day <= h.hour AND d.day > h.hour - ?4
                     WHERE h.video_id = ?1 AND h.hour >= ?2 AND h.hour < ?3
                         AND (d.version IS NULL OR h.version > d.version)",
                )
                .map_err(unavailable)?;
            let rows = unheld
                .query_map(params![video, segment.from, segment.to, Granularity::Day.millis()], |r| r.get(0))
                .map_err(unavailable)?;
            for sketch in rows {
                add(sketch)?;
            }
        } else {
            let mut hours = tx
                .prepare_cached("SELECT sketch FROM uniques_hours WHERE video_id = ?1 AND hour >= ?2 AND hour < ?3")
                .map_err(unavailable)?;
            for sketch in hours.query_map(bounds, |r| r.get(0)).map_err(unavailable)? {
                add(sketch)?;
            }
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
