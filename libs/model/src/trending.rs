//! Trending videos: frequent-items sketches (Apache DataSketches
//! `frequencies`, a Misra-Gries variant) of the views of each minute, and
//! how the query side picks its candidates from them.
//!
//! A counter flush carries, per minute it touched, one sketch of `(video,
//! views)` built from its own deltas (salts merged). The writer keeps one
//! row per `(minute, source partition)`: the sum of the sketches of the
//! flushes applied to it. Unlike an HLL union, summing frequency sketches is
//! not idempotent, so a row takes a flush's sketch only when the flush's
//! version is newer than the row's (as minute count rows do): a replayed or
//! re-emitted range changes nothing.
//!
//! Accuracy: a sketch of `2^lg` slots keeps up to `0.75 × 2^lg` videos
//! exactly; beyond, every estimate is within the sketch's maximum error
//! (at most `3.5 / 2^lg` of the views it saw, usually far less). Merged
//! sketches add their maximum errors, so the candidates of a window carry
//! one bound that holds for every video ([`Candidates::error_bound`]).
//! That holds for any tree of merges, not only one flat pass: a window may
//! be summed from per-hour sums of its minutes ([`Merged::absorb`]), whose
//! maximum errors (each the sum of its minutes' plus its own purges) add
//! up in the window's sum exactly as the minutes' would.

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};

/// log2 of the slots of the sketches a counter builds unless configured otherwise.
pub const DEFAULT_LG_MAX_MAP_SIZE: u8 = 11;

/// Smallest and largest log2 of slots accepted (the library allows 3 to 30;
/// past 2^16 slots a minute's sketch of one partition would dwarf its deltas).
pub const LG_MAX_MAP_SIZE_RANGE: std::ops::RangeInclusive<u8> = 3..=16;

/// log2 of the slots of the sketch a query merges a window into.
const MERGE_LG_MAX_MAP_SIZE: u8 = 14;

/// Why a sketch could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrendingError {
    /// The bytes are not a DataSketches frequent-items sketch of strings.
    #[error("not a frequent-items sketch: {0}")]
    Malformed(String),
    /// Slots outside [`LG_MAX_MAP_SIZE_RANGE`].
    #[error("lg-max-map-size {0} is outside 3..=16")]
    LgMaxMapSize(u8),
}

/// The sketch type (re-exported: services need no direct dependency).
pub type ItemsSketch = FrequentItemsSketch<String>;

/// An empty sketch of `2^lg` slots.
pub fn new_sketch(lg: u8) -> Result<ItemsSketch, TrendingError> {
    if !LG_MAX_MAP_SIZE_RANGE.contains(&lg) {
        return Err(TrendingError::LgMaxMapSize(lg));
    }
    ItemsSketch::new(1 << lg).map_err(|_| TrendingError::LgMaxMapSize(lg))
}

/// The serialized sketch of one minute's `(video, views)` (a video may repeat: its views add up).
pub fn sketch_of<'a>(lg: u8, views: impl Iterator<Item = (&'a str, u64)>) -> Result<Vec<u8>, TrendingError> {
    let mut sketch = new_sketch(lg)?;
    for (video, count) in views {
        sketch.update_with_count_ref(video, count);
    }
    Ok(sketch.serialize())
}

/// Reads a serialized sketch.
pub fn deserialize(bytes: &[u8]) -> Result<ItemsSketch, TrendingError> {
    ItemsSketch::deserialize(bytes).map_err(|e| TrendingError::Malformed(e.to_string()))
}

/// `stored` (when any) plus `incoming`, serialized: the write both stores
/// make to a `(minute, source partition)` row (only for a newer flush).
pub fn merge_bytes(stored: Option<&[u8]>, incoming: &[u8]) -> Result<Vec<u8>, TrendingError> {
    let incoming = deserialize(incoming)?;
    let Some(stored) = stored else { return Ok(incoming.serialize()) };
    let mut stored = deserialize(stored)?;
    stored.merge(&incoming);
    Ok(stored.serialize())
}

/// The sum of the sketches of a window, built up one at a time.
pub struct Merged {
    sketch: ItemsSketch,
    inputs: usize,
}

impl Default for Merged {
    fn default() -> Self {
        let sketch = new_sketch(MERGE_LG_MAX_MAP_SIZE).unwrap_or_else(|_| unreachable!("14 is in range"));
        Self { sketch, inputs: 0 }
    }
}

/// The videos whose exact counts a trending answer reads, and what the
/// sketches guarantee about the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// Candidate videos, most likely first.
    pub videos: Vec<String>,
    /// No video outside `videos` had more than this many views in the
    /// window (the views the sketches saw). When the `limit`-th largest
    /// exact count of the candidates is at least this, the top `limit` of
    /// the candidates is the top `limit` of every video (ties aside).
    pub error_bound: u64,
    /// Views the merged sketches saw.
    pub total_views: u64,
}

