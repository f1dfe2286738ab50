//! Sums of closed hours kept between trending reads, so a 24-hour window
//! stops re-reading and re-summing its 1,440 minutes of sketches (per
//! source partition) every refresh.
//!
//! A window `[from, to)` (on minutes) splits into:
//! - the whole UTC hours from the first hour boundary at or after `from` up
//!   to the hour holding the window's last minute: *cached hours*, one sum of
//!   every minute and source partition of the hour each;
//! - the minutes before the first of them (the partial hour the window
//!   starts in) and from the hour holding its last minute to `to` (the open
//!   hour, still being written): *edges*, read as minute rows every time.
//!
//! Each read first asks the store for the versions of the cached hours' rows
//! ([`crate::CountStore::trending_versions`], no sketch bytes) and reduces
//! them to one [`Fingerprint`] per hour. An hour whose fingerprint equals the
//! one its sum was built from is reused; any other is rebuilt from its rows
//! ([`crate::CountStore::trending_rows`]), and the new sum keeps the
//! fingerprint of the rows it was actually built from, so a row that changes
//! between the two reads makes the next read rebuild the hour again, never
//! keeps a sum that misses it.
//!
//! Why a fingerprint finds every change: a row is rewritten only with a
//! newer flush version ([`super::plan`]), so any rewrite raises the hour's
//! sum of versions; a new row raises its row count; rows are never deleted
//! (a retention that dropped some would lower the count). A late flush to a
//! minute of a cached hour is therefore in the next read's answer.
//!
//! Why sums are rebuilt, never patched: frequent-items sums are not
//! idempotent (adding a sketch twice counts its views twice), and a row's
//! new value already holds its old one, so a changed hour is summed again
//! from all its rows. The window's sum absorbs each hour's sum once; the
//! maximum errors of the hour sums add up in it as the minutes' would in a
//! flat sum ([`tally_model::trending`]), so [`Candidates::error_bound`]
//! stays a true bound, and the candidates' views are still read exactly.
//! When the window's sum overflows its slots, it purges at other points than
//! a flat sum of the minutes would, so the candidates and the bound may
//! differ slightly from the uncached read's; both bounds are true, and a
//! `complete` answer is the same exact top either way.
//!
//! Why in the query process and not a rollup the writer keeps: a stored hour
//! sum would be rewritten (read, merged, written: a blob of up to 16,384
//! slots) by every batch touching the hour, a hot row on the write path;
//! here a closed hour is summed once per query process, and a late minute
//! costs one hour's re-read. The price is memory:
//! one sum of up to 16,384 videos (about 1 MiB) per cached hour, 24 of them
//! for a day's window.
//!
//! [`Candidates::error_bound`]: tally_model::trending::Candidates::error_bound

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tally_model::trending::Merged;

use super::{rank, window, RowVersion, Trending};
use crate::model::Granularity;
use crate::{CountStore, StoreError};

const HOUR_MS: i64 = Granularity::Hour.millis();

/// What the rows of one hour were when its sum was built: a row rewritten,
/// added or dropped changes it (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Rows in the hour.
    pub rows: u64,
    /// Sum of their versions (no overflow: i128 holds 2^64 rows of any i64).
    pub version_sum: i128,
    /// Largest of their versions (`i64::MIN` when there are none).
    pub max_version: i64,
}

impl Fingerprint {
    /// The fingerprint of no rows.
    const EMPTY: Self = Self { rows: 0, version_sum: 0, max_version: i64::MIN };

    fn add(&mut self, version: i64) {
        self.rows += 1;
        self.version_sum += i128::from(version);
        self.max_version = self.max_version.max(version);
    }
}

/// What one read did with the cached hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourStats {
    /// Hours whose cached sum was current.
    pub reused: u64,
    /// Hours summed again from their rows (new, or changed since).
    pub rebuilt: u64,
    /// Minute rows read for the edges and the rebuilt hours.
    pub rows_read: u64,
}

/// One cached hour: its sum and the fingerprint of the rows summed.
struct CachedHour {
    fingerprint: Fingerprint,
    merged: Merged,
}

/// Sums of closed hours, keyed by the hour's first millisecond. Shared by
/// every read of a process (cheap to share behind an `Arc`); reads of
/// different windows at once may rebuild the same hour twice, which costs
/// time, never correctness (the last one built is kept).
pub struct HourCache {
    hours: Mutex<BTreeMap<i64, Arc<CachedHour>>>,
    keep_ms: i64,
}

impl HourCache {
    /// A cache for windows up to `longest_window_ms` long: after each read,
    /// hours that ended more than that before the read's window end are dropped.
    pub fn new(longest_window_ms: i64) -> Self {
        Self { hours: Mutex::new(BTreeMap::new()), keep_ms: longest_window_ms }
    }

