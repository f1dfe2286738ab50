//! Unique-viewer sketch rows in `video_uniques`: one partition per video,
//! rows per (granularity, bucket, salt, source partition). For each
//! (video, source partition) of a batch, in log order, the store reads the
//! hour rows the updates touch and the state of their day rows (not their
//! sketches), lets [`crate::uniques::plan`] decide; for a day row that must
//! fold ([`crate::uniques::fold`]) it then reads the day's sketch and the
//! hour rows it does not hold (versions first, then only those sketches).
//! It writes the changed rows in one single-partition batch whose cell
//! timestamps are the flush versions (hour rows) and the day rows' own
//! growing versions, so a stale writer's sketch loses to a newer one.
//!
//! A read of a whole day likewise reads the day rows, the versions of the
//! day's hour rows, and the sketches of the hour rows the day rows do not hold.
//!
//! The batch recount's exact counts go to `batch_uniques` (one partition per
//! hour or day, replaced at the batch generation like `batch_minutes`) and
//! `batch_uniques_counted`, which says which hours and days are complete.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tally_model::uniques::Merged;

use super::{from_execution, unavailable, ScyllaStore};
use crate::model::{ApplyOutcome, Granularity, PeriodSummary, PeriodUniques, UniquesRead};
use crate::uniques::{self, CurrentSketches, DayState, DayWrite, PendingFold, SketchUpdate, SketchWrite, StoredHour};
use crate::StoreError;

/// The statements of `video_uniques` and the batch uniques tables, prepared once.
pub(super) struct UniquesStatements {
    read_hour_rows: PreparedStatement,
    read_day_states: PreparedStatement,
    read_day_rows: PreparedStatement,
    read_hour_versions: PreparedStatement,
    read_row_by_key: PreparedStatement,
    write_row: PreparedStatement,
    write_day: PreparedStatement,
    read_range: PreparedStatement,
    delete_batch_bucket: PreparedStatement,
    write_batch_viewers: PreparedStatement,
    mark_counted: PreparedStatement,
    read_counted: PreparedStatement,
    read_batch_viewers: PreparedStatement,
}

impl UniquesStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| async move {
            let mut statement = session.prepare(cql).await.map_err(unavailable)?;
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(Self {
            read_hour_rows: prepare(format!(
                "SELECT bucket, salt, source_partition, sketch, version FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket IN ?"
            ))
            .await?,
            read_day_states: prepare(format!(
                "SELECT bucket, source_partition, version, newest_hour FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket IN ?"
            ))
            .await?,
            read_day_rows: prepare(format!(
                "SELECT bucket, source_partition, version, newest_hour, sketch FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            read_hour_versions: prepare(format!(
                "SELECT bucket, salt, source_partition, version FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            read_row_by_key: prepare(format!(
                "SELECT sketch, version FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket = ? AND salt = ? AND source_partition = ?"
            ))
            .await?,
            write_day: prepare(format!(
                "INSERT INTO {ks}.video_uniques \
                 (video_id, granularity, bucket, salt, source_partition, sketch, version, newest_hour) \
                 VALUES (?, ?, ?, 0, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            write_row: prepare(format!(
                "INSERT INTO {ks}.video_uniques (video_id, granularity, bucket, salt, source_partition, sketch, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            read_range: prepare(format!(
                "SELECT sketch FROM {ks}.video_uniques WHERE video_id = ? AND granularity = ? \
                 AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            delete_batch_bucket: prepare(format!(
                "DELETE FROM {ks}.batch_uniques USING TIMESTAMP ? WHERE granularity = ? AND bucket = ?"
            ))
            .await?,
            write_batch_viewers: prepare(format!(
                "INSERT INTO {ks}.batch_uniques (granularity, bucket, video_id, viewers) VALUES (?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            mark_counted: prepare(format!(
                "INSERT INTO {ks}.batch_uniques_counted (scope, granularity, bucket) VALUES ('all', ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            read_counted: prepare(format!(
                "SELECT bucket FROM {ks}.batch_uniques_counted WHERE scope = 'all' AND granularity = ? \
                 AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            read_batch_viewers: prepare(format!(
                "SELECT viewers FROM {ks}.batch_uniques WHERE granularity = ? AND bucket = ? AND video_id = ?"
            ))
            .await?,
        })
    }
}

type Row = (i64, i16, i32, Vec<u8>, i64);

/// An hour row's key and version: `(hour, salt, source partition, version)`.
type HourVersion = (i64, i16, i32, i64);

impl ScyllaStore {
    /// Merges the sketches of the admitted chunks, grouped by (video, source partition).
    pub(super) async fn apply_sketches(
        &self,
        groups: BTreeMap<(String, i32), Vec<SketchUpdate>>,
    ) -> Result<ApplyOutcome, StoreError> {
        let concurrency = self.inner.config.concurrency.max(1);
        let outcomes: Vec<ApplyOutcome> = stream::iter(
            groups.into_iter().map(|((video, partition), updates)| self.apply_group(video, partition, updates)),
        )
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
        Ok(outcomes.into_iter().fold(ApplyOutcome::default(), ApplyOutcome::plus))
    }

