//! Run-time hot-key detection: a heavy-hitter sketch over one-second windows.
//!
//! Each window counts videos with the Misra–Gries algorithm in at most
//! `capacity` counters, so memory stays bounded however many videos are
//! watched; a video whose true count in a window exceeds `window / capacity`
//! is always tracked, and its count is under-estimated by at most that much.
//! A video whose (estimated) rate crosses the threshold is hot from then on
//! until `hold` has passed without crossing it again.
//!
//! What one gateway detects is its own traffic: another gateway, or the
//! same one restarted, decides differently. So detection never chooses a
//! partition key ([`crate::salt`]); it reports (a metric, a suggestion for
//! the operator to add the video to the configured hot list).

use std::collections::HashMap;

/// Length of one counting window.
pub const WINDOW_MS: i64 = 1_000;

/// Tracks which videos are hot. Not thread-safe: callers lock it once per
/// request, not once per event.
#[derive(Debug)]
pub struct HotKeyDetector {
    threshold: u64,
    hold_ms: i64,
    capacity: usize,
    window_start_ms: i64,
    counts: HashMap<String, u64>,
    hot_until_ms: HashMap<String, i64>,
    /// Videos that turned hot since the last [`Self::take_newly_hot`].
    newly_hot: Vec<String>,
}

impl HotKeyDetector {
    /// A detector marking videos above `threshold_per_sec` hot for `hold_ms`.
    /// A threshold of 0 disables detection.
    pub fn new(threshold_per_sec: u64, hold_ms: i64, capacity: usize) -> Self {
        Self {
            threshold: threshold_per_sec,
            hold_ms,
            capacity: capacity.max(1),
            window_start_ms: i64::MIN,
            counts: HashMap::new(),
            hot_until_ms: HashMap::new(),
            newly_hot: Vec::new(),
        }
    }

    /// Counts one event of `video_id` at `now_ms` and says whether the video is hot.
    pub fn observe(&mut self, video_id: &str, now_ms: i64) -> bool {
        if self.threshold == 0 {
            return false;
        }
        self.roll_window(now_ms);
        if let Some(count) = self.counts.get_mut(video_id) {
            *count += 1;
            if *count >= self.threshold {
                let previous = self.hot_until_ms.insert(video_id.to_owned(), now_ms + self.hold_ms);
                if previous.is_none_or(|until| until <= now_ms) {
                    self.newly_hot.push(video_id.to_owned());
                }
            }
        } else if self.counts.len() < self.capacity {
            self.counts.insert(video_id.to_owned(), 1);
        } else {
            // Misra–Gries: a new item when every counter is taken decrements all.
            self.counts.retain(|_, count| {
                *count -= 1;
                *count > 0
            });
        }
        self.is_hot(video_id, now_ms)
    }

    /// Whether `video_id` is hot at `now_ms`, without counting an event.
    pub fn is_hot(&self, video_id: &str, now_ms: i64) -> bool {
        self.hot_until_ms.get(video_id).is_some_and(|until| *until > now_ms)
    }

    /// Videos that turned hot since the last call, in the order they did.
    pub fn take_newly_hot(&mut self) -> Vec<String> {
        std::mem::take(&mut self.newly_hot)
    }

    /// Videos hot at `now_ms`.
    pub fn hot_count(&self, now_ms: i64) -> usize {
        self.hot_until_ms.values().filter(|until| **until > now_ms).count()
    }

    fn roll_window(&mut self, now_ms: i64) {
        if self.window_start_ms == i64::MIN || now_ms >= self.window_start_ms + WINDOW_MS {
            self.window_start_ms = now_ms - now_ms.rem_euclid(WINDOW_MS);
            self.counts.clear();
            self.hot_until_ms.retain(|_, until| *until > now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_over_the_threshold_becomes_hot_and_cools_after_the_hold() {
        let mut detector = HotKeyDetector::new(100, 10_000, 16);
        let t0 = 1_000_000;
        for i in 0..150 {
            detector.observe("viral", t0 + i);
            detector.observe(&format!("cold-{i}"), t0 + i);
        }
        assert!(detector.is_hot("viral", t0 + 200));
        assert!(!detector.is_hot("cold-1", t0 + 200));
        assert_eq!(detector.take_newly_hot(), vec!["viral".to_owned()], "reported once");
        assert!(detector.take_newly_hot().is_empty());
        assert!(detector.is_hot("viral", t0 + 9_000), "held after the burst");
        assert!(!detector.observe("viral", t0 + 20_000), "cooled once the hold passed");
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_videos() {
        let mut detector = HotKeyDetector::new(1_000, 1_000, 64);
        for i in 0..100_000 {
            detector.observe(&format!("v{i}"), 5_000);
            assert!(detector.counts.len() <= 64);
        }
        assert_eq!(detector.hot_count(5_000), 0);
    }

    #[test]
    fn a_heavy_hitter_survives_noise_from_other_videos() {
        let mut detector = HotKeyDetector::new(500, 1_000, 32);
        for i in 0..4_000 {
            detector.observe(&format!("noise-{}", i % 997), 7_000);
            if i % 3 == 0 {
                detector.observe("viral", 7_000);
            }
        }
        assert!(detector.is_hot("viral", 7_001));
    }

    #[test]
    fn a_zero_threshold_disables_detection() {
        let mut detector = HotKeyDetector::new(0, 1_000, 8);
        assert!(!(0..10_000).any(|_| detector.observe("v", 1)));
    }
}
