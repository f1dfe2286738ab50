//! Day rows: the hour rows of one UTC day of one `(video, source partition)`,
//! folded in lazily.
//!
//! Only a read of a whole day needs a day row, but every batch writes hour
//! rows. Rewriting the day row (an ~8 KiB sketch, like an hour row) with
//! each batch doubled the writer's sketch work for nothing a read could not
//! do itself. So the writer folds the day's hour rows into the day row when
//! a batch brings an hour of that day later than any the row has seen (the
//! row's `newest_hour`), or creates it; a read unions the day row with the
//! hour rows it does not hold yet. The open hour is unioned at read time
//! until the next hour opens; late updates to earlier hours (the counter
//! accepts views up to its allowed lateness old) likewise, until the next
//! fold. The day's last hour has no later hour to fold it: the first batch
//! of the next day (which creates that day's row) folds it, with the late
//! updates so far. That is one day row write per hour with viewers instead
//! of one per batch, and a whole day's read unions the day row and about one
//! hour's rows per source partition (none but late updates for a past day). Folding on a lateness deadline instead would
//! need the counter's allowance in the store and gain nothing a read needs.
//!
//! What a day row says: its `version` V promises that every hour row of its
//! day (same video and source partition) with a version of at most V is in
//! its sketch as it is now. An hour row takes a flush only when newer than
//! it, so a row updated after a fold normally has a version above V and a
//! read adds it ([`needs_hour`]). A flush can be older than V, though: V is
//! the newest version of any hour of the day, and a re-emitted range after
//! a counter takeover can go back below it. A batch that applies such a
//! flush to the day folds at once, which keeps the promise.
//!
//! A fold ([`fold`]) is the day's sketch, the stored hour rows above V and
//! the batch's hour rows of the day (their new values), unioned; the new V
//! is the largest of their versions and V + 1. Every hour row is then in the
//! sketch, so any V' at least their versions keeps the promise; V + 1 makes
//! V' always grow, which the ScyllaDB store needs: it writes the day row
//! with `USING TIMESTAMP` V', which must beat the previous fold's write.
//!
//! Nothing inflates: a union is idempotent, so folding an hour again (a fold
//! redone after a crash, a replayed batch, a zombie writer's fold) changes
//! nothing, and a replayed flush is stale at its hour row, so it writes
//! neither hour nor day.

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_model::uniques;

use super::{invalid, SketchWrite};
use crate::model::Granularity;
use crate::StoreError;

/// What a day row says beside its sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayState {
    /// Every hour row of the day with a version of at most this is in the
    /// day's sketch (also the cell timestamp of the ScyllaDB store).
    pub version: i64,
    /// The newest hour of the day any fold has seen: a batch bringing a
    /// later one folds again.
    pub newest_hour: i64,
}

/// A day row to fold, decided by [`pending`] from what the batch writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFold {
    /// Start of the day, epoch ms.
    pub day: i64,
    /// The day row before the batch (`None`: there is none yet).
    pub previous: Option<DayState>,
    /// The newest hour of the day after the batch.
    pub newest_hour: i64,
}

impl PendingFold {
    /// The hours of the day: `[start, end)`, epoch ms.
    pub fn hours(&self) -> (i64, i64) {
        (self.day, self.day + Granularity::Day.millis())
    }

    /// Whether the fold needs a stored hour row of the day with `version`
    /// (one the day row does not hold yet).
    pub fn needs(&self, version: i64) -> bool {
        needs_hour(self.previous.as_ref(), version)
    }
}

/// A stored hour row of one `(video, source partition)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHour {
    /// Start of the hour, epoch ms.
    pub hour: i64,
    /// The salt.
    pub salt: i16,
    /// Version of the last flush merged in.
    pub version: i64,
    /// The sketch.
    pub sketch: Vec<u8>,
}

/// A day row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayWrite {
    /// Start of the day, epoch ms.
    pub day: i64,
    /// The folded sketch.
    pub sketch: Vec<u8>,
    /// What it holds.
    pub state: DayState,
}

/// Whether a read of a whole day unions an hour row with `version` besides
/// its `day` row (`None`: the day has no row, every hour row counts).
pub fn needs_hour(day: Option<&DayState>, version: i64) -> bool {
    day.is_none_or(|day| version > day.version)
}

