//! Deduplication by event id, as a deterministic function of the log.
//!
//! Rule: a record is a duplicate when an earlier record of the same partition
//! with the same `(video_id, event_id)` is still in the window and was
//! received by the gateway at most `window` before or after it. Every record
//! enters the window (duplicates too, so a resend chain keeps matching); the
//! window is a contiguous run of offsets, trimmed from the front when its
//! oldest record was received more than `window` before the newest one seen,
//! or when it holds more than `max_entries` records.
//!
//! Because the window is always a contiguous offset range `[horizon, next)`
//! and everything else follows from its records plus the newest receive
//! time, a restarted counter rebuilds the identical state by re-reading
//! `[horizon, next)` and restoring that time: both are written in every flush
//! record ([`crate::counts::FlushHeader`]).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};

/// One record in the window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    received_ms: i64,
    key: u64,
}

/// Dedup state of one partition.
#[derive(Debug)]
pub struct Dedup {
    window_ms: i64,
    max_entries: usize,
    /// The window, oldest first: `ring[i]` has sequence number `front_seq + i`.
    ring: VecDeque<Entry>,
    front_seq: u64,
    /// Sequence number of the newest entry per key (8 bytes a value, not
    /// the entry itself: the map is most of the window's memory).
    latest: HashMap<u64, u64, foldhash::fast::FixedState>,
    max_received_ms: i64,
}

/// The dedup key of an event: a stable 64-bit hash of video and event id.
/// The hash is XXH3-64 of `video_id`, a `0xff` separator and `event_id`;
/// ids fit a stack buffer, so it is hashed in one shot (no streaming state).
pub fn dedup_key(video_id: &str, event_id: &str) -> u64 {
    let (video, event) = (video_id.as_bytes(), event_id.as_bytes());
    // Most ids are short: zero a small stack buffer, not the largest one.
    match video.len() + 1 + event.len() {
        0..=64 => hash_joined::<64>(video, event),
        65..=256 => hash_joined::<256>(video, event),
        _ => {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(video);
            hasher.update(&[0xff]);
            hasher.update(event);
            hasher.digest()
        }
    }
}

/// XXH3-64 of `video`, `0xff`, `event`, joined in a stack buffer of `N` bytes (which must fit them).
fn hash_joined<const N: usize>(video: &[u8], event: &[u8]) -> u64 {
    let len = video.len() + 1 + event.len();
    let mut buffer = [0u8; N];
    buffer[..video.len()].copy_from_slice(video);
    buffer[video.len()] = 0xff;
    buffer[video.len() + 1..len].copy_from_slice(event);
    xxhash_rust::xxh3::xxh3_64(&buffer[..len])
}

/// Approximate bytes per window entry (ring slot, plus a 16-byte map slot
/// and its control byte at hashbrown's load of 1/2 to 7/8).
pub const BYTES_PER_ENTRY: usize = 24 + 24;

impl Dedup {
    /// An empty window.
    pub fn new(window_ms: i64, max_entries: usize) -> Self {
        Self {
            window_ms,
            max_entries: max_entries.max(1),
            ring: VecDeque::new(),
            front_seq: 0,
            latest: HashMap::with_hasher(foldhash::fast::FixedState::default()),
            max_received_ms: i64::MIN,
        }
    }

    /// Checks the record at `offset` and adds it to the window; `true` when it
    /// is a duplicate.
    pub fn check(&mut self, offset: i64, key: u64, received_ms: i64) -> bool {
        let seq = self.front_seq + self.ring.len() as u64;
        let duplicate = match self.latest.insert(key, seq) {
            // A key's newest entry is always in the ring: trimming it forgets the key.
            Some(previous) => {
                let seen = self.ring[(previous - self.front_seq) as usize].received_ms;
                (received_ms - seen).abs() <= self.window_ms
            }
            None => false,
        };
        self.ring.push_back(Entry { offset, received_ms, key });
        self.max_received_ms = self.max_received_ms.max(received_ms);
        self.trim();
        duplicate
    }

    fn trim(&mut self) {
        let floor = self.max_received_ms.saturating_sub(self.window_ms);
        while let Some(front) = self.ring.front().copied() {
            if front.received_ms >= floor && self.ring.len() <= self.max_entries {
                break;
            }
            self.ring.pop_front();
            if let MapEntry::Occupied(latest) = self.latest.entry(front.key) {
                if *latest.get() == self.front_seq {
                    latest.remove();
                }
            }
            self.front_seq += 1;
        }
    }

