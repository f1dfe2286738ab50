//! Reads for the query service and the reconciler: totals and series by
//! the rule of [`crate::layers`] (batch counts for exactly the reconciled
//! periods, real-time counts for every other minute), `as_of`, real-time minutes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::stream::{self, StreamExt, TryStreamExt};

use super::{ScyllaStore, INDEX_SHARDS};
use crate::layers::{self, Reconciled, Segment, FAR_FUTURE, FAR_PAST};
use crate::model::{Granularity, Point, Total};
use crate::StoreError;

/// `as_of` from the progress rows: the slowest source partition of the newest epoch.
pub(super) fn as_of(progress: &[(i32, i32, i64)]) -> i64 {
    let Some(epoch) = progress.iter().map(|p| p.0).max() else { return 0 };
    progress.iter().filter(|p| p.0 == epoch).map(|p| p.2).min().unwrap_or(0)
}

/// The batch layer as a read sees it: reconciled periods and generation
/// (the newest cell timestamp of `batch_periods`: every reconcile writes its
/// period row last, at a generation after every earlier one).
pub(super) struct BatchState {
    pub(super) periods: Vec<(i64, i64)>,
    pub(super) reconciled: Reconciled,
    pub(super) generation: i64,
}

impl BatchState {
    pub(super) fn new(rows: Vec<(i64, i64, Option<i64>)>) -> Self {
        let generation = rows.iter().filter_map(|r| r.2).max().unwrap_or(0);
        let periods: Vec<(i64, i64)> = rows.into_iter().map(|r| (r.0, r.1)).collect();
        Self { reconciled: Reconciled::new(periods.iter().copied()), periods, generation }
    }

    fn starts(&self) -> HashSet<i64> {
        self.periods.iter().map(|p| p.0).collect()
    }
}

impl ScyllaStore {
    pub(super) async fn batch_state(&self) -> Result<BatchState, StoreError> {
        let rows = self.select::<(i64, i64, Option<i64>)>(&self.inner.statements.read_reconciled, ()).await?;
        Ok(BatchState::new(rows))
    }

    /// Real-time `(bucket, views)` rows of `video` in one segment, every salt and source partition.
    async fn realtime_rows(&self, video: &str, segment: Segment) -> Result<Vec<(i64, i64)>, StoreError> {
        let code = segment.granularity.code();
        self.select::<(i64, i64)>(&self.inner.statements.read_series, (video, code, segment.from, segment.to)).await
    }

    /// Batch views of `video` per reconciled period starting in `[from, to)`.
    async fn batch_by_period(&self, video: &str, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.select::<(i64, i64)>(&self.inner.statements.read_batch_by_video, (video, from, to)).await
    }