    async fn apply_group(
        &self,
        video: String,
        partition: i32,
        updates: Vec<SketchUpdate>,
    ) -> Result<ApplyOutcome, StoreError> {
        let statements = &self.inner.uniques;
        let (hours, days) = uniques::keys(&updates);
        let (hour_rows, day_states) = futures::try_join!(
            self.select::<Row>(&statements.read_hour_rows, (video.as_str(), Granularity::Hour.code(), hours)),
            self.select::<(i64, i32, i64, i64)>(
                &statements.read_day_states,
                (video.as_str(), Granularity::Day.code(), days)
            ),
        )?;
        let mut current = CurrentSketches::default();
        for (bucket, salt, source, sketch, version) in hour_rows {
            if source == partition {
                current.hours.insert((bucket, salt), (sketch, version));
            }
        }
        for (bucket, source, version, newest_hour) in day_states {
            if source == partition {
                current.days.insert(bucket, DayState { version, newest_hour });
            }
        }
        let plan = uniques::plan(&updates, current)?;
        let mut folded = Vec::with_capacity(plan.folds.len());
        for pending in &plan.folds {
            folded.push(self.fold_day(&video, partition, pending, &plan.writes).await?);
        }
        if !plan.writes.is_empty() {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values: Vec<Box<dyn SerializeRow + Send + Sync + '_>> =
                Vec::with_capacity(plan.writes.len() + folded.len());
            for write in &plan.writes {
                batch.append_statement(statements.write_row.clone());
                values.push(Box::new((
                    video.as_str(),
                    Granularity::Hour.code(),
                    write.hour,
                    write.salt,
                    partition,
                    write.sketch.as_slice(),
                    write.version,
                    write.version,
                )));
            }
            for day in &folded {
                batch.append_statement(statements.write_day.clone());
                values.push(Box::new((
                    video.as_str(),
                    Granularity::Day.code(),
                    day.day,
                    partition,
                    day.sketch.as_slice(),
                    day.state.version,
                    day.state.newest_hour,
                    day.state.version,
                )));
            }
            batch.set_is_idempotent(true);
            self.inner.session.batch(&batch, values).await.map_err(from_execution)?;
        }
        Ok(plan.outcome())
    }

    /// Reads what folding `pending` needs (the day's sketch, the hour rows it
    /// does not hold) and folds it.
    async fn fold_day(
        &self,
        video: &str,
        partition: i32,
        pending: &PendingFold,
        written: &[SketchWrite],
    ) -> Result<DayWrite, StoreError> {
        let statements = &self.inner.uniques;
        let (start, end) = pending.hours();
        let (day_row, versions) = futures::try_join!(
            self.select::<(Vec<u8>, i64)>(
                &statements.read_row_by_key,
                (video, Granularity::Day.code(), pending.day, 0_i16, partition)
            ),
            self.select::<HourVersion>(&statements.read_hour_versions, (video, Granularity::Hour.code(), start, end)),
        )?;
        let day_sketch = day_row.into_iter().next().map(|(sketch, _)| sketch);
        let rewritten: HashSet<(i64, i16)> = written.iter().map(|w| (w.hour, w.salt)).collect();
        let unheld = versions.into_iter().filter(|&(hour, salt, source, version)| {
            source == partition && pending.needs(version) && !rewritten.contains(&(hour, salt))
        });
        let stored = self.read_hours(video, unheld).await?;
        uniques::fold::fold(pending, day_sketch.as_deref(), &stored, written)
    }

