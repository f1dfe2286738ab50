//! Which layer answers which minute, the one read rule of both stores:
//! **batch counts for exactly the reconciled periods, real-time counts for
//! every other minute.** Nothing else is assumed about the periods: history
//! before the first one (a reconciler started after a week of counting), a
//! gap between two (a manual reconcile of a later range) and everything after
//! the last one are read from the real-time rows.
//!
//! The real-time part of a read is a sum over the ranges outside the
//! reconciled periods, each range read as whole rollup buckets
//! ([`segments`]): days where whole days fit, hours at the edges, minutes only
//! where a range does not start or end on an hour. Every term is a real-time
//! row, and real-time rows only grow, so a read made of several queries never
//! reports more than the store held when it finished.
//!
//! Pure functions: both stores and their unit tests use them.

use crate::model::Granularity;
use crate::StoreError;

/// Before every count: the open start of "all time" as a range bound.
/// (Day-aligned and far from `i64::MIN`, so bucket arithmetic cannot overflow.)
pub const FAR_PAST: i64 = -26_000_000_000 * 86_400_000;

/// After every count: the open end of "all time".
pub const FAR_FUTURE: i64 = -FAR_PAST;

/// The reconciled periods of the batch layer, merged into runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Sorted, disjoint, non-adjacent `[start, end)` runs.
    runs: Vec<(i64, i64)>,
    /// End of the latest period (`exact_through`).
    last_end: Option<i64>,
}

