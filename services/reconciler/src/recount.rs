//! Recounting a period from the archive by the real-time counter's own rule
//! ([`tally_model::counting`]): each partition folded in offset order, a
//! record a view unless it is late or the dedup window holds an earlier copy
//! of it; views counted per `(video_id, minute of event time)`, salts merged.
//! When nothing failed, the recount equals the real-time counts exactly.
//!
//! What a recount of the period `[from, to)` reads (files are laid out by
//! gateway receive hour, each one offset range of one partition):
//!
//! - **Window phase.** Each partition is folded from the first record of the
//!   receive hours at or after `from - lookback` to the last record of the
//!   receive hours before `to + allowed lateness`, together with every file
//!   of other receive hours whose offsets fall in between (a gateway clock
//!   off, a replayed dead letter): the same contiguous records the counter
//!   folded. The lookback covers the dedup window (plus the clock skew
//!   allowed and how far ahead of its receive time an event may be stamped),
//!   so by the period's first record the fold's window holds what the
//!   counter's held: a resend in this period of a view counted in the
//!   previous one is a duplicate here too, as it was in real time.
//! - **Late phase.** Records received after that, up to `to + lookahead`,
//!   whose event time is in the period: late ones (received more than the
//!   allowed lateness after their event time), which the counter
//!   dead-letters. The batch layer counts late views the real-time path
//!   could not, but only once per `(video_id, event_id)`, and not when that
//!   event was already counted in the period: a late copy of a view counted
//!   on time is no second view. Late records met in the window phase are
//!   judged the same way, after it.
//!
//! The viewers of the counted views (late ones included) are kept per video,
//! hour and day ([`crate::distinct`]): the exact distinct viewers the
//! real-time sketches estimate.

use std::collections::{BTreeMap, HashSet};

use tally_model::counting::{dedup_key, CountingRule, Decision, Observed, PartitionFold};
use tally_model::timestamp::minute_bucket;
use tally_model::uniques::viewer_key;

use crate::archive::layout::{self, FileRange};
use crate::archive::parquet_io::{self, ArchiveError, RowRef};
use crate::archive::storage::ArchiveStorage;
use crate::distinct::DistinctViewers;

/// What a recount covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Start of the period, epoch ms of event time (inclusive).
    pub from_ms: i64,
    /// End of the period (exclusive).
    pub to_ms: i64,
    /// How far before `from_ms` (receive time) each partition's fold starts:
    /// at least the dedup window, twice the allowed clock skew and the
    /// gateways' future skew.
    pub lookback_ms: i64,
    /// How far after `to_ms` (receive time) late events are looked for.
    pub lookahead_ms: i64,
}

/// The batch count of one period.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recount {
    /// Views per `(video, minute)`.
    pub minutes: BTreeMap<(String, i64), i64>,
    /// Archive rows read.
    pub rows_read: u64,
    /// Rows of the period that were duplicates by the rule.
    pub duplicates: u64,
    /// Late views counted (the real-time path dead-letters them).
    pub late: u64,
    /// The viewers of the views counted, per video, hour and day.
    pub viewers: DistinctViewers,
}

/// Recounts `scope` from `archive` by `rule`. Files are fetched one at a
/// time and decoded off the async runtime.
pub async fn recount(archive: &ArchiveStorage, scope: &Scope, rule: &CountingRule) -> Result<Recount, ArchiveError> {
    let plan = Plan::new(&archive.list().await?, scope, rule);
    let mut tally = Tally { scope: *scope, counted: HashSet::new(), late: Vec::new(), out: Recount::default() };
    for files in plan.window.into_values() {
        let mut fold = PartitionFold::new(*rule);
        for file in files {
            (tally, fold) =
                read(archive, file, (tally, fold), |(tally, fold), row| tally.window_row(fold, row)).await?;
        }
    }
    for file in plan.late {
        tally = read(archive, file, tally, |tally, row| tally.late_row(row)).await?;
    }
    Ok(tally.finish())
}

/// Reads `file`, visiting each row with `state` (moved to a blocking thread and back).
async fn read<S: Send + 'static>(
    archive: &ArchiveStorage,
    file: String,
    mut state: S,
    visit: fn(&mut S, &RowRef<'_>),
) -> Result<S, ArchiveError> {
    let bytes = archive.get(&file).await?;
    tokio::task::spawn_blocking(move || {
        parquet_io::read_views(bytes, &file, |row| visit(&mut state, row))?;
        Ok::<_, ArchiveError>(state)
    })
    .await
    .map_err(|e| ArchiveError::Format { path: archive.describe(), message: e.to_string() })?
}

