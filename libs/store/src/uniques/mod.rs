//! Unique-viewer sketches: what applying the sketches of a batch writes, and
//! which rows a read unions, as pure functions both stores share.
//!
//! Rows, per video and source partition of `tally.views` (the owner, as
//! for count rows):
//!
//! - an hour row per `(hour, salt)`: the union of the hour's sketches of
//!   every flush applied to it, with the version of the last one. A sketch is
//!   merged only when its flush's version is newer than the row's, so a
//!   replayed or re-emitted range changes nothing, not even the estimator's
//!   state;
//! - a day row per UTC day (salts merged): the union of the day's hour rows
//!   as of its last fold, with a `version` saying which hour rows it holds
//!   and the newest hour it has seen ([`fold`]). It is written when a batch
//!   brings a later hour of its day (or the next day's first hour), not on
//!   every batch: each row is an
//!   ~8 KiB sketch, and rewriting it per batch was half the writer's sketch
//!   work for a row that only a read of a whole day needs.
//!
//! Reads union, for the whole days of a range, each day row with the hour
//! rows it does not hold yet ([`fold::needs_hour`]: the open hour, late
//! updates), and the hour rows of the hours at its edges, over every salt
//! and source partition.
//!
//! Layout: this file has the updates, the hour rows' plan and the read plan;
//! [`fold`] the day rows.

pub mod fold;

use std::collections::{BTreeMap, HashMap};

use tally_model::counts::FlushChunk;
use tally_model::uniques::{self, UniquesError};

use crate::model::{ApplyOutcome, Granularity, PeriodSummary, PeriodUniques};
use crate::StoreError;
pub use fold::{DayState, DayWrite, PendingFold, StoredHour};

/// One sketch of one flush for one hour row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchUpdate {
    /// The video.
    pub video_id: String,
    /// Source partition of the flush (the row's owner).
    pub source_partition: i32,
    /// The flush's version.
    pub version: i64,
    /// The salt.
    pub salt: i16,
    /// Start of the hour, epoch ms.
    pub hour: i64,
    /// The sketch (DataSketches HLL serialization).
    pub sketch: Vec<u8>,
}

/// The sketch updates of a chunk, in order.
pub fn updates(chunk: &FlushChunk) -> impl Iterator<Item = SketchUpdate> + '_ {
    let h = chunk.header;
    chunk.uniques.iter().map(move |s| SketchUpdate {
        video_id: s.video_id.clone(),
        source_partition: i32::try_from(h.source_partition).unwrap_or(i32::MAX),
        version: h.version(),
        // Salts are below 2^15 (sub-shards are bounded far lower).
        salt: i16::try_from(s.salt.0).unwrap_or(i16::MAX),
        hour: s.hour,
        sketch: s.sketch.clone(),
    })
}

/// Updates grouped by `(video, source partition)`, each group in log order
/// (its updates read what the previous ones wrote).
pub fn grouped(chunks: &[FlushChunk]) -> BTreeMap<(String, i32), Vec<SketchUpdate>> {
    let mut groups: BTreeMap<(String, i32), Vec<SketchUpdate>> = BTreeMap::new();
    for update in chunks.iter().flat_map(updates) {
        groups.entry((update.video_id.clone(), update.source_partition)).or_default().push(update);
    }
    groups
}

/// The stored rows of one `(video, source partition)` an update group touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentSketches {
    /// Hour rows: `(hour, salt)` → (sketch, version).
    pub hours: HashMap<(i64, i16), (Vec<u8>, i64)>,
    /// Day rows' fold state (not their sketches, which only a fold reads): day → state.
    pub days: HashMap<i64, DayState>,
}

/// An hour row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchWrite {
    /// Start of the hour, epoch ms.
    pub hour: i64,
    /// The salt.
    pub salt: i16,
    /// The new sketch.
    pub sketch: Vec<u8>,
    /// Version of the last flush merged in (also the cell timestamp of the
    /// ScyllaDB store).
    pub version: i64,
}

/// What one group comes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SketchPlan {
    /// Hour rows to write, each once with its final value.
    pub writes: Vec<SketchWrite>,
    /// Day rows to fold (each written once, after the store has read what
    /// the fold needs: [`fold::fold`]).
    pub folds: Vec<PendingFold>,
    /// Sketches merged.
    pub applied: u64,
    /// Sketches whose hour row already had their version or a newer one.
    pub stale: u64,
}