impl Reconciled {
    /// The runs of `periods` (`(start_ms, end_ms)`, any order).
    pub fn new(periods: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut periods: Vec<(i64, i64)> = periods.into_iter().filter(|(s, e)| s < e).collect();
        periods.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::with_capacity(periods.len());
        for (start, end) in periods {
            match runs.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        let last_end = runs.last().map(|r| r.1);
        Self { runs, last_end }
    }

    /// Nothing reconciled yet.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// End of the latest reconciled period.
    pub fn exact_through(&self) -> Option<i64> {
        self.last_end
    }

    /// Whether `minute` is in a reconciled period.
    pub fn contains(&self, minute: i64) -> bool {
        let i = self.runs.partition_point(|r| r.1 <= minute);
        self.runs.get(i).is_some_and(|r| r.0 <= minute)
    }

    /// The parts of `[from, to)` inside reconciled periods (batch counts).
    pub fn inside(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        self.runs.iter().map(|&(s, e)| (s.max(from), e.min(to))).filter(|(s, e)| s < e).collect()
    }

    /// The parts of `[from, to)` outside every reconciled period (real-time counts).
    pub fn outside(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut cursor = from;
        for &(s, e) in &self.runs {
            if s >= to {
                break;
            }
            if s > cursor {
                out.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < to {
            out.push((cursor, to));
        }
        out
    }
}

/// Rollup rows of one granularity whose bucket is in `[from, to)`: every
/// such bucket lies wholly inside the range it was cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Which rows.
    pub granularity: Granularity,
    /// First bucket start (inclusive).
    pub from: i64,
    /// Bucket starts before this.
    pub to: i64,
}

fn floor(t: i64, g: Granularity) -> i64 {
    g.bucket(t)
}

fn ceil(t: i64, g: Granularity) -> i64 {
    let down = g.bucket(t);
    if down == t {
        t
    } else {
        down + g.millis()
    }
}

/// `[from, to)` as whole buckets, at most `coarsest`: whole days, then
/// whole hours at the edges, then minutes for what is left. A minute row
/// counts when its minute is in the range (the stores' `minute >= from AND
/// minute < to`), so unaligned ends are exact too.
pub fn segments(from: i64, to: i64, coarsest: Granularity) -> Vec<Segment> {
    let mut out = Vec::new();
    cut(from, to, coarsest, &mut out);
    out
}

fn cut(from: i64, to: i64, coarsest: Granularity, out: &mut Vec<Segment>) {
    if from >= to {
        return;
    }
    let finer = match coarsest {
        Granularity::Day => Some(Granularity::Hour),
        Granularity::Hour => Some(Granularity::Minute),
        Granularity::Minute => None,
    };
    let Some(finer) = finer else {
        out.push(Segment { granularity: Granularity::Minute, from, to });
        return;
    };
    let (first, end) = (ceil(from, coarsest), floor(to, coarsest));
    if first >= end {
        cut(from, to, finer, out);
        return;
    }
    cut(from, first, finer, out);
    out.push(Segment { granularity: coarsest, from: first, to: end });
    cut(end, to, finer, out);
}

/// The range a series reads: whole `step` buckets from the one holding
/// `from_ms` through the one holding the last millisecond before `to_ms`.
pub fn series_range(from_ms: i64, to_ms: i64, step: Granularity) -> Result<(i64, i64), StoreError> {
    crate::check_range(from_ms, to_ms)?;
    Ok((step.bucket(from_ms), step.bucket(to_ms - 1) + step.millis()))
}

/// Checks what [`crate::CountStore::replace_batch`] is given: every batch
/// minute inside the period, and the period either new and overlapping none
/// of `stored`, or exactly a stored one (a rerun).
pub fn check_period(
    start_ms: i64,
    end_ms: i64,
    minutes: &[(String, i64, i64)],
    stored: &[(i64, i64)],
) -> Result<(), StoreError> {
    if start_ms >= end_ms {
        return Err(StoreError::Invalid(format!("period [{start_ms}, {end_ms}) is empty")));
    }
    if let Some((video, minute, _)) = minutes.iter().find(|(_, m, _)| *m < start_ms || *m >= end_ms) {
        return Err(StoreError::Invalid(format!(
            "batch minute {minute} of {video} is outside the period [{start_ms}, {end_ms})"
        )));
    }
    if let Some((s, e)) = stored.iter().find(|(s, e)| *s < end_ms && start_ms < *e && (*s, *e) != (start_ms, end_ms)) {
        return Err(StoreError::Invalid(format!(
            "period [{start_ms}, {end_ms}) overlaps the reconciled period [{s}, {e})"
        )));
    }
    Ok(())
}

/// Where a series takes the batch counts of the reconciled `periods` that
/// overlap `[from, to)` (a series range): `(whole, by_minute)` period starts.
/// A period inside the range and inside one `step` bucket is read as its
/// per-video total; any other (minute steps, a period across buckets or
/// across the range's ends) minute by minute.
pub fn batch_sources(periods: &[(i64, i64)], from: i64, to: i64, step: Granularity) -> (Vec<i64>, Vec<i64>) {
    let mut whole = Vec::new();
    let mut by_minute = Vec::new();
    for &(start, end) in periods.iter().filter(|(s, e)| *s < to && from < *e && s < e) {
        let one_bucket = step != Granularity::Minute && step.bucket(start) == step.bucket(end - 1);
        if one_bucket && from <= start && end <= to {
            whole.push(start);
        } else {
            by_minute.push(start);
        }
    }
    (whole, by_minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;

    #[test]
    fn far_bounds_are_day_aligned_and_leave_room() {
        assert_eq!(Granularity::Day.bucket(FAR_PAST), FAR_PAST);
        assert_eq!(Granularity::Day.bucket(FAR_FUTURE), FAR_FUTURE);
        assert!(FAR_PAST < -(1 << 60) && FAR_FUTURE.checked_add(DAY).is_some());
    }

    #[test]
    fn adjacent_and_overlapping_periods_merge_into_runs() {
        let r = Reconciled::new([(T0 + 2 * HOUR, T0 + 3 * HOUR), (T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR)]);
        assert_eq!(r.inside(FAR_PAST, FAR_FUTURE), vec![(T0, T0 + 3 * HOUR)]);
        assert_eq!(r.exact_through(), Some(T0 + 3 * HOUR));
        assert!(
            r.contains(T0) && r.contains(T0 + 3 * HOUR - MIN) && !r.contains(T0 + 3 * HOUR) && !r.contains(T0 - MIN)
        );
    }

    #[test]
    fn outside_is_history_gaps_and_the_tail() {
        let r = Reconciled::new([(T0, T0 + HOUR), (T0 + 5 * HOUR, T0 + 6 * HOUR)]);
        assert_eq!(
            r.outside(FAR_PAST, FAR_FUTURE),
            vec![(FAR_PAST, T0), (T0 + HOUR, T0 + 5 * HOUR), (T0 + 6 * HOUR, FAR_FUTURE)]
        );
        assert_eq!(r.outside(T0 + 30 * MIN, T0 + 5 * HOUR + MIN), vec![(T0 + HOUR, T0 + 5 * HOUR)]);
        assert_eq!(
            r.inside(T0 + 30 * MIN, T0 + 5 * HOUR + MIN),
            vec![(T0 + 30 * MIN, T0 + HOUR), (T0 + 5 * HOUR, T0 + 5 * HOUR + MIN)]
        );
        assert_eq!(Reconciled::default().outside(1, 2), vec![(1, 2)]);
    }

    #[test]
    fn a_range_is_cut_into_whole_days_then_hours_then_minutes() {
        let day = Granularity::Day.bucket(T0);
        let from = T0 + 30 * MIN + 1; // 10:30:00.001
        let to = day + 2 * DAY + 2 * HOUR + 5 * MIN; // two days later, 02:05
        let s = segments(from, to, Granularity::Day);
        let seg = |granularity, from, to| Segment { granularity, from, to };
        assert_eq!(
            s,
            vec![
                seg(Granularity::Minute, from, T0 + HOUR),
                seg(Granularity::Hour, T0 + HOUR, day + DAY),
                seg(Granularity::Day, day + DAY, day + 2 * DAY),
                seg(Granularity::Hour, day + 2 * DAY, day + 2 * DAY + 2 * HOUR),
                seg(Granularity::Minute, day + 2 * DAY + 2 * HOUR, to),
            ]
        );
        // Capped at hours: no day rows.
        assert!(segments(from, to, Granularity::Hour).iter().all(|s| s.granularity != Granularity::Day));
        assert_eq!(segments(T0, T0 + HOUR, Granularity::Day), vec![seg(Granularity::Hour, T0, T0 + HOUR)]);
        assert_eq!(segments(T0, T0, Granularity::Day), vec![]);
        // All time is a few segments.
        assert_eq!(segments(FAR_PAST, FAR_FUTURE, Granularity::Day), vec![seg(Granularity::Day, FAR_PAST, FAR_FUTURE)]);
    }

    #[test]
    fn series_ranges_cover_whole_buckets() {
        assert_eq!(series_range(T0 + 5, T0 + HOUR + 1, Granularity::Hour).unwrap(), (T0, T0 + 2 * HOUR));
        assert_eq!(series_range(T0, T0 + HOUR, Granularity::Hour).unwrap(), (T0, T0 + HOUR));
        assert!(series_range(T0, T0, Granularity::Minute).is_err());
    }

    #[test]
    fn a_series_reads_whole_periods_when_they_fit_a_bucket() {
        let periods = [(T0, T0 + HOUR), (T0 + HOUR, T0 + 3 * HOUR), (T0 + 5 * HOUR, T0 + 6 * HOUR)];
        // Hours: 10:00 fits its hour; 11:00-13:00 spans two; 15:00 is outside the range.
        assert_eq!(batch_sources(&periods, T0, T0 + 4 * HOUR, Granularity::Hour), (vec![T0], vec![T0 + HOUR]));
        // Days: every period fits its day and the range.
        let day = Granularity::Day.bucket(T0);
        assert_eq!(
            batch_sources(&periods, day, day + DAY, Granularity::Day),
            (vec![T0, T0 + HOUR, T0 + 5 * HOUR], vec![])
        );
        // Minutes: always minute by minute.
        assert_eq!(batch_sources(&periods, T0, T0 + HOUR, Granularity::Minute), (vec![], vec![T0]));
        // A period across the range's start is read by minute and cut.
        assert_eq!(batch_sources(&periods, T0 + 30 * MIN, T0 + HOUR, Granularity::Hour), (vec![], vec![T0]));
    }

    #[test]
    fn a_period_holds_its_minutes_and_overlaps_no_other() {
        let m = |minute| vec![("a".to_owned(), minute, 1)];
        assert!(check_period(T0, T0 + HOUR, &m(T0 + 59 * MIN), &[]).is_ok());
        assert!(check_period(T0, T0 + HOUR, &m(T0 + HOUR), &[]).is_err());
        assert!(check_period(T0, T0 + HOUR, &m(T0), &[(T0, T0 + HOUR)]).is_ok(), "a rerun");
        assert!(check_period(T0, T0 + 2 * HOUR, &[], &[(T0 + HOUR, T0 + 2 * HOUR)]).is_err());
        assert!(check_period(T0 + HOUR, T0 + 2 * HOUR, &[], &[(T0, T0 + HOUR)]).is_ok(), "adjacent");
        assert!(check_period(T0, T0, &[], &[]).is_err());
    }
}
