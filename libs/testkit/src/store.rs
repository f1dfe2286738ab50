//! A count store that a test can switch off, to prove degradation paths.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_model::counts::Owner;
use tally_store::{
    ApplyOutcome, CountStore, CountsEntry, Granularity, PeriodSummary, PeriodUniques, Point, StoreError, Total,
    UniquesRead,
};

/// Wraps a store; while `down` is set every call fails as unavailable, and
/// reads can be slowed down.
#[derive(Clone)]
pub struct SwitchableStore<S> {
    inner: S,
    down: Arc<AtomicBool>,
    read_delay_ms: Arc<AtomicU64>,
}

impl<S: CountStore> SwitchableStore<S> {
    /// Wraps `inner`, initially up.
    pub fn new(inner: S) -> Self {
        Self { inner, down: Arc::new(AtomicBool::new(false)), read_delay_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Makes every `totals` read take at least `delay`.
    pub fn set_read_delay(&self, delay: Duration) {
        self.read_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes the store (un)available.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("switched off by the test".into()));
        }
        Ok(())
    }
}

impl<S: CountStore> CountStore for SwitchableStore<S> {
    async fn apply(&self, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
        self.check()?;
        self.inner.apply(entries).await
    }
    async fn owners(&self) -> Result<Vec<(u32, Owner)>, StoreError> {
        self.check()?;
        self.inner.owners().await
    }
    async fn totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        self.check()?;
        let delay = self.read_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.inner.totals(videos).await
    }
    async fn series(&self, video: String, from: i64, to: i64, step: Granularity) -> Result<Vec<Point>, StoreError> {
        self.check()?;
        self.inner.series(video, from, to, step).await
    }
    async fn realtime_minutes(&self, from: i64, to: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.check()?;
        self.inner.realtime_minutes(from, to).await
    }
    async fn replace_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        uniques: Option<PeriodUniques>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.replace_batch(period, minutes, uniques).await
    }
    async fn uniques(&self, video: String, from: i64, to: i64) -> Result<UniquesRead, StoreError> {
        self.check()?;
        self.inner.uniques(video, from, to).await
    }
    async fn trending(&self, from: i64, to: i64) -> Result<tally_model::trending::Merged, StoreError> {
        self.check()?;
        self.inner.trending(from, to).await
    }

    async fn trending_versions(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<tally_store::trending::RowVersion>, StoreError> {
        self.check()?;
        self.inner.trending_versions(from, to).await
    }

    async fn trending_rows(&self, from: i64, to: i64) -> Result<Vec<tally_store::trending::TrendingRow>, StoreError> {
        self.check()?;
        self.inner.trending_rows(from, to).await
    }

    async fn window_views(&self, videos: Vec<String>, from: i64, to: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.check()?;
        self.inner.window_views(videos, from, to).await
    }

    async fn periods(&self) -> Result<Vec<PeriodSummary>, StoreError> {
        self.check()?;
        self.inner.periods().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
}
