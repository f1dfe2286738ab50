//! What one chunk does to one video, decided from the rows as read: pure
//! functions, so the idempotence rules are tested without a cluster.
//!
//! A minute row `(minute, salt, source_partition)` appears at most once per
//! flush, so it is applied only when its stored `version` is older than the
//! flush's. A rollup row gathers many minute rows and may be touched by
//! several chunks of one flush; it moves by exactly the deltas whose minute
//! rows are applied, in the same single-partition batch, so "minute row
//! applied" and "its delta is in the rollups" are one fact. Both are written
//! with the flush version as cell timestamp: two chunks of one flush write a
//! rollup at the same timestamp, and on a tie ScyllaDB keeps the greater
//! value, which is the later chunk's (counts only grow within a version).

use std::collections::{BTreeMap, HashMap};

use tally_model::counts::FlushChunk;

use crate::model::Granularity;
use crate::StoreError;

/// Stored granularity codes (`view_counts.granularity`).
pub const MINUTE: i8 = Granularity::Minute.code();
/// Hour rollup.
pub const HOUR: i8 = Granularity::Hour.code();
/// Day rollup (UTC).
pub const DAY: i8 = Granularity::Day.code();
/// All-time rollup, bucket 0.
pub const TOTAL: i8 = 3;

/// One video's deltas from one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoUpdate {
    /// The video (the partition key).
    pub video_id: String,
    /// Source partition of `tally.views`.
    pub source_partition: i32,
    /// Version of the flush: the cell timestamp of every write.
    pub version: i64,
    /// `(salt, minute, count)`, in chunk order.
    pub deltas: Vec<(i16, i64, i64)>,
}

impl VideoUpdate {
    /// Smallest and greatest minute of the deltas.
    pub fn minute_range(&self) -> (i64, i64) {
        let minutes = self.deltas.iter().map(|d| d.1);
        (minutes.clone().min().unwrap_or(0), minutes.max().unwrap_or(0))
    }

    /// Rollup rows the deltas touch: `(granularity, bucket)`.
    pub fn rollup_keys(&self) -> Vec<(i8, i64)> {
        let mut keys: Vec<(i8, i64)> = self
            .deltas
            .iter()
            .flat_map(|d| [(HOUR, Granularity::Hour.bucket(d.1)), (DAY, Granularity::Day.bucket(d.1))])
            .chain([(TOTAL, 0)])
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Hours the deltas fall in.
    pub fn hours(&self) -> Vec<i64> {
        let mut hours: Vec<i64> = self.deltas.iter().map(|d| Granularity::Hour.bucket(d.1)).collect();
        hours.sort_unstable();
        hours.dedup();
        hours
    }
}

/// Splits a chunk into per-video updates (a video's deltas are contiguous in
/// a chunk, sorted by the counter; they are merged by video regardless).
pub fn updates(chunk: &FlushChunk) -> Result<Vec<VideoUpdate>, StoreError> {
    let header = chunk.header;
    let source_partition = i32::try_from(header.source_partition)
        .map_err(|_| StoreError::Invalid(format!("source partition {} out of range", header.source_partition)))?;
    let version = header.version();
    let mut by_video: BTreeMap<&str, Vec<(i16, i64, i64)>> = BTreeMap::new();
    for delta in &chunk.deltas {
        let salt = i16::try_from(delta.salt.0)
            .map_err(|_| StoreError::Invalid(format!("salt {} out of range", delta.salt.0)))?;
        by_video.entry(&delta.video_id).or_default().push((salt, delta.minute, i64::from(delta.count)));
    }
    Ok(by_video
        .into_iter()
        .map(|(video, deltas)| VideoUpdate { video_id: video.to_owned(), source_partition, version, deltas })
        .collect())
}

/// The rows of one video and source partition that an update reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// `(minute, salt)` → `(views, version)`.
    pub minutes: HashMap<(i64, i16), (i64, i64)>,
    /// `(granularity, bucket)` → views.
    pub rollups: HashMap<(i8, i64), i64>,
}

/// One row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    /// Granularity code.
    pub granularity: i8,
    /// Bucket start, epoch ms (0 for the total).
    pub bucket: i64,
    /// Salt (minute rows) or 0.
    pub salt: i16,
    /// New absolute views.
    pub views: i64,
}

/// What to write for one update, and how many deltas it applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Rows to write, all at the update's version.
    pub rows: Vec<RowWrite>,
    /// Deltas applied.
    pub applied: u64,
    /// Deltas whose minute row already had this version or a newer one.
    pub stale: u64,
}

/// Decides the writes of `update` given the rows as read.
pub fn plan(update: &VideoUpdate, current: &Current) -> Plan {
    let mut out = Plan::default();
    let mut rollup_increments: BTreeMap<(i8, i64), i64> = BTreeMap::new();
    for &(salt, minute, count) in &update.deltas {
        let (views, version) = current.minutes.get(&(minute, salt)).copied().unwrap_or((0, i64::MIN));
        if version >= update.version {
            out.stale += 1;
            continue;
        }
        out.applied += 1;
        out.rows.push(RowWrite { granularity: MINUTE, bucket: minute, salt, views: views + count });
        for key in [(HOUR, Granularity::Hour.bucket(minute)), (DAY, Granularity::Day.bucket(minute)), (TOTAL, 0)] {
            *rollup_increments.entry(key).or_default() += count;
        }
    }
    for ((granularity, bucket), increment) in rollup_increments {
        let views = current.rollups.get(&(granularity, bucket)).copied().unwrap_or(0) + increment;
        out.rows.push(RowWrite { granularity, bucket, salt: 0, views });
    }
    out
}