    /// The oldest offset still in the window, or `next_offset` when empty.
    pub fn horizon(&self, next_offset: i64) -> i64 {
        self.ring.front().map_or(next_offset, |e| e.offset)
    }

    /// Newest receive time seen.
    pub fn max_received_ms(&self) -> i64 {
        self.max_received_ms
    }

    /// After replaying `[horizon, next)`, restores the newest receive time the
    /// previous owner had seen (it may have come from a record before the horizon).
    pub fn restore_max_received(&mut self, max_received_ms: i64) {
        self.max_received_ms = self.max_received_ms.max(max_received_ms);
        self.trim();
    }

    /// Records in the window.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_key_is_xxh3_of_video_separator_and_event_whatever_the_length() {
        let streaming = |video: &str, event: &str| {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(video.as_bytes());
            hasher.update(&[0xff]);
            hasher.update(event.as_bytes());
            hasher.digest()
        };
        let long_video = "v".repeat(128);
        let long_event = "e".repeat(200);
        let edge_video = "v".repeat(62); // joined: exactly 64 bytes, the small buffer
        for (video, event) in [
            ("v", "e1"),
            ("clip-1", ""),
            (edge_video.as_str(), "e"),
            (edge_video.as_str(), "ee"),
            (long_video.as_str(), "e"),
            ("v", long_event.as_str()),
            (long_video.as_str(), long_event.as_str()), // past every buffer: streamed
        ] {
            assert_eq!(dedup_key(video, event), streaming(video, event), "{video}/{event}");
        }
        assert_ne!(dedup_key("ab", "c"), dedup_key("a", "bc"));
    }

    #[test]
    fn a_resend_inside_the_window_is_a_duplicate_and_outside_is_not() {
        let mut dedup = Dedup::new(10 * MIN, 1_000);
        let key = dedup_key("v", "e1");
        assert!(!dedup.check(0, key, 0));
        assert!(dedup.check(1, key, 5 * MIN), "resent 5 minutes later");
        assert!(!dedup.check(2, dedup_key("v", "e2"), 6 * MIN));
        assert!(!dedup.check(3, dedup_key("w", "e1"), 6 * MIN), "same event id on another video");
        assert!(!dedup.check(4, key, 30 * MIN), "resent after the window");
    }

    #[test]
    fn the_window_is_bounded_by_time_and_by_entries() {
        let mut dedup = Dedup::new(MIN, 100);
        for i in 0..1_000 {
            dedup.check(i, dedup_key("v", &i.to_string()), i * 1_000);
        }
        assert!(dedup.len() <= 61, "one minute of one record per second: {}", dedup.len());
        let mut bounded = Dedup::new(10 * MIN, 100);
        for i in 0..1_000 {
            bounded.check(i, dedup_key("v", &i.to_string()), 0);
        }
        assert_eq!(bounded.len(), 100);
        assert_eq!(bounded.horizon(1_000), 900);
    }

    /// The property recovery relies on: replaying `[horizon, next)` and
    /// restoring the newest receive time gives the same future decisions.
    #[test]
    fn replaying_from_the_horizon_rebuilds_identical_decisions() {
        let records: Vec<(u64, i64)> = (0..5_000i64)
            .map(|i| {
                let id = (i * 7919) % 1_300; // many resends
                let jitter = (i * 37) % 20_000 - 10_000; // receive times out of order
                (dedup_key("v", &id.to_string()), i * 500 + jitter)
            })
            .collect();
        let (prefix, rest) = records.split_at(3_000);
        let mut original = Dedup::new(5 * MIN, 800);
        for (offset, (key, received)) in prefix.iter().enumerate() {
            original.check(offset as i64, *key, *received);
        }
        let horizon = original.horizon(3_000);
        let mut rebuilt = Dedup::new(5 * MIN, 800);
        for offset in horizon..3_000 {
            let (key, received) = prefix[offset as usize];
            rebuilt.check(offset, key, received);
        }
        rebuilt.restore_max_received(original.max_received_ms());
        assert_eq!(rebuilt.len(), original.len());
        for (i, (key, received)) in rest.iter().enumerate() {
            let offset = 3_000 + i as i64;
            assert_eq!(
                original.check(offset, *key, *received),
                rebuilt.check(offset, *key, *received),
                "offset {offset}"
            );
        }
    }
}
