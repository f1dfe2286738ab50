//! Trending sketches: what applying the sketches of a batch writes, as pure
//! functions both stores share.
//!
//! One row per `(minute, source partition)`: the sum of the minute's
//! frequent-items sketches of every flush applied to it, with the version of
//! the last one ([`tally_model::trending`]). Summing is not idempotent, so a
//! sketch is added only when its flush's version is newer than the row's: a
//! replayed or re-emitted range (same version) changes nothing, as for
//! minute count rows.
//!
//! Reads sum the rows of every source partition over the minutes of a
//! window; the query service then reads the candidates' exact counts
//! ([`crate::CountStore::window_views`]). [`hours`] keeps sums of closed
//! hours between reads, so a day's window stops re-reading them.

pub mod hours;

use std::collections::{BTreeMap, HashMap};

use tally_model::counts::FlushChunk;
use tally_model::trending;

use crate::StoreError;

/// One trending sketch of one flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrendingUpdate {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    /// Source partition of the flush (the row's owner).
    pub source_partition: i32,
    /// The flush's version.
    pub version: i64,
    /// The sketch (DataSketches frequent-items serialization).
    pub sketch: Vec<u8>,
}

/// The trending updates of admitted chunks, in log order.
pub fn updates(chunks: &[FlushChunk]) -> Vec<TrendingUpdate> {
    chunks
        .iter()
        .flat_map(|chunk| {
            let h = chunk.header;
            chunk.trending.iter().map(move |s| TrendingUpdate {
                minute: s.minute,
                source_partition: i32::try_from(h.source_partition).unwrap_or(i32::MAX),
                version: h.version(),
                sketch: s.sketch.clone(),
            })
        })
        .collect()
}

/// The key and version of a stored row (its sketch left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowVersion {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    /// The row's source partition.
    pub source_partition: i32,
    /// Version of the last flush added to the row.
    pub version: i64,
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrendingRow {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    /// The row's source partition.
    pub source_partition: i32,
    /// Version of the last flush added to the row.
    pub version: i64,
    /// The sum of the sketches added (DataSketches frequent-items serialization).
    pub sketch: Vec<u8>,
}

/// A row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrendingWrite {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    /// The row's source partition.
    pub source_partition: i32,
    /// The new sum.
    pub sketch: Vec<u8>,
    /// Version of the last flush added (also the cell timestamp of the ScyllaDB store).
    pub version: i64,
}

/// What a batch's updates come to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrendingPlan {
    /// Rows to write, each once with its final value.
    pub writes: Vec<TrendingWrite>,
    /// Sketches added.
    pub applied: u64,
    /// Sketches whose row already had their version or a newer one.
    pub stale: u64,
}