    pub(super) async fn read_totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        let statements = &self.inner.statements;
        let (progress, batch) =
            futures::try_join!(self.select::<(i32, i32, i64)>(&statements.read_progress, ()), self.batch_state())?;
        let as_of_ms = as_of(&progress);
        let starts = batch.starts();
        let segments: Vec<Segment> = batch
            .reconciled
            .outside(FAR_PAST, FAR_FUTURE)
            .into_iter()
            .flat_map(|(from, to)| layers::segments(from, to, Granularity::Day))
            .collect();
        let concurrency = self.inner.config.concurrency.max(1);
        let (batch, starts, segments) = (&batch, &starts, &segments);
        stream::iter(videos)
            .map(|video_id| async move {
                let video = video_id.as_str();
                let total = |views, batch_views| Total {
                    video_id: video_id.clone(),
                    views,
                    as_of_ms,
                    batch_views,
                    exact_through_ms: batch.reconciled.exact_through(),
                    batch_generation: batch.generation,
                };
                if batch.reconciled.is_empty() {
                    let rows = self.select::<(i64,)>(&statements.read_totals, (video,)).await?;
                    return Ok(total(rows.iter().map(|r| r.0).sum(), 0));
                }
                let realtime = futures::future::try_join_all(segments.iter().map(|s| self.realtime_rows(video, *s)));
                let (realtime, per_period) =
                    futures::try_join!(realtime, self.batch_by_period(video, FAR_PAST, FAR_FUTURE))?;
                let realtime: i64 = realtime.iter().flatten().map(|r| r.1).sum();
                // Rows of a period whose reconcile has not finished (its period row comes last) do not count yet.
                let batch_views: i64 = per_period.iter().filter(|(start, _)| starts.contains(start)).map(|r| r.1).sum();
                Ok(total(batch_views + realtime, batch_views))
            })
            .buffered(concurrency)
            .try_collect()
            .await
    }

    pub(super) async fn read_series(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
        step: Granularity,
    ) -> Result<Vec<Point>, StoreError> {
        let (from, to) = layers::series_range(from_ms, to_ms, step)?;
        let batch = self.batch_state().await?;
        let video = video.as_str();
        let segments: Vec<Segment> =
            batch.reconciled.outside(from, to).into_iter().flat_map(|(a, b)| layers::segments(a, b, step)).collect();
        let (whole, by_minute) = layers::batch_sources(&batch.periods, from, to, step);
        let realtime = futures::future::try_join_all(segments.iter().map(|s| self.realtime_rows(video, *s)));
        let minutes = futures::future::try_join_all(
            by_minute
                .iter()
                .map(|start| self.select::<(i64, i64)>(&self.inner.statements.read_batch_minutes, (*start, video))),
        );
        let per_period = async {
            if whole.is_empty() {
                Ok(Vec::new())
            } else {
                self.batch_by_period(video, from, to).await
            }
        };
        let (realtime, minutes, per_period) = futures::try_join!(realtime, minutes, per_period)?;
        // Salts and source partitions are summed per bucket.
        let mut buckets: BTreeMap<i64, i64> = BTreeMap::new();
        for (bucket, views) in realtime.into_iter().flatten() {
            *buckets.entry(step.bucket(bucket)).or_default() += views;
        }
        for (minute, views) in minutes.into_iter().flatten().filter(|(m, _)| (from..to).contains(m)) {
            *buckets.entry(step.bucket(minute)).or_default() += views;
        }
        let whole: HashSet<i64> = whole.into_iter().collect();
        for (start, views) in per_period.into_iter().filter(|(start, _)| whole.contains(start)) {
            *buckets.entry(step.bucket(start)).or_default() += views;
        }
        Ok(buckets
            .into_iter()
            .filter(|(_, views)| *views != 0)
            .map(|(bucket_ms, views)| Point { bucket_ms, views })
            .collect())
    }

    /// Views of each of `videos` in `[from, to)` (on minutes): real-time
    /// rollups where whole hours and days fit, batch minutes of the
    /// reconciled periods.
    pub(super) async fn read_window_views(
        &self,
        videos: Vec<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let batch = self.batch_state().await?;
        let segments: Vec<Segment> = batch
            .reconciled
            .outside(from, to)
            .into_iter()
            .flat_map(|(a, b)| layers::segments(a, b, Granularity::Day))
            .collect();
        let periods: Vec<i64> = batch.periods.iter().filter(|(s, e)| *s < to && from < *e).map(|p| p.0).collect();
        let concurrency = self.inner.config.concurrency.max(1);
        let (segments, periods) = (&segments, &periods);
        stream::iter(videos)
            .map(|video_id| async move {
                let video = video_id.as_str();
                let realtime = futures::future::try_join_all(segments.iter().map(|s| self.realtime_rows(video, *s)));
                let minutes = futures::future::try_join_all(periods.iter().map(|start| {
                    self.select::<(i64, i64)>(&self.inner.statements.read_batch_minutes, (*start, video))
                }));
                let (realtime, minutes) = futures::try_join!(realtime, minutes)?;
                let views = realtime.iter().flatten().map(|r| r.1).sum::<i64>()
                    + minutes.iter().flatten().filter(|(m, _)| (from..to).contains(m)).map(|r| r.1).sum::<i64>();
                Ok::<_, StoreError>((video_id, views))
            })
            .buffered(concurrency)
            .try_collect()
            .await
    }

    pub(super) async fn read_realtime_minutes(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let statements = &self.inner.statements;
        let hour = Granularity::Hour.millis();
        let hours: Vec<i64> = (Granularity::Hour.bucket(from_ms)..to_ms).step_by(hour as usize).collect();
        let concurrency = self.inner.config.concurrency.max(1);
        let keys: Vec<(i64, i16)> =
            hours.into_iter().flat_map(|h| (0..INDEX_SHARDS).map(move |shard| (h, shard))).collect();
        let listed: Vec<Vec<(String,)>> = stream::iter(keys)
            .map(|(h, shard)| async move { self.select::<(String,)>(&statements.read_hour_videos, (h, shard)).await })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let videos: BTreeSet<String> = listed.into_iter().flatten().map(|v| v.0).collect();
        let per_video: Vec<Vec<(String, i64, i64)>> = stream::iter(videos)
            .map(|video| async move {
                let rows =
                    self.select::<(i64, i64)>(&statements.read_minutes_from, (video.as_str(), from_ms, to_ms)).await?;
                let mut minutes: BTreeMap<i64, i64> = BTreeMap::new();
                for (minute, views) in rows {
                    *minutes.entry(minute).or_default() += views;
                }
                Ok::<_, StoreError>(minutes.into_iter().map(|(m, v)| (video.clone(), m, v)).collect())
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        Ok(per_video.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_generation_is_the_newest_period_write() {
        let state = BatchState::new(vec![(0, 10, Some(5)), (20, 30, Some(9)), (10, 20, None)]);
        assert_eq!(state.generation, 9);
        assert_eq!(state.reconciled.exact_through(), Some(30));
        assert_eq!(state.reconciled.outside(FAR_PAST, FAR_FUTURE), vec![(FAR_PAST, 0), (30, FAR_FUTURE)]);
        assert_eq!(BatchState::new(vec![]).generation, 0);
    }

    #[test]
    fn as_of_trails_the_slowest_partition_of_the_newest_epoch() {
        assert_eq!(as_of(&[]), 0);
        assert_eq!(as_of(&[(0, 0, 500), (0, 1, 300), (1, 0, 200), (1, 1, 250)]), 200);
        assert_eq!(as_of(&[(0, 0, 500), (0, 1, 300)]), 300);
    }
}