    /// Hours cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no hour is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Arc<CachedHour>>> {
        // Entries are inserted whole, so a panic elsewhere leaves none half-built.
        self.hours.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sum of the sketches of `[from, to)` (minute-aligned), the whole
    /// closed hours from the cache where their rows did not change.
    pub async fn window_sum<S: CountStore>(
        &self,
        store: &S,
        from: i64,
        to: i64,
    ) -> Result<(Merged, HourStats), StoreError> {
        let first_hour = ceil_hour(from);
        let open_hour = floor_hour(to - 1);
        let mut stats = HourStats::default();
        let mut sum = Merged::default();
        if first_hour >= open_hour {
            let edge = read_edge(store, from, to, &mut stats).await?;
            sum.absorb(&edge);
            return Ok((sum, stats));
        }
        let current = fingerprints(store.trending_versions(first_hour, open_hour).await?, first_hour, open_hour)?;
        let mut hours: Vec<Arc<CachedHour>> = Vec::with_capacity(current.len());
        let mut stale = Vec::new();
        {
            let cached = self.lock();
            for (hour, fingerprint) in &current {
                match cached.get(hour).filter(|c| c.fingerprint == *fingerprint) {
                    Some(hit) => hours.push(Arc::clone(hit)),
                    None => stale.push(*hour),
                }
            }
        }
        stats.reused = hours.len() as u64;
        for hour in stale {
            let rebuilt = Arc::new(build_hour(store, hour, &mut stats).await?);
            self.lock().insert(hour, Arc::clone(&rebuilt));
            hours.push(rebuilt);
            stats.rebuilt += 1;
        }
        if from < first_hour {
            sum.absorb(&read_edge(store, from, first_hour, &mut stats).await?);
        }
        for hour in &hours {
            sum.absorb(&hour.merged);
        }
        sum.absorb(&read_edge(store, open_hour, to, &mut stats).await?);
        let oldest_kept = floor_hour(to - self.keep_ms);
        self.lock().retain(|hour, _| *hour >= oldest_kept);
        Ok((sum, stats))
    }
}

/// The `limit` videos with the most views in the window, as
/// [`super::top`] answers them, the closed hours' sums taken from `cache`.
pub async fn top_cached<S: CountStore>(
    store: &S,
    cache: &HourCache,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
    max_candidates: usize,
) -> Result<(Trending, HourStats), StoreError> {
    let (from, to) = window(from_ms, to_ms)?;
    let (merged, stats) = cache.window_sum(store, from, to).await?;
    Ok((rank(store, &merged, (from, to), limit, max_candidates).await?, stats))
}

fn floor_hour(ms: i64) -> i64 {
    Granularity::Hour.bucket(ms)
}

fn ceil_hour(ms: i64) -> i64 {
    floor_hour(ms + HOUR_MS - 1)
}

/// The fingerprint of every hour in `[first_hour, end)`, hours without rows included.
fn fingerprints(
    versions: Vec<RowVersion>,
    first_hour: i64,
    end: i64,
) -> Result<BTreeMap<i64, Fingerprint>, StoreError> {
    let mut out: BTreeMap<i64, Fingerprint> =
        (first_hour..end).step_by(HOUR_MS as usize).map(|hour| (hour, Fingerprint::EMPTY)).collect();
    for row in versions {
        let hour = floor_hour(row.minute);
        let fingerprint = out.get_mut(&hour).ok_or_else(|| {
            StoreError::Invalid(format!("trending row of minute {} outside the hours read", row.minute))
        })?;
        fingerprint.add(row.version);
    }
    Ok(out)
}

/// One hour summed from its rows, with the fingerprint of those rows.
async fn build_hour<S: CountStore>(store: &S, hour: i64, stats: &mut HourStats) -> Result<CachedHour, StoreError> {
    let rows = store.trending_rows(hour, hour + HOUR_MS).await?;
    let mut fingerprint = Fingerprint::EMPTY;
    let mut merged = Merged::default();
    for row in &rows {
        if floor_hour(row.minute) != hour {
            return Err(StoreError::Invalid(format!("trending row of minute {} outside hour {hour}", row.minute)));
        }
        fingerprint.add(row.version);
        merged.add(&row.sketch).map_err(|e| StoreError::Invalid(format!("stored sketch: {e}")))?;
    }
    stats.rows_read += rows.len() as u64;
    Ok(CachedHour { fingerprint, merged })
}

/// The minute rows of `[from, to)`, summed (not cached).
async fn read_edge<S: CountStore>(store: &S, from: i64, to: i64, stats: &mut HourStats) -> Result<Merged, StoreError> {
    let merged = store.trending(from, to).await?;
    stats.rows_read += merged.inputs() as u64;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z, an hour boundary

    #[test]
    fn hours_round_to_utc_hour_boundaries() {
        assert_eq!((floor_hour(T0), ceil_hour(T0)), (T0, T0));
        assert_eq!((floor_hour(T0 + 60_000), ceil_hour(T0 + 60_000)), (T0, T0 + HOUR_MS));
        assert_eq!(floor_hour(T0 - 1), T0 - HOUR_MS);
    }

    #[test]
    fn any_rewritten_added_or_dropped_row_changes_its_hours_fingerprint() {
        let row = |minute: i64, source_partition: i32, version: i64| RowVersion { minute, source_partition, version };
        let base = vec![row(T0, 0, 10), row(T0 + 60_000, 1, 12), row(T0 + HOUR_MS, 0, 11)];
        let of = |rows: &[RowVersion]| fingerprints(rows.to_vec(), T0, T0 + 3 * HOUR_MS).unwrap();
        let before = of(&base);
        assert_eq!(before.len(), 3, "an hour without rows has a fingerprint too");
        assert_eq!(before[&(T0 + 2 * HOUR_MS)], Fingerprint::EMPTY);
        let mut rewritten = base.clone();
        rewritten[0].version = 13;
        let mut added = base.clone();
        added.push(row(T0 + 2 * 60_000, 0, 1));
        let dropped = base[1..].to_vec();
        for changed in [of(&rewritten), of(&added), of(&dropped)] {
            assert_ne!(changed[&T0], before[&T0]);
            assert_eq!(changed[&(T0 + HOUR_MS)], before[&(T0 + HOUR_MS)], "other hours keep theirs");
        }
        assert!(
            fingerprints(vec![row(T0 + 3 * HOUR_MS, 0, 1)], T0, T0 + 3 * HOUR_MS).is_err(),
            "rows outside fail loudly"
        );
    }
}