/// The days whose row the batch's hour `writes` make fold, given the stored
/// state of their rows (`days`, which should hold the day before each day
/// written too): a day with no row, a day getting a later hour than its row
/// has seen, a day getting a flush at or below its row's version (see the
/// module docs), and the day before a day whose row is created, which no
/// later hour of its own would fold (its last hour, and late updates).
pub fn pending(writes: &[SketchWrite], days: &HashMap<i64, DayState>) -> Vec<PendingFold> {
    // Per day: the newest hour and the oldest version the batch writes.
    let mut touched: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for write in writes {
        let day = Granularity::Day.bucket(write.hour);
        let (newest, oldest) = touched.entry(day).or_insert((write.hour, write.version));
        *newest = (*newest).max(write.hour);
        *oldest = (*oldest).min(write.version);
    }
    let mut folds: BTreeMap<i64, PendingFold> = BTreeMap::new();
    for (&day, &(newest, oldest)) in &touched {
        let previous = days.get(&day).copied();
        if previous.is_none_or(|row| newest > row.newest_hour || oldest <= row.version) {
            let newest_hour = previous.map_or(newest, |row| row.newest_hour.max(newest));
            folds.insert(day, PendingFold { day, previous, newest_hour });
        }
    }
    let created: Vec<i64> = folds.values().filter(|fold| fold.previous.is_none()).map(|fold| fold.day).collect();
    for day in created {
        let before = day - Granularity::Day.millis();
        if let (Some(&row), false) = (days.get(&before), folds.contains_key(&before)) {
            folds.insert(before, PendingFold { day: before, previous: Some(row), newest_hour: row.newest_hour });
        }
    }
    folds.into_values().collect()
}

