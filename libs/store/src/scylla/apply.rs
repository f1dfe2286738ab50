//! The write path: fence the batch, then chunks → per-video updates → read,
//! plan, one single-partition batch each; then the `as_of` progress, then
//! the owners the batch's claims moved.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use tally_model::counts::{FlushChunk, Owner};

use super::plan::{self, Current, VideoUpdate, MINUTE};
use super::{from_execution, ScyllaStore, INDEXED_MEMORY, INDEX_SHARDS};
use crate::fence::{admit, token_from_db, token_to_db};
use crate::model::{ApplyOutcome, CountsEntry};
use crate::StoreError;

/// `videos_by_hour` shard of a video.
pub(super) fn index_shard(video_id: &str) -> i16 {
    let hash = xxhash_rust::xxh3::xxh3_64(video_id.as_bytes());
    i16::try_from(hash % u64::from(INDEX_SHARDS.unsigned_abs())).unwrap_or(0)
}

fn ttl_seconds(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX)
}

impl ScyllaStore {
    pub(super) async fn apply_entries(&self, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
        let admitted = admit(self.read_owners().await?, entries);
        let sketches = crate::uniques::grouped(&admitted.chunks);
        let trending = crate::trending::updates(&admitted.chunks);
        let outcome = self
            .apply_chunks(admitted.chunks)
            .await?
            .plus(self.apply_sketches(sketches).await?)
            .plus(self.apply_trending(trending).await?);
        for (partition, owner) in admitted.owners {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            // Adopted owners (claim offset -1) get timestamp 0: any claim beats them.
            let timestamp = owner.claim_offset.saturating_add(1).max(0);
            self.run(
                &self.inner.statements.write_owner,
                (partition, token_to_db(owner.owner), owner.claim_offset, timestamp),
            )
            .await?;
        }
        Ok(outcome.plus(admitted.fenced))
    }

    pub(super) async fn read_owners(&self) -> Result<Vec<(u32, Owner)>, StoreError> {
        let rows = self.select::<(i32, i64, i64)>(&self.inner.statements.read_owners, ()).await?;
        Ok(rows
            .into_iter()
            .map(|(partition, owner, claim_offset)| {
                (u32::try_from(partition).unwrap_or(0), Owner { owner: token_from_db(owner), claim_offset })
            })
            .collect())
    }

    async fn apply_chunks(&self, chunks: Vec<FlushChunk>) -> Result<ApplyOutcome, StoreError> {
        // Updates of one (video, source partition) must run in log order; they
        // read what the previous one wrote.
        let mut groups: BTreeMap<(String, i32), Vec<VideoUpdate>> = BTreeMap::new();
        let mut progress: HashMap<(u32, u32), i64> = HashMap::new();
        for chunk in &chunks {
            for update in plan::updates(chunk)? {
                groups.entry((update.video_id.clone(), update.source_partition)).or_default().push(update);
            }
            let h = chunk.header;
            if h.max_received_ms > 0 {
                let newest = progress.entry((h.epoch, h.source_partition)).or_default();
                *newest = (*newest).max(h.max_received_ms);
            }
        }
        // Index first: a video with counted minutes is always listed for its hour.
        self.index_videos(groups.values().flatten()).await?;
        let concurrency = self.inner.config.concurrency.max(1);
        let outcomes: Vec<ApplyOutcome> = stream::iter(groups.into_values().map(|updates| async move {
            let mut outcome = ApplyOutcome::default();
            for update in updates {
                let applied = self.apply_update(&update).await?;
                outcome.applied += applied.applied;
                outcome.stale += applied.stale;
            }
            Ok::<_, StoreError>(outcome)
        }))
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
        for ((epoch, partition), max_received_ms) in progress {
            let (epoch, partition) = (i32::try_from(epoch).unwrap_or(i32::MAX), i32::try_from(partition).unwrap_or(0));
            // The timestamp makes the newest receive time win whatever the order of writes.
            let timestamp = max_received_ms.saturating_mul(1000);
            self.run(&self.inner.statements.write_progress, (epoch, partition, max_received_ms, timestamp)).await?;
        }
        Ok(outcomes.into_iter().fold(ApplyOutcome::default(), ApplyOutcome::plus))
    }