#[cfg(test)]
mod tests {
    use tally_model::counts::{Delta, FlushHeader};
    use tally_model::Salt;

    use super::*;

    const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z, an hour start
    const MIN: i64 = 60_000;

    fn chunk(end: i64, deltas: &[(&str, u16, i64, u32)]) -> FlushChunk {
        FlushChunk {
            header: FlushHeader { source_partition: 3, start: 0, end, chunk_count: 1, ..Default::default() },
            deltas: deltas
                .iter()
                .map(|(v, s, m, c)| Delta { video_id: (*v).into(), salt: Salt(*s), minute: *m, count: *c })
                .collect(),
            uniques: Vec::new(),
            trending: Vec::new(),
        }
    }

    /// Plans `update` and applies the plan to `current` the way the batch does.
    fn apply(current: &mut Current, update: &VideoUpdate) {
        let planned = plan(update, current);
        for row in &planned.rows {
            if row.granularity == MINUTE {
                current.minutes.insert((row.bucket, row.salt), (row.views, update.version));
            } else {
                let cell = current.rollups.entry((row.granularity, row.bucket)).or_default();
                // Same timestamp: the greater value wins; newer timestamps always win.
                *cell = (*cell).max(row.views);
            }
        }
    }

    #[test]
    fn a_chunk_is_split_by_video_and_merged_per_video() {
        let c = chunk(10, &[("a", 0, T0, 2), ("a", 1, T0, 1), ("b", 0, T0 + MIN, 4), ("a", 0, T0 + MIN, 1)]);
        let u = updates(&c).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].video_id, "a");
        assert_eq!(u[0].deltas, vec![(0, T0, 2), (1, T0, 1), (0, T0 + MIN, 1)]);
        assert_eq!((u[0].source_partition, u[0].version), (3, 10));
        assert_eq!(u[1].deltas, vec![(0, T0 + MIN, 4)]);
    }

    #[test]
    fn first_apply_writes_minutes_and_every_rollup() {
        let u = &updates(&chunk(10, &[("a", 0, T0, 2), ("a", 0, T0 + 61 * MIN, 3)])).unwrap()[0];
        let p = plan(u, &Current::default());
        assert_eq!((p.applied, p.stale), (2, 0));
        let views = |g: i8, b: i64| p.rows.iter().find(|r| r.granularity == g && r.bucket == b).map(|r| r.views);
        assert_eq!(views(MINUTE, T0), Some(2));
        assert_eq!(views(HOUR, T0), Some(2));
        assert_eq!(views(HOUR, T0 + 60 * MIN), Some(3));
        assert_eq!(views(DAY, Granularity::Day.bucket(T0)), Some(5));
        assert_eq!(views(TOTAL, 0), Some(5));
        assert_eq!(u.rollup_keys().len(), 4);
        assert_eq!(u.minute_range(), (T0, T0 + 61 * MIN));
    }

    #[test]
    fn replaying_an_applied_update_writes_nothing() {
        let u = &updates(&chunk(10, &[("a", 0, T0, 2)])).unwrap()[0];
        let mut current = Current::default();
        let p = plan(u, &current);
        apply(&mut current, u);
        assert_eq!(p.applied, 1);
        let again = plan(u, &current);
        assert_eq!((again.applied, again.stale), (0, 1));
        assert!(again.rows.is_empty());
    }

    #[test]
    fn an_older_flush_after_a_newer_one_is_stale() {
        let newer = &updates(&chunk(20, &[("a", 0, T0, 2)])).unwrap()[0];
        let older = &updates(&chunk(10, &[("a", 0, T0, 7)])).unwrap()[0];
        let mut current = Current::default();
        apply(&mut current, newer);
        let p = plan(older, &current);
        assert_eq!((p.applied, p.stale), (0, 1));
    }

    #[test]
    fn a_video_split_over_two_chunks_of_one_flush_counts_both_parts_once() {
        // Chunks of one flush share a version: the rollup is written twice at
        // one timestamp, and the tie rule keeps the later, greater value.
        let first = &updates(&chunk(10, &[("a", 0, T0, 1)])).unwrap()[0];
        let second = &updates(&chunk(10, &[("a", 0, T0 + 61 * MIN, 5)])).unwrap()[0];
        let mut current = Current::default();
        current.rollups.insert((TOTAL, 0), 4);
        current.minutes.insert((T0, 0), (4, 5));
        apply(&mut current, first);
        apply(&mut current, second);
        assert_eq!(current.rollups[&(TOTAL, 0)], 10);
        // Both chunks replayed: nothing moves.
        for u in [first, second] {
            let p = plan(u, &current);
            assert!(p.rows.is_empty() && p.stale == 1);
        }
        assert_eq!(current.rollups[&(TOTAL, 0)], 10);
        assert_eq!(current.minutes[&(T0, 0)], (5, 10));
    }

    #[test]
    fn salts_and_partitions_out_of_range_are_invalid() {
        let mut c = chunk(10, &[("a", 0, T0, 1)]);
        c.deltas[0].salt = Salt(u16::MAX);
        assert!(matches!(updates(&c), Err(StoreError::Invalid(_))));
        let mut c = chunk(10, &[("a", 0, T0, 1)]);
        c.header.source_partition = u32::MAX;
        assert!(matches!(updates(&c), Err(StoreError::Invalid(_))));
    }
}