/// Folds a day: its row's stored sketch (`None` when it has no row), the
/// `stored` hour rows the day row does not hold (rows of other days, held
/// rows and rows the batch rewrites are skipped, so a store may pass more),
/// and the batch's hour row `written` (its rows of other days skipped).
pub fn fold(
    pending: &PendingFold,
    day_sketch: Option<&[u8]>,
    stored: &[StoredHour],
    written: &[SketchWrite],
) -> Result<DayWrite, StoreError> {
    let (start, end) = pending.hours();
    let in_day = |hour: i64| (start..end).contains(&hour);
    if pending.previous.is_some() != day_sketch.is_some() {
        return Err(StoreError::Invalid(format!(
            "day row {} of unique viewers: its state and its sketch disagree on whether it exists",
            pending.day
        )));
    }
    let rewritten: HashSet<(i64, i16)> = written.iter().filter(|w| in_day(w.hour)).map(|w| (w.hour, w.salt)).collect();
    let stored = stored
        .iter()
        .filter(|row| in_day(row.hour) && pending.needs(row.version) && !rewritten.contains(&(row.hour, row.salt)));
    let batch = written.iter().filter(|w| in_day(w.hour));
    let mut version = pending.previous.map_or(i64::MIN, |row| row.version.saturating_add(1));
    let mut sketches: Vec<&[u8]> = Vec::new();
    for (sketch, row_version) in stored.map(|r| (&r.sketch, r.version)).chain(batch.map(|w| (&w.sketch, w.version))) {
        sketches.push(sketch);
        version = version.max(row_version);
    }
    let sketch = uniques::merge_bytes(day_sketch, &sketches).map_err(invalid)?;
    Ok(DayWrite { day: pending.day, sketch, state: DayState { version, newest_hour: pending.newest_hour } })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    fn sketch(viewers: std::ops::Range<u32>) -> Vec<u8> {
        let mut sketch = uniques::new_sketch(12).unwrap();
        for i in viewers {
            sketch.update_with_coupon(uniques::viewer_coupon(&format!("viewer-{i}")));
        }
        uniques::serialize(&sketch)
    }

    fn count(bytes: &[u8]) -> u64 {
        uniques::UniquesEstimate::of(&uniques::deserialize(bytes).unwrap()).uniques
    }

    fn write(hour: i64, version: i64, viewers: std::ops::Range<u32>) -> SketchWrite {
        SketchWrite { hour, salt: 0, sketch: sketch(viewers), version }
    }

    #[test]
    fn a_day_folds_when_new_when_a_later_hour_comes_when_a_flush_is_not_newer_and_when_the_next_day_opens() {
        let row = DayState { version: 50, newest_hour: DAY + 2 * HOUR };
        let days = HashMap::from([(DAY, row)]);
        let days_folding =
            |writes: &[SketchWrite]| -> Vec<i64> { pending(writes, &days).into_iter().map(|p| p.day).collect() };
        assert_eq!(days_folding(&[write(DAY + 2 * HOUR, 60, 0..1)]), Vec::<i64>::new(), "the open hour");
        assert_eq!(days_folding(&[write(DAY + HOUR, 60, 0..1)]), Vec::<i64>::new(), "a late update");
        assert_eq!(days_folding(&[write(DAY + 3 * HOUR, 60, 0..1)]), vec![DAY], "a later hour");
        assert_eq!(days_folding(&[write(DAY + HOUR, 50, 0..1)]), vec![DAY], "a flush the row claims to hold");
        assert_eq!(days_folding(&[write(3 * DAY, 60, 0..1)]), vec![3 * DAY], "a day without a row");
        let next_day = pending(&[write(2 * DAY, 60, 0..1)], &days);
        let closing = PendingFold { day: DAY, previous: Some(row), newest_hour: DAY + 2 * HOUR };
        let opening = PendingFold { day: 2 * DAY, previous: None, newest_hour: 2 * DAY };
        assert_eq!(next_day, vec![closing, opening], "a new day's first batch folds the day before");
        let later = pending(&[write(DAY + 5 * HOUR, 60, 0..1), write(DAY, 61, 0..1)], &days);
        assert_eq!(later, vec![PendingFold { day: DAY, previous: Some(row), newest_hour: DAY + 5 * HOUR }]);
    }

    #[test]
    fn a_fold_unions_the_unheld_rows_and_the_batch_and_its_version_grows() {
        let row = DayState { version: 50, newest_hour: DAY + HOUR };
        let pending = PendingFold { day: DAY, previous: Some(row), newest_hour: DAY + 2 * HOUR };
        let stored = vec![
            // Held already (at or below 50): skipped, though its viewers are new.
            StoredHour { hour: DAY, salt: 0, version: 40, sketch: sketch(1_000..1_100) },
            // Not held: the open hour until now.
            StoredHour { hour: DAY + HOUR, salt: 0, version: 55, sketch: sketch(10..20) },
            // Rewritten by the batch: its new value counts.
            StoredHour { hour: DAY + HOUR, salt: 1, version: 56, sketch: sketch(500..600) },
            // Another day.
            StoredHour { hour: 2 * DAY, salt: 0, version: 57, sketch: sketch(700..800) },
        ];
        let written = vec![
            SketchWrite { hour: DAY + HOUR, salt: 1, sketch: sketch(20..25), version: 58 },
            write(DAY + 2 * HOUR, 59, 25..30),
        ];
        let day = fold(&pending, Some(&sketch(0..10)), &stored, &written).unwrap();
        assert_eq!((count(&day.sketch), day.state), (30, DayState { version: 59, newest_hour: DAY + 2 * HOUR }));
        let below = PendingFold { day: DAY, previous: Some(DayState { version: 90, ..row }), newest_hour: DAY + HOUR };
        let again = fold(&below, Some(&day.sketch), &[], &[write(DAY + HOUR, 70, 0..30)]).unwrap();
        assert_eq!((count(&again.sketch), again.state.version), (30, 91), "folding twice changes nothing but V");
    }

    #[test]
    fn a_day_state_without_its_sketch_is_refused() {
        let pending = PendingFold { day: DAY, previous: None, newest_hour: DAY };
        assert!(matches!(fold(&pending, Some(&sketch(0..1)), &[], &[]), Err(StoreError::Invalid(_))));
        let previous = Some(DayState { version: 1, newest_hour: DAY });
        assert!(matches!(fold(&PendingFold { previous, ..pending }, None, &[], &[]), Err(StoreError::Invalid(_))));
    }
}
