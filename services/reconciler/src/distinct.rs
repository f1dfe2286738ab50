//! Exact distinct viewers of a recount: per video, the set of viewer keys
//! ([`tally_model::uniques::viewer_key`]) of the views the recount counted,
//! per UTC hour and per UTC day of event time, as the counter's sketches
//! take them (a counted view with a viewer id; duplicates add nobody).
//!
//! Memory: a key (8 bytes, about 16 with the set's overhead) per distinct
//! viewer of each video in each hour and each day of the recount's scope,
//! the same order as the dedup keys the recount keeps of every view.

use std::collections::{HashMap, HashSet};

use tally_store::Granularity;

/// The viewers of the views a recount counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DistinctViewers {
    per_video: HashMap<String, VideoViewers>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct VideoViewers {
    hours: HashMap<i64, HashSet<u64>>,
    days: HashMap<i64, HashSet<u64>>,
}

impl DistinctViewers {
    /// Adds the viewer (by key) of a counted view of `video` at `ts_ms`.
    pub fn add(&mut self, video: &str, ts_ms: i64, viewer: u64) {
        let viewers = match self.per_video.get_mut(video) {
            Some(viewers) => viewers,
            None => self.per_video.entry(video.to_owned()).or_default(),
        };
        viewers.hours.entry(Granularity::Hour.bucket(ts_ms)).or_default().insert(viewer);
        viewers.days.entry(Granularity::Day.bucket(ts_ms)).or_default().insert(viewer);
    }

    /// Distinct viewers per video in the hour starting at `hour_ms`, for
    /// every video that had any, sorted by video.
    pub fn hour(&self, hour_ms: i64) -> Vec<(String, u64)> {
        self.counts(|v| v.hours.get(&hour_ms))
    }

    /// Distinct viewers per video in the UTC day starting at `day_ms`.
    pub fn day(&self, day_ms: i64) -> Vec<(String, u64)> {
        self.counts(|v| v.days.get(&day_ms))
    }

    fn counts(&self, set: impl Fn(&VideoViewers) -> Option<&HashSet<u64>>) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .per_video
            .iter()
            .filter_map(|(video, viewers)| set(viewers).map(|s| (video.clone(), s.len() as u64)))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;

    #[test]
    fn a_viewer_counts_once_per_hour_and_once_per_day() {
        let t0 = 20 * DAY_MS + 23 * HOUR_MS;
        let mut viewers = DistinctViewers::default();
        viewers.add("a", t0, 1);
        viewers.add("a", t0 + 60_000, 1); // again, same hour
        viewers.add("a", t0 + 120_000, 2);
        viewers.add("a", t0 + HOUR_MS, 1); // next hour, next day
        viewers.add("b", t0 - HOUR_MS, 1); // the same key is another viewer of another video
        assert_eq!(viewers.hour(t0), vec![("a".to_owned(), 2)]);
        assert_eq!(viewers.hour(t0 + HOUR_MS), vec![("a".to_owned(), 1)]);
        assert_eq!(viewers.day(20 * DAY_MS), vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
        assert_eq!(viewers.day(21 * DAY_MS), vec![("a".to_owned(), 1)]);
        assert!(viewers.hour(t0 - 2 * HOUR_MS).is_empty());
    }
}
