//! Reads for the query service and the reconciler: totals (batch part plus
//! real time after `exact_through`), series, `as_of`, real-time minutes.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt, TryStreamExt};

use super::plan::{DAY, HOUR, MINUTE};
use super::{ScyllaStore, INDEX_SHARDS};
use crate::model::{Granularity, Point, Total};
use crate::StoreError;

/// `as_of` from the progress rows: the slowest source partition of the newest epoch.
pub(super) fn as_of(progress: &[(i32, i32, i64)]) -> i64 {
    let Some(epoch) = progress.iter().map(|p| p.0).max() else { return 0 };
    progress.iter().filter(|p| p.0 == epoch).map(|p| p.2).min().unwrap_or(0)
}

impl ScyllaStore {
    pub(super) async fn read_totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        let statements = &self.inner.statements;
        let (progress, boundary) = futures::try_join!(
            self.select::<(i32, i32, i64)>(&statements.read_progress, ()),
            self.select::<(Option<i64>,)>(&statements.read_boundary, ()),
        )?;
        let as_of_ms = as_of(&progress);
        let boundary = boundary.first().and_then(|row| row.0);
        let concurrency = self.inner.config.concurrency.max(1);
        stream::iter(videos)
            .map(|video_id| async move {
                let Some(boundary) = boundary else {
                    let rows = self.select::<(i64,)>(&statements.read_totals, (video_id.as_str(),)).await?;
                    let views = rows.iter().map(|r| r.0).sum();
                    return Ok(Total { video_id, views, as_of_ms, batch_views: 0, exact_through_ms: None });
                };
                let video = video_id.as_str();
                let (batch, after) = futures::try_join!(
                    self.select::<(i64,)>(&statements.read_batch_total, (video,)),
                    self.select::<(i64, i64)>(&statements.read_minutes_from, (video, boundary, i64::MAX)),
                )?;
                let batch_views: i64 = batch.iter().map(|r| r.0).sum();
                let after: i64 = after.iter().map(|r| r.1).sum();
                Ok(Total {
                    video_id,
                    views: batch_views + after,
                    as_of_ms,
                    batch_views,
                    exact_through_ms: Some(boundary),
                })
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
        crate::check_range(from_ms, to_ms)?;
        let granularity = match step {
            Granularity::Minute => MINUTE,
            Granularity::Hour => HOUR,
            Granularity::Day => DAY,
        };
        let rows = self
            .select::<(i64, i64)>(
                &self.inner.statements.read_series,
                (video.as_str(), granularity, step.bucket(from_ms), to_ms),
            )
            .await?;
        // Salts and source partitions are summed per bucket.
        let mut buckets: BTreeMap<i64, i64> = BTreeMap::new();
        for (bucket, views) in rows {
            *buckets.entry(bucket).or_default() += views;
        }
        Ok(buckets.into_iter().map(|(bucket_ms, views)| Point { bucket_ms, views }).collect())
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
    fn as_of_trails_the_slowest_partition_of_the_newest_epoch() {
        assert_eq!(as_of(&[]), 0);
        assert_eq!(as_of(&[(0, 0, 500), (0, 1, 300), (1, 0, 200), (1, 1, 250)]), 200);
        assert_eq!(as_of(&[(0, 0, 500), (0, 1, 300)]), 300);
    }
}
