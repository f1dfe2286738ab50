//! Unique-viewer sketch rows in `video_uniques`: one partition per video,
//! rows per (granularity, bucket, salt, source partition). For each
//! (video, source partition) of a batch, in log order, the store reads the
//! rows the updates touch, lets [`crate::uniques::plan`] decide, and writes
//! the changed rows in one single-partition batch whose cell timestamps are
//! the flush versions, so a stale writer's sketch loses to a newer one.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tally_model::uniques::Merged;

use super::{from_execution, unavailable, ScyllaStore};
use crate::model::{ApplyOutcome, Granularity, UniquesRead};
use crate::uniques::{self, CurrentSketches, SketchUpdate};
use crate::StoreError;

/// `granularity` of hour rows (as in `view_counts`).
const HOUR: i8 = 1;
/// `granularity` of day rows.
const DAY: i8 = 2;

/// The statements of `video_uniques`, prepared once.
pub(super) struct UniquesStatements {
    read_rows: PreparedStatement,
    write_row: PreparedStatement,
    read_range: PreparedStatement,
}

impl UniquesStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| async move {
            let mut statement = session.prepare(cql).await.map_err(unavailable)?;
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(Self {
            read_rows: prepare(format!(
                "SELECT bucket, salt, source_partition, sketch, version FROM {ks}.video_uniques \
                 WHERE video_id = ? AND granularity = ? AND bucket IN ?"
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
        })
    }
}

type Row = (i64, i16, i32, Vec<u8>, i64);

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
        let (hour_rows, day_rows) = futures::try_join!(
            self.select::<Row>(&statements.read_rows, (video.as_str(), HOUR, hours)),
            self.select::<Row>(&statements.read_rows, (video.as_str(), DAY, days)),
        )?;
        let mut current = CurrentSketches::default();
        for (bucket, salt, source, sketch, version) in hour_rows {
            if source == partition {
                current.hours.insert((bucket, salt), (sketch, version));
            }
        }
        for (bucket, _, source, sketch, _) in day_rows {
            if source == partition {
                current.days.insert(bucket, sketch);
            }
        }
        let plan = uniques::plan(&updates, current)?;
        if !plan.writes.is_empty() {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(plan.writes.len());
            for write in &plan.writes {
                batch.append_statement(statements.write_row.clone());
                let granularity = if write.granularity == Granularity::Hour { HOUR } else { DAY };
                values.push((
                    video.as_str(),
                    granularity,
                    write.bucket,
                    write.salt,
                    partition,
                    write.sketch.as_slice(),
                    write.version,
                    write.version,
                ));
            }
            batch.set_is_idempotent(true);
            self.inner.session.batch(&batch, values).await.map_err(from_execution)?;
        }
        Ok(ApplyOutcome { sketches_applied: plan.applied, sketches_stale: plan.stale, ..ApplyOutcome::default() })
    }

    pub(super) async fn read_uniques(&self, video: &str, from: i64, to: i64) -> Result<UniquesRead, StoreError> {
        let mut merged = Merged::default();
        for segment in uniques::read_plan(from, to) {
            let granularity = if segment.granularity == Granularity::Day { DAY } else { HOUR };
            let rows = self
                .select::<(Vec<u8>,)>(&self.inner.uniques.read_range, (video, granularity, segment.from, segment.to))
                .await?;
            for (sketch,) in rows {
                merged.add(&sketch).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))?;
            }
        }
        Ok(UniquesRead { from_ms: from, to_ms: to, estimate: merged.estimate(), sketches: merged.inputs() })
    }
}