impl SketchPlan {
    /// What applying the plan counts: sketches merged or stale, rows written.
    pub fn outcome(&self) -> ApplyOutcome {
        ApplyOutcome {
            sketches_applied: self.applied,
            sketches_stale: self.stale,
            sketch_hour_rows_written: self.writes.len() as u64,
            sketch_day_rows_written: self.folds.len() as u64,
            ..ApplyOutcome::default()
        }
    }
}

/// Hours an update group reads, and days whose row state it reads: each
/// day of an update and the day before ([`fold::pending`] may close it).
pub fn keys(updates: &[SketchUpdate]) -> (Vec<i64>, Vec<i64>) {
    let mut hours: Vec<i64> = updates.iter().map(|u| u.hour).collect();
    let day = Granularity::Day;
    let mut days: Vec<i64> =
        updates.iter().flat_map(|u| [day.bucket(u.hour), day.bucket(u.hour) - day.millis()]).collect();
    for keys in [&mut hours, &mut days] {
        keys.sort_unstable();
        keys.dedup();
    }
    (hours, days)
}

/// Applies `updates` (one group, in log order) over `current`: the hour
/// rows to write, and the days whose row must fold them ([`fold::pending`]).
pub fn plan(updates: &[SketchUpdate], current: CurrentSketches) -> Result<SketchPlan, StoreError> {
    let mut plan = SketchPlan::default();
    // The rows this group has merged so far: later updates build on them.
    let mut written: BTreeMap<(i64, i16), (Vec<u8>, i64)> = BTreeMap::new();
    for update in updates {
        let key = (update.hour, update.salt);
        let stored = written.get(&key).or_else(|| current.hours.get(&key));
        if stored.is_some_and(|(_, version)| *version >= update.version) {
            plan.stale += 1;
            continue;
        }
        let hour =
            uniques::merge_bytes(stored.map(|(bytes, _)| bytes.as_slice()), &[&update.sketch]).map_err(invalid)?;
        written.insert(key, (hour, update.version));
        plan.applied += 1;
    }
    plan.writes = written
        .into_iter()
        .map(|((hour, salt), (sketch, version))| SketchWrite { hour, salt, sketch, version })
        .collect();
    plan.folds = fold::pending(&plan.writes, &current.days);
    Ok(plan)
}

pub(crate) fn invalid(e: UniquesError) -> StoreError {
    StoreError::Invalid(format!("unique-viewer sketch: {e}"))
}

/// The rows a uniques read takes: whole UTC days as day rows (with the
/// hour rows they do not hold yet: [`fold::needs_hour`]), the hours at the
/// edges as hour rows. `from_ms` and `to_ms` are on hours.
pub fn read_plan(from_ms: i64, to_ms: i64) -> Vec<crate::layers::Segment> {
    crate::layers::segments(from_ms, to_ms, Granularity::Day)
}

/// The parts of a read of `[from_ms, to_ms)` (on hours) that the batch
/// recount counts separately, in order: each whole UTC day and each edge
/// hour of [`read_plan`]. Their exact counts bound the union's.
pub fn counted_parts(from_ms: i64, to_ms: i64) -> Vec<(Granularity, i64)> {
    let mut parts = Vec::new();
    for segment in read_plan(from_ms, to_ms) {
        let step = segment.granularity.millis();
        let mut bucket = segment.from;
        while bucket < segment.to {
            parts.push((segment.granularity, bucket));
            bucket += step;
        }
    }
    parts
}