    async fn index_videos(&self, updates: impl Iterator<Item = &VideoUpdate>) -> Result<(), StoreError> {
        let mut wanted: Vec<(i64, String)> = updates
            .flat_map(|u| u.hours().into_iter().map(|hour| (hour, u.video_id.clone())))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        {
            let indexed = self.inner.indexed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            wanted.retain(|pair| !indexed.contains(pair));
        }
        let concurrency = self.inner.config.concurrency.max(1);
        stream::iter(wanted.clone())
            .map(|(hour, video)| async move {
                self.run(&self.inner.statements.index_video, (hour, index_shard(&video), video.as_str())).await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let mut indexed = self.inner.indexed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if indexed.len() + wanted.len() > INDEXED_MEMORY {
            indexed.clear();
        }
        indexed.extend(wanted);
        Ok(())
    }

    async fn apply_update(&self, update: &VideoUpdate) -> Result<ApplyOutcome, StoreError> {
        let current = self.read_current(update).await?;
        let plan = plan::plan(update, &current);
        if !plan.rows.is_empty() {
            let statements = &self.inner.statements;
            let ttl = ttl_seconds(self.inner.config.minute_ttl);
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(plan.rows.len());
            for row in &plan.rows {
                batch.append_statement(statements.write_row.clone());
                values.push((
                    update.video_id.as_str(),
                    row.granularity,
                    row.bucket,
                    row.salt,
                    update.source_partition,
                    row.views,
                    update.version,
                    update.version,
                    if row.granularity == MINUTE { ttl } else { 0 },
                ));
            }
            batch.set_is_idempotent(true);
            self.inner.session.batch(&batch, values).await.map_err(from_execution)?;
        }
        Ok(ApplyOutcome { applied: plan.applied, stale: plan.stale, ..ApplyOutcome::default() })
    }

    async fn read_current(&self, update: &VideoUpdate) -> Result<Current, StoreError> {
        let statements = &self.inner.statements;
        let (first, last) = update.minute_range();
        let wanted = update.rollup_keys();
        let mut buckets: Vec<i64> = wanted.iter().map(|(_, bucket)| *bucket).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let video = update.video_id.as_str();
        let (minutes, rollups) = futures::try_join!(
            self.select::<(i64, i16, i32, i64, Option<i64>)>(&statements.read_minutes, (video, first, last)),
            self.select::<(i8, i64, i32, i64)>(&statements.read_rollups, (video, buckets)),
        )?;
        let mut current = Current::default();
        for (minute, salt, partition, views, version) in minutes {
            if partition == update.source_partition {
                current.minutes.insert((minute, salt), (views, version.unwrap_or(i64::MIN)));
            }
        }
        for (granularity, bucket, partition, views) in rollups {
            if partition == update.source_partition && wanted.binary_search(&(granularity, bucket)).is_ok() {
                current.rollups.insert((granularity, bucket), views);
            }
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_shards_are_stable_and_in_range() {
        let shards: Vec<i16> = (0..1000).map(|i| index_shard(&format!("video-{i}"))).collect();
        assert!(shards.iter().all(|s| (0..INDEX_SHARDS).contains(s)));
        assert_eq!(index_shard("video-7"), shards[7]);
        let distinct: std::collections::HashSet<_> = shards.into_iter().collect();
        assert_eq!(distinct.len(), usize::try_from(INDEX_SHARDS).unwrap(), "every shard used");
    }

    #[test]
    fn a_zero_ttl_keeps_minute_rows() {
        assert_eq!(ttl_seconds(Duration::ZERO), 0);
        assert_eq!(ttl_seconds(Duration::from_secs(86_400 * 40)), 3_456_000);
    }
}