/// The files a recount reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Per partition, the files of the window phase in offset order.
    window: BTreeMap<i32, Vec<String>>,
    /// The files of the late phase.
    late: Vec<String>,
}

impl Plan {
    fn new(files: &[(String, FileRange)], scope: &Scope, rule: &CountingRule) -> Self {
        let first_hour = scope.from_ms.saturating_sub(scope.lookback_ms);
        let first_hour = first_hour.div_euclid(layout::HOUR_MS) * layout::HOUR_MS;
        let window_end = scope.to_ms.saturating_add(rule.allowed_lateness_ms.min(scope.lookahead_ms));
        let late_end = scope.to_ms.saturating_add(scope.lookahead_ms);
        let hour = |path: &str| layout::hour_of(path);
        // Per partition, the offsets archived in the window's receive hours.
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for (path, (partition, start, end)) in files {
            if hour(path).is_some_and(|h| h >= first_hour && h < window_end) {
                let range = ranges.entry(*partition).or_insert((*start, *end));
                *range = (range.0.min(*start), range.1.max(*end));
            }
        }
        let mut plan = Plan::default();
        let mut window: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        for (path, (partition, start, end)) in files {
            match ranges.get(partition) {
                Some((low, high)) if start < high && end > low => {
                    window.entry(*partition).or_default().push((*start, path.clone()));
                }
                _ if hour(path).is_some_and(|h| h >= window_end && h < late_end) => plan.late.push(path.clone()),
                _ => {}
            }
        }
        for (partition, mut files) in window {
            files.sort_unstable();
            plan.window.insert(partition, files.into_iter().map(|(_, path)| path).collect());
        }
        plan
    }
}

/// A late record of the period, judged once the window phase is done.
struct LateView {
    /// Its dedup key.
    key: u64,
    video_id: String,
    /// Its minute of event time.
    minute: i64,
    /// Its viewer's key, if it had a viewer.
    viewer: Option<u64>,
}

/// What the recount has found so far.
struct Tally {
    scope: Scope,
    /// Dedup keys of the period's views counted in the window phase.
    counted: HashSet<u64>,
    /// Late records of the period, in the order read.
    late: Vec<LateView>,
    out: Recount,
}

impl Tally {
    fn in_period(&self, ts_ms: i64) -> bool {
        ts_ms >= self.scope.from_ms && ts_ms < self.scope.to_ms
    }

    fn window_row(&mut self, fold: &mut PartitionFold, row: &RowRef<'_>) {
        self.out.rows_read += 1;
        let decision = fold.decide(&Observed {
            offset: row.offset,
            video_id: row.video_id,
            event_id: row.event_id,
            ts_ms: row.ts_ms,
            received_ms: row.received_ms,
            log_ms: row.log_ms,
        });
        if !self.in_period(row.ts_ms) {
            return;
        }
        match decision {
            Decision::Counted => {
                self.counted.insert(dedup_key(row.video_id, row.event_id));
                *self.out.minutes.entry((row.video_id.to_owned(), minute_bucket(row.ts_ms))).or_default() += 1;
                if let Some(viewer) = row.viewer_id {
                    self.out.viewers.add(row.video_id, row.ts_ms, viewer_key(viewer));
                }
            }
            Decision::Duplicate => self.out.duplicates += 1,
            Decision::Late => self.push_late(row),
        }
    }

    fn late_row(&mut self, row: &RowRef<'_>) {
        self.out.rows_read += 1;
        if self.in_period(row.ts_ms) {
            self.push_late(row);
        }
    }

    fn push_late(&mut self, row: &RowRef<'_>) {
        self.late.push(LateView {
            key: dedup_key(row.video_id, row.event_id),
            video_id: row.video_id.to_owned(),
            minute: minute_bucket(row.ts_ms),
            viewer: row.viewer_id.map(viewer_key),
        });
    }