    /// The sketches of the given hour rows (those still there).
    async fn read_hours(
        &self,
        video: &str,
        rows: impl Iterator<Item = HourVersion>,
    ) -> Result<Vec<StoredHour>, StoreError> {
        let concurrency = self.inner.config.concurrency.max(1);
        let read = &self.inner.uniques.read_row_by_key;
        let found: Vec<Option<StoredHour>> = stream::iter(rows)
            .map(|(hour, salt, source, _)| async move {
                let rows =
                    self.select::<(Vec<u8>, i64)>(read, (video, Granularity::Hour.code(), hour, salt, source)).await?;
                Ok::<_, StoreError>(rows.into_iter().next().map(|(sketch, version)| StoredHour {
                    hour,
                    salt,
                    version,
                    sketch,
                }))
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    pub(super) async fn read_uniques(&self, video: &str, from: i64, to: i64) -> Result<UniquesRead, StoreError> {
        let mut merged = Merged::default();
        let mut add =
            |sketch: &[u8]| merged.add(sketch).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")));
        for segment in uniques::read_plan(from, to) {
            if segment.granularity == Granularity::Day {
                for sketch in self.read_days(video, segment.from, segment.to).await? {
                    add(&sketch)?;
                }
                continue;
            }
            let rows = self
                .select::<(Vec<u8>,)>(
                    &self.inner.uniques.read_range,
                    (video, segment.granularity.code(), segment.from, segment.to),
                )
                .await?;
            for (sketch,) in rows {
                add(&sketch)?;
            }
        }
        let (counted_parts, batch) = futures::try_join!(self.read_counted_parts(video, from, to), self.batch_state())?;
        Ok(UniquesRead {
            from_ms: from,
            to_ms: to,
            estimate: merged.estimate(),
            sketches: merged.inputs(),
            counted_parts,
            exact_through_ms: batch.reconciled.exact_through(),
        })
    }

    /// The sketches a read of the whole days `[from, to)` unions: the day
    /// rows and the hour rows they do not hold.
    async fn read_days(&self, video: &str, from: i64, to: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let statements = &self.inner.uniques;
        let (day_rows, versions) = futures::try_join!(
            self.select::<(i64, i32, i64, i64, Vec<u8>)>(
                &statements.read_day_rows,
                (video, Granularity::Day.code(), from, to)
            ),
            self.select::<HourVersion>(&statements.read_hour_versions, (video, Granularity::Hour.code(), from, to)),
        )?;
        let mut held: HashMap<(i64, i32), DayState> = HashMap::new();
        let mut sketches = Vec::new();
        for (day, source, version, newest_hour, sketch) in day_rows {
            held.insert((day, source), DayState { version, newest_hour });
            sketches.push(sketch);
        }
        let unheld = versions.into_iter().filter(|&(hour, _, source, version)| {
            uniques::fold::needs_hour(held.get(&(Granularity::Day.bucket(hour), source)), version)
        });
        sketches.extend(self.read_hours(video, unheld).await?.into_iter().map(|row| row.sketch));
        Ok(sketches)
    }

    /// The batch counts of `video` in every part of `[from, to)`, if every part is counted.
    async fn read_counted_parts(&self, video: &str, from: i64, to: i64) -> Result<Option<Vec<u64>>, StoreError> {
        let statements = &self.inner.uniques;
        let parts = uniques::counted_parts(from, to);
        let mut marked = HashSet::new();
        for segment in uniques::read_plan(from, to) {
            let code = segment.granularity.code();
            let rows = self.select::<(i64,)>(&statements.read_counted, (code, segment.from, segment.to)).await?;
            marked.extend(rows.into_iter().map(|(bucket,)| (code, bucket)));
        }
        if parts.iter().any(|(granularity, bucket)| !marked.contains(&(granularity.code(), *bucket))) {
            return Ok(None);
        }
        let concurrency = self.inner.config.concurrency.max(1);
        let counts: Vec<u64> = stream::iter(parts)
            .map(|(granularity, bucket)| async move {
                let rows =
                    self.select::<(i64,)>(&statements.read_batch_viewers, (granularity.code(), bucket, video)).await?;
                let viewers = rows.first().map_or(0, |row| row.0);
                u64::try_from(viewers).map_err(|_| StoreError::Invalid(format!("{viewers} viewers stored")))
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        Ok(Some(counts))
    }

    /// Replaces the batch counts of the period's hour (and day, when given,
    /// checked by the caller before any write) at `generation` (deletes) and
    /// `generation + 1` (writes), marking each counted after its rows.
    pub(super) async fn write_batch_uniques(
        &self,
        period: &PeriodSummary,
        counted: &PeriodUniques,
        generation: i64,
    ) -> Result<(), StoreError> {
        self.replace_batch_bucket(Granularity::Hour, period.start_ms, &counted.hour, generation).await?;
        if let Some(day) = &counted.day {
            self.replace_batch_bucket(Granularity::Day, day.day_ms, &day.viewers, generation).await?;
        }
        Ok(())
    }

    async fn replace_batch_bucket(
        &self,
        granularity: Granularity,
        bucket: i64,
        viewers: &[(String, u64)],
        generation: i64,
    ) -> Result<(), StoreError> {
        let statements = &self.inner.uniques;
        let code = granularity.code();
        self.run(&statements.delete_batch_bucket, (generation, code, bucket)).await?;
        let written = generation + 1;
        let concurrency = self.inner.config.concurrency.max(1);
        // Owned rows: a future borrowing from the slice is not `Send` for every lifetime.
        stream::iter(viewers.to_vec())
            .map(|(video, count)| async move {
                let count = i64::try_from(count).map_err(|_| StoreError::Invalid(format!("{count} viewers")))?;
                self.run(&statements.write_batch_viewers, (code, bucket, video.as_str(), count, written)).await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        self.run(&statements.mark_counted, (code, bucket, written)).await
    }
}