impl Merged {
    /// Adds one serialized sketch.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), TrendingError> {
        self.sketch.merge(&deserialize(bytes)?);
        self.inputs += 1;
        Ok(())
    }

    /// Adds another sum: its views, its maximum error and its inputs (the
    /// stored sketches it was built from). Adding the same sum twice counts
    /// its views twice, as for [`Merged::add`].
    pub fn absorb(&mut self, other: &Merged) {
        self.sketch.merge(&other.sketch);
        self.inputs += other.inputs;
    }

    /// How many stored sketches were added, directly or through [`Merged::absorb`].
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The candidates for a top `limit`, at most `max_candidates` of them
    /// (at least `limit`).
    ///
    /// Let `T` be the `limit`-th largest lower bound. Every video whose upper
    /// bound reaches `T` is a candidate: a video below it has fewer views
    /// than `limit` candidates surely have, so it cannot be in the top
    /// `limit`. When the cap cuts candidates off, the bound rises to the
    /// largest upper bound cut off.
    pub fn candidates(&self, limit: usize, max_candidates: usize) -> Candidates {
        let mut rows = self.sketch.frequent_items_with_threshold(ErrorType::NoFalseNegatives, 0);
        rows.sort_by(|a, b| b.upper_bound().cmp(&a.upper_bound()).then_with(|| a.item().cmp(b.item())));
        let mut lower: Vec<u64> = rows.iter().map(|r| r.lower_bound()).collect();
        lower.sort_unstable_by(|a, b| b.cmp(a));
        let threshold = lower.get(limit.max(1) - 1).copied().unwrap_or(0);
        let cap = max_candidates.max(limit);
        let wanted = rows.iter().take_while(|r| r.upper_bound() >= threshold).count();
        let taken = wanted.min(cap);
        let cut_off = rows.get(taken).map_or(0, |r| r.upper_bound());
        let absent = self.sketch.maximum_error();
        Candidates {
            videos: rows.into_iter().take(taken).map(|r| r.item().clone()).collect(),
            error_bound: absent.max(cut_off),
            total_views: self.sketch.total_weight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_minutes_are_exact_and_replays_are_the_callers_business() {
        let bytes = sketch_of(4, [("a", 3), ("b", 1), ("a", 2)].into_iter()).unwrap();
        let sketch = deserialize(&bytes).unwrap();
        assert_eq!((sketch.estimate("a"), sketch.estimate("b"), sketch.maximum_error()), (5, 1, 0));
        let twice = merge_bytes(Some(&bytes), &bytes).unwrap();
        assert_eq!(deserialize(&twice).unwrap().estimate("a"), 10, "frequency sketches add: rows must be versioned");
    }

    #[test]
    fn the_same_views_give_the_same_bytes() {
        let views = || (0..5_000u64).map(|i| (format!("v{}", i % 1_700), i % 7 + 1)).collect::<Vec<_>>();
        let a = views();
        let b = views();
        let bytes = |v: &[(String, u64)]| sketch_of(8, v.iter().map(|(s, c)| (s.as_str(), *c))).unwrap();
        assert_eq!(bytes(&a), bytes(&b), "a re-emitted flush is byte-identical");
    }

    #[test]
    fn candidates_hold_every_video_that_can_reach_the_top() {
        let mut merged = Merged::default();
        for minute in 0..3u64 {
            let views: Vec<(String, u64)> =
                (0..2_000u64).map(|i| (format!("v{i}"), if i < 5 { 1_000 - i * 10 + minute } else { 1 })).collect();
            merged.add(&sketch_of(6, views.iter().map(|(v, c)| (v.as_str(), *c))).unwrap()).unwrap();
        }
        let candidates = merged.candidates(3, 10);
        assert_eq!(candidates.videos[..3], ["v0", "v1", "v2"]);
        assert!(candidates.error_bound < 2_900, "{candidates:?}");
        assert_eq!(candidates.total_views, 20_700);
        assert_eq!(merged.inputs(), 3);
    }

    #[test]
    fn a_window_summed_from_hour_sums_keeps_a_true_error_bound() {
        // Minutes of 3,000 videos in sketches of 64 slots: every minute
        // purges, and so do the hour sums once enough distinct videos reach them.
        let minute_views = |minute: u64| -> Vec<(String, u64)> {
            (0..3_000u64).map(|i| (format!("v{}", (i * 7 + minute * 131) % 20_000), 1 + (i % 5) * (i % 3))).collect()
        };
        let mut truth: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut by_hours = Merged::default();
        for hour in 0..6u64 {
            let mut hour_sum = Merged::default();
            for minute in hour * 60..hour * 60 + 60 {
                let views = minute_views(minute);
                for (video, n) in &views {
                    *truth.entry(video.clone()).or_default() += n;
                }
                let bytes = sketch_of(6, views.iter().map(|(v, n)| (v.as_str(), *n))).unwrap();
                hour_sum.add(&bytes).unwrap();
            }
            by_hours.absorb(&hour_sum);
        }
        assert_eq!(by_hours.inputs(), 360);
        let candidates = by_hours.candidates(10, 50);
        assert!(candidates.error_bound > 0, "the sketches purged: the bound is not trivially exact");
        for (video, views) in &truth {
            if !candidates.videos.contains(video) {
                assert!(*views <= candidates.error_bound, "{video}: {views} views above the bound {candidates:?}");
            }
        }
        assert_eq!(candidates.total_views, truth.values().sum::<u64>());
    }

    #[test]
    fn garbage_and_bad_sizes_are_refused() {
        assert!(matches!(deserialize(b"junk"), Err(TrendingError::Malformed(_))));
        assert_eq!(new_sketch(2).err(), Some(TrendingError::LgMaxMapSize(2)));
        assert_eq!(new_sketch(17).err(), Some(TrendingError::LgMaxMapSize(17)));
    }
}
