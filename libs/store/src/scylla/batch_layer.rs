//! The reconciler's tables. Replacing a period deletes its previous batch
//! rows at generation `g` and writes the new ones at `g + 1` (cell
//! timestamps), so a rerun, or a rerun after a crash half way, converges on
//! the same state.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt, TryStreamExt};

use super::ScyllaStore;
use crate::model::{PeriodSummary, PeriodUniques};
use crate::StoreError;

/// A generation timestamp (microseconds) after every one handed out before.
fn next_generation(last: &std::sync::atomic::AtomicI64, now_micros: i64) -> i64 {
    use std::sync::atomic::Ordering;
    // Two apart: the delete takes `g`, the writes `g + 1`.
    let mut previous = last.load(Ordering::Relaxed);
    loop {
        let next = now_micros.max(previous + 2);
        match last.compare_exchange(previous, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => previous = seen,
        }
    }
}

impl ScyllaStore {
    pub(super) async fn write_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        uniques: Option<PeriodUniques>,
    ) -> Result<(), StoreError> {
        let statements = &self.inner.statements;
        let concurrency = self.inner.config.concurrency.max(1);
        let now_micros = tally_model::timestamp::now_ms().saturating_mul(1000);
        let generation = next_generation(&self.inner.generation, now_micros);
        let start = period.start_ms;
        let stored: Vec<(i64, i64)> = self.batch_state().await?.periods;
        crate::layers::check_period(start, period.end_ms, &minutes, &stored)?;
        if let Some(uniques) = &uniques {
            crate::uniques::check_period_uniques(&period, uniques)?;
        }
        let previous: BTreeSet<String> = self
            .select::<(String, i64)>(&statements.read_period_videos, (start,))
            .await?
            .into_iter()
            .map(|row| row.0)
            .collect();
        self.run(&statements.delete_period_minutes, (generation, start)).await?;
        let mut per_video: BTreeMap<String, i64> = BTreeMap::new();
        for (video, _, views) in &minutes {
            *per_video.entry(video.clone()).or_default() += views;
        }
        let written = generation + 1;
        stream::iter(minutes)
            .map(|(video, minute, views)| async move {
                self.run(&statements.write_batch_minute, (start, video.as_str(), minute, views, written)).await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let gone: Vec<String> = previous.into_iter().filter(|v| !per_video.contains_key(v)).collect();
        stream::iter(gone)
            .map(|video| async move {
                self.run(&statements.delete_batch_by_video, (generation, video.as_str(), start)).await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        stream::iter(per_video)
            .map(|(video, views)| async move {
                self.run(&statements.write_batch_by_video, (video.as_str(), start, views, written)).await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        if let Some(uniques) = &uniques {
            self.write_batch_uniques(&period, uniques, generation).await?;
        }
        // Last: the period counts as reconciled only once its rows are in.
        self.run(&statements.write_period, (start, period.end_ms, period.batch_views, period.realtime_views, written))
            .await
    }

    pub(super) async fn read_periods(&self) -> Result<Vec<PeriodSummary>, StoreError> {
        let rows = self.select::<(i64, i64, i64, i64)>(&self.inner.statements.read_periods, ()).await?;
        Ok(rows
            .into_iter()
            .map(|(start_ms, end_ms, batch_views, realtime_views)| PeriodSummary {
                start_ms,
                end_ms,
                batch_views,
                realtime_views,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;

    #[test]
    fn generations_always_move_forward_even_when_the_clock_does_not() {
        let last = AtomicI64::new(0);
        let first = next_generation(&last, 1_000);
        assert_eq!(first, 1_000);
        let second = next_generation(&last, 1_000);
        assert_eq!(second, 1_002, "same clock reading: two past the previous one");
        let third = next_generation(&last, 500);
        assert_eq!(third, 1_004, "clock went back");
        assert_eq!(next_generation(&last, 9_000), 9_000);
    }
}