/// Checks the batch uniques given with a period: the period is one whole
/// UTC hour, and a day, when given, is the one holding it.
pub(crate) fn check_period_uniques(period: &PeriodSummary, uniques: &PeriodUniques) -> Result<(), StoreError> {
    let hour = Granularity::Hour.millis();
    if period.start_ms.rem_euclid(hour) != 0 || period.end_ms - period.start_ms != hour {
        return Err(StoreError::Invalid(format!(
            "unique viewers are counted per whole hour; the period {}..{} is not one",
            period.start_ms, period.end_ms
        )));
    }
    if let Some(day) = &uniques.day {
        if day.day_ms != Granularity::Day.bucket(period.start_ms) {
            return Err(StoreError::Invalid(format!(
                "the day {} of batch unique viewers does not hold the period {}",
                day.day_ms, period.start_ms
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn sketch(viewers: std::ops::Range<u32>) -> Vec<u8> {
        let mut sketch = uniques::new_sketch(12).unwrap();
        for i in viewers {
            sketch.update_with_coupon(uniques::viewer_coupon(&format!("viewer-{i}")));
        }
        uniques::serialize(&sketch)
    }

    fn update(version: i64, hour: i64, viewers: std::ops::Range<u32>) -> SketchUpdate {
        SketchUpdate { video_id: "v".into(), source_partition: 0, version, salt: 0, hour, sketch: sketch(viewers) }
    }

    fn count(bytes: &[u8]) -> u64 {
        uniques::UniquesEstimate::of(&uniques::deserialize(bytes).unwrap()).uniques
    }

    #[test]
    fn newer_flushes_merge_and_replays_are_stale() {
        let first = plan(&[update(10, HOUR, 0..5), update(10, 2 * HOUR, 3..8)], CurrentSketches::default()).unwrap();
        assert_eq!((first.applied, first.stale, first.writes.len()), (2, 0, 2));
        let fold = PendingFold { day: 0, previous: None, newest_hour: 2 * HOUR };
        assert_eq!(first.folds, vec![fold], "a new day is folded at once");
        let mut current = CurrentSketches::default();
        for w in &first.writes {
            current.hours.insert((w.hour, w.salt), (w.sketch.clone(), w.version));
        }
        current.days.insert(0, DayState { version: 10, newest_hour: 2 * HOUR });
        let replay = plan(&[update(10, HOUR, 0..5), update(9, 2 * HOUR, 100..200)], current.clone()).unwrap();
        assert_eq!((replay.applied, replay.stale), (0, 2));
        assert!(replay.writes.is_empty() && replay.folds.is_empty(), "a replay writes nothing");
        let next = plan(&[update(20, HOUR, 4..6), update(21, HOUR, 6..7)], current).unwrap();
        let counts: Vec<(i64, u64, i64)> = next.writes.iter().map(|w| (w.hour, count(&w.sketch), w.version)).collect();
        assert_eq!(counts, vec![(HOUR, 7, 21)], "one write per row, the group's updates merged in order");
        assert!(next.folds.is_empty(), "a late update to a held hour leaves the day row alone");
    }

    #[test]
    fn a_damaged_stored_sketch_is_an_invalid_request() {
        let mut current = CurrentSketches::default();
        current.hours.insert((HOUR, 0), (b"junk".to_vec(), 1));
        assert!(matches!(plan(&[update(2, HOUR, 0..1)], current), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_read_counts_as_whole_days_and_edge_hours_in_order() {
        const DAY: i64 = 24 * HOUR;
        assert_eq!(
            counted_parts(DAY + 22 * HOUR, 3 * DAY + HOUR),
            vec![
                (Granularity::Hour, DAY + 22 * HOUR),
                (Granularity::Hour, DAY + 23 * HOUR),
                (Granularity::Day, 2 * DAY),
                (Granularity::Hour, 3 * DAY),
            ]
        );
        assert_eq!(counted_parts(DAY, 2 * DAY), vec![(Granularity::Day, DAY)]);
        assert_eq!(counted_parts(DAY + HOUR, DAY + 2 * HOUR), vec![(Granularity::Hour, DAY + HOUR)]);
    }

    #[test]
    fn batch_uniques_need_a_whole_hour_and_its_own_day() {
        let period =
            |start: i64, end: i64| PeriodSummary { start_ms: start, end_ms: end, batch_views: 0, realtime_views: 0 };
        let none = PeriodUniques::default();
        assert!(check_period_uniques(&period(25 * HOUR, 26 * HOUR), &none).is_ok());
        assert!(check_period_uniques(&period(25 * HOUR, 27 * HOUR), &none).is_err());
        assert!(check_period_uniques(&period(25 * HOUR + 1, 26 * HOUR + 1), &none).is_err());
        let day = |day_ms| PeriodUniques {
            hour: Vec::new(),
            day: Some(crate::model::DayUniques { day_ms, viewers: Vec::new() }),
        };
        assert!(check_period_uniques(&period(25 * HOUR, 26 * HOUR), &day(24 * HOUR)).is_ok());
        assert!(check_period_uniques(&period(25 * HOUR, 26 * HOUR), &day(0)).is_err());
    }
}