    fn finish(mut self) -> Recount {
        for LateView { key, video_id, minute, viewer } in std::mem::take(&mut self.late) {
            if self.counted.insert(key) {
                if let Some(viewer) = viewer {
                    self.out.viewers.add(&video_id, minute, viewer);
                }
                *self.out.minutes.entry((video_id, minute)).or_default() += 1;
                self.out.late += 1;
            } else {
                self.out.duplicates += 1;
            }
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::parquet_io::{encode, ArchivedView};

    const MIN: i64 = 60_000;
    const HOUR: i64 = layout::HOUR_MS;
    /// 2026-11-22T10:00:00Z.
    const T0: i64 = 1_795_341_600_000;

    fn rule() -> CountingRule {
        CountingRule {
            allowed_lateness_ms: HOUR,
            dedup_window_ms: 10 * MIN,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: MIN,
        }
    }

    async fn put(archive: &ArchiveStorage, received_ms: i64, range: (i64, i64), rows: &[ArchivedView]) {
        let name = format!("{}/{}", layout::hour_prefix(received_ms), layout::file_name(0, range.0, range.1));
        archive.put(&name, encode(rows, &name).unwrap()).await.unwrap();
    }

    fn view(offset: i64, video: &str, event: &str, ts: i64, received: i64) -> ArchivedView {
        ArchivedView {
            partition: 0,
            offset,
            video_id: video.into(),
            salt: (offset % 3) as u16,
            ts_ms: ts,
            received_ms: received,
            log_ms: Some(received),
            event_id: event.into(),
            viewer_id: Some(format!("viewer-of-{event}")),
            attributes: None,
        }
    }

    fn scope(lookahead_ms: i64) -> Scope {
        Scope { from_ms: T0, to_ms: T0 + HOUR, lookback_ms: 15 * MIN, lookahead_ms }
    }

    #[tokio::test]
    async fn views_per_minute_with_salts_merged_and_late_events_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let archive = ArchiveStorage::Local(dir.path().to_owned());
        let hour1 = vec![
            view(0, "a", "e1", T0, T0),
            view(1, "a", "e1", T0, T0 + 5_000), // resend inside the window
            view(2, "a", "e2", T0 + 61_000, T0 + 61_000),
            view(3, "b", "e1", T0 + 1_000, T0 + 1_000),
        ];
        put(&archive, T0, (0, 4), &hour1).await;
        // Received two hours later (late): a new view, and a late copy of a1's e2.
        let late = vec![view(4, "a", "e9", T0 + 2_000, T0 + 2 * HOUR), view(5, "a", "e2", T0 + 61_000, T0 + 2 * HOUR)];
        put(&archive, T0 + 2 * HOUR, (4, 6), &late).await;
        let counted = recount(&archive, &scope(3 * HOUR), &rule()).await.unwrap();
        assert_eq!(counted.rows_read, 6);
        assert_eq!((counted.duplicates, counted.late), (2, 1));
        assert_eq!(counted.minutes.get(&("a".to_owned(), T0)), Some(&2));
        assert_eq!(counted.minutes.get(&("a".to_owned(), T0 + MIN)), Some(&1));
        assert_eq!(counted.minutes.get(&("b".to_owned(), T0)), Some(&1));
        // a: viewers of e1, e2 and the late e9 (a's late copy of e2 is no second view).
        assert_eq!(counted.viewers.hour(T0), vec![("a".to_owned(), 3), ("b".to_owned(), 1)]);
        let without_late = recount(&archive, &scope(0), &rule()).await.unwrap();
        assert_eq!(without_late.viewers.hour(T0), vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
        assert_eq!(without_late.minutes.get(&("a".to_owned(), T0)), Some(&1));
    }

    #[test]
    fn the_window_phase_takes_every_file_in_the_offset_range_whatever_its_hour() {
        let file = |hour: i64, partition: i32, start: i64, end: i64| {
            (
                format!("{}/{}", layout::hour_prefix(hour), layout::file_name(partition, start, end)),
                (partition, start, end),
            )
        };
        let files = vec![
            file(T0 - 2 * HOUR, 0, 0, 10),  // before the lookback
            file(T0 - HOUR, 0, 10, 20),     // the lookback hour
            file(T0 - 3 * HOUR, 0, 20, 21), // a replayed dead letter: an old receive hour, inside the range
            file(T0, 0, 21, 30),            // the period
            file(T0 + 5 * HOUR, 0, 30, 31), // a gateway far ahead, inside the range
            file(T0, 0, 31, 40),            // the period again
            file(T0 + HOUR, 0, 40, 50),     // within the allowed lateness after it
            file(T0 + 2 * HOUR, 0, 50, 60), // late
            file(T0 + 2 * HOUR, 1, 0, 5),   // late, a partition with nothing earlier
            file(T0 + 9 * HOUR, 0, 60, 70), // past the lookahead
        ];
        let plan = Plan::new(&files, &scope(3 * HOUR), &rule());
        let names = |picked: &[usize]| picked.iter().map(|i| files[*i].0.clone()).collect::<Vec<_>>();
        assert_eq!(plan.window.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(plan.window[&0], names(&[1, 2, 3, 4, 5, 6]), "in offset order");
        assert_eq!(plan.late, names(&[7, 8]));
    }
}