/// The `(minute, source partition)` rows `updates` touch.
pub fn keys(updates: &[TrendingUpdate]) -> Vec<(i64, i32)> {
    let mut keys: Vec<(i64, i32)> = updates.iter().map(|u| (u.minute, u.source_partition)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Applies `updates` (in log order) over the stored rows `current`
/// (`(minute, source partition)` → (sketch, version)).
pub fn plan(
    updates: &[TrendingUpdate],
    mut current: HashMap<(i64, i32), (Vec<u8>, i64)>,
) -> Result<TrendingPlan, StoreError> {
    let mut plan = TrendingPlan::default();
    let mut written: BTreeMap<(i64, i32), i64> = BTreeMap::new();
    for update in updates {
        let key = (update.minute, update.source_partition);
        let stored = current.get(&key);
        if stored.is_some_and(|(_, version)| *version >= update.version) {
            plan.stale += 1;
            continue;
        }
        let sum = trending::merge_bytes(stored.map(|(bytes, _)| bytes.as_slice()), &update.sketch)
            .map_err(|e| StoreError::Invalid(format!("trending sketch: {e}")))?;
        current.insert(key, (sum, update.version));
        written.insert(key, update.version);
        plan.applied += 1;
    }
    for ((minute, source_partition), version) in written {
        let (sketch, _) = current.remove(&(minute, source_partition)).unwrap_or_default();
        plan.writes.push(TrendingWrite { minute, source_partition, sketch, version });
    }
    Ok(plan)
}

/// The minute-aligned window `[from, to)` a trending read covers: the
/// minute holding `from_ms` through the one holding the last millisecond
/// before `to_ms`.
pub fn window(from_ms: i64, to_ms: i64) -> Result<(i64, i64), StoreError> {
    crate::layers::series_range(from_ms, to_ms, crate::Granularity::Minute)
}

/// A trending answer: the top videos of a window by exact views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trending {
    /// First minute of the window, epoch ms.
    pub from_ms: i64,
    /// End of the window (exclusive), epoch ms.
    pub to_ms: i64,
    /// `(video, views in the window)`, most views first (ties by video id).
    pub videos: Vec<(String, i64)>,
    /// No video left out had more views than this in the window, as far as
    /// the sketches saw them ([`tally_model::trending::Candidates::error_bound`]).
    pub error_bound: u64,
    /// Whether the list is provably the top: the last listed count is at
    /// least `error_bound`, or every video the sketches saw is listed.
    pub complete: bool,
    /// Candidates whose exact views were read.
    pub candidates: usize,
    /// Stored minute sketches the window's sum holds (those inside cached hour sums included).
    pub sketches: usize,
}

/// The `limit` videos with the most views in the window: candidates from
/// the summed sketches (at most `max_candidates`), ranked by their exact
/// views read from `store`.
pub async fn top<S: crate::CountStore>(
    store: &S,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
    max_candidates: usize,
) -> Result<Trending, StoreError> {
    let (from, to) = window(from_ms, to_ms)?;
    let merged = store.trending(from, to).await?;
    rank(store, &merged, (from, to), limit, max_candidates).await
}

/// The top of the minute-aligned `window` whose sketches sum to `merged`:
/// its candidates ranked by their exact views.
pub(crate) async fn rank<S: crate::CountStore>(
    store: &S,
    merged: &trending::Merged,
    (from, to): (i64, i64),
    limit: usize,
    max_candidates: usize,
) -> Result<Trending, StoreError> {
    let candidates = merged.candidates(limit, max_candidates);
    let read = candidates.videos.len();
    let mut videos = store.window_views(candidates.videos, from, to).await?;
    videos.retain(|(_, views)| *views > 0);
    videos.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let everyone = videos.len() < limit && candidates.error_bound == 0;
    videos.truncate(limit);
    let last = videos.last().map_or(0, |v| u64::try_from(v.1).unwrap_or(0));
    let complete = everyone || (videos.len() == limit && last >= candidates.error_bound);
    Ok(Trending {
        from_ms: from,
        to_ms: to,
        videos,
        error_bound: candidates.error_bound,
        complete,
        candidates: read,
        sketches: merged.inputs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: i64, minute: i64, views: &[(&str, u64)]) -> TrendingUpdate {
        let sketch = trending::sketch_of(6, views.iter().copied()).unwrap();
        TrendingUpdate { minute, source_partition: 1, version, sketch }
    }

    fn estimate(bytes: &[u8], video: &str) -> u64 {
        trending::deserialize(bytes).unwrap().estimate(video)
    }

    #[test]
    fn newer_flushes_add_and_replays_are_stale() {
        let first = plan(&[update(10, 0, &[("a", 3)]), update(20, 0, &[("a", 2), ("b", 1)])], HashMap::new()).unwrap();
        assert_eq!((first.applied, first.stale, first.writes.len()), (2, 0, 1));
        let row = &first.writes[0];
        assert_eq!((estimate(&row.sketch, "a"), estimate(&row.sketch, "b"), row.version), (5, 1, 20));
        let current = HashMap::from([((0, 1), (row.sketch.clone(), row.version))]);
        let replay = plan(&[update(10, 0, &[("a", 3)]), update(20, 0, &[("a", 2)])], current.clone()).unwrap();
        assert_eq!((replay.applied, replay.stale), (0, 2));
        assert!(replay.writes.is_empty(), "a replay writes nothing");
        let next = plan(&[update(30, 0, &[("b", 4)]), update(30, 60_000, &[("c", 1)])], current).unwrap();
        assert_eq!(next.writes.len(), 2);
        assert_eq!(estimate(&next.writes[0].sketch, "b"), 5);
    }

    #[test]
    fn a_damaged_stored_sketch_is_an_invalid_request() {
        let current = HashMap::from([((0, 1), (b"junk".to_vec(), 1))]);
        assert!(matches!(plan(&[update(2, 0, &[("a", 1)])], current), Err(StoreError::Invalid(_))));
    }
}
