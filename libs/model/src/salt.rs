//! Partition keys with hot-key time salting.
//!
//! A cold video's events are keyed by its id, so one partition (and one
//! counter) owns all of them. A hot video's events are keyed by
//! `video_id~salt`, where the salt combines a time slot of the event time with
//! a sub-shard chosen by the event id:
//!
//! `salt = 1 + (ts / slot mod slots) * sub_shards + hash(event_id) mod sub_shards`
//!
//! Both parts come from the event itself, so a retried event (same `event_id`
//! and `ts`) gets the same key, lands on the same partition and is deduplicated
//! there. The time part rotates a viral video over partitions as time passes;
//! the sub-shard spreads it at any one instant. Count rows are keyed by
//! `(video_id, salt, bucket)`; readers sum over salts.
//!
//! Whether a video is hot comes from the configured list or from the run-time
//! detector ([`crate::hot`]). A retry that crosses a hot/cold transition of
//! that detector can land on another partition; the detector's hold time
//! makes that rare, and the batch recount (deduplicating by `event_id` over
//! all partitions) corrects it.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::event::ViewEvent;
use crate::hash::stable_hash;

/// Separates the video id from the salt in a partition key. Not in the
/// video-id alphabet, so keys are unambiguous.
pub const SALT_SEPARATOR: char = '~';

/// The salt of a count row and of a partition key; `0` means not salted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Salt(pub u16);

impl Salt {
    /// The salt of every cold event.
    pub const NONE: Salt = Salt(0);
}

/// How hot videos are salted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SaltingConfig {
    /// Videos salted always, whatever their rate (known launches, live events).
    pub hot_videos: Vec<String>,
    /// Rate, in events per second seen by one gateway, above which the
    /// detector salts a video; `0` turns run-time detection off.
    pub detect_threshold_per_sec: u64,
    /// How long a detected video stays salted after its rate last crossed the
    /// threshold; long, so retries rarely straddle a transition.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Length of one time slot of the salt.
    #[serde(with = "humantime_serde")]
    pub slot: Duration,
    /// Distinct time slots before the salt repeats.
    pub slots: u16,
    /// Sub-shards per time slot: how many partitions a hot video spreads over at once.
    pub sub_shards: u16,
    /// Distinct videos the detector tracks at once (heavy-hitter sketch size).
    pub detector_capacity: usize,
}

impl Default for SaltingConfig {
    fn default() -> Self {
        Self {
            hot_videos: Vec::new(),
            detect_threshold_per_sec: 2_000,
            hold: Duration::from_secs(600),
            slot: Duration::from_secs(60),
            slots: 16,
            sub_shards: 4,
            detector_capacity: 1024,
        }
    }
}

/// Why a salting configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaltingConfigError {
    /// A zero where at least one is needed.
    #[error("salting: slot, slots and sub-shards must be at least 1")]
    Zero,
    /// Too many distinct salts for the 16-bit salt.
    #[error("salting: slots * sub-shards must be below 65535")]
    TooManySalts,
    /// A configured hot video id is invalid.
    #[error("salting: hot video {0:?} is not a valid video id")]
    BadVideoId(String),
}

/// Decides salts from a validated configuration.
#[derive(Debug, Clone)]
pub struct SaltPolicy {
    always_hot: HashSet<String>,
    slot_ms: i64,
    slots: i64,
    sub_shards: u64,
}

impl SaltPolicy {
    /// Validates `config`.
    pub fn new(config: &SaltingConfig) -> Result<Self, SaltingConfigError> {
        let slot_ms = i64::try_from(config.slot.as_millis()).unwrap_or(i64::MAX);
        if slot_ms == 0 || config.slots == 0 || config.sub_shards == 0 {
            return Err(SaltingConfigError::Zero);
        }
        if u32::from(config.slots) * u32::from(config.sub_shards) >= u32::from(u16::MAX) {
            return Err(SaltingConfigError::TooManySalts);
        }
        for id in &config.hot_videos {
            crate::video_id::validate(id).map_err(|_| SaltingConfigError::BadVideoId(id.clone()))?;
        }
        Ok(Self {
            always_hot: config.hot_videos.iter().cloned().collect(),
            slot_ms,
            slots: i64::from(config.slots),
            sub_shards: u64::from(config.sub_shards),
        })
    }

    /// Whether `video_id` is on the configured always-hot list.
    pub fn is_configured_hot(&self, video_id: &str) -> bool {
        self.always_hot.contains(video_id)
    }

    /// The salt of `event` when its video is hot (`hot`), else [`Salt::NONE`].
    pub fn salt_for(&self, event: &ViewEvent, hot: bool) -> Salt {
        if !hot {
            return Salt::NONE;
        }
        let slot = event.ts_ms.div_euclid(self.slot_ms).rem_euclid(self.slots);
        let sub = stable_hash(event.event_id.as_str().as_bytes()) % self.sub_shards;
        // Bounded by the constructor's check: 1 + slots * sub_shards < u16::MAX.
        let raw = 1 + u64::try_from(slot).unwrap_or(0) * self.sub_shards + sub;
        Salt(u16::try_from(raw).unwrap_or(u16::MAX))
    }
}

/// The Kafka record key of an event: `video_id`, or `video_id~salt` when salted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKey(String);

impl PartitionKey {
    /// The key for `video_id` under `salt`.
    pub fn new(video_id: &str, salt: Salt) -> Self {
        if salt == Salt::NONE {
            Self(video_id.to_owned())
        } else {
            Self(format!("{video_id}{SALT_SEPARATOR}{}", salt.0))
        }
    }

    /// The key as bytes, for the producer.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Splits a key back into video id and salt.
    pub fn split(key: &str) -> Option<(&str, Salt)> {
        match key.split_once(SALT_SEPARATOR) {
            None => Some((key, Salt::NONE)),
            Some((video, salt)) => salt.parse().ok().map(|s| (video, Salt(s))),
        }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use crate::video_id::VideoId;

    fn event(id: &str, ts_ms: i64) -> ViewEvent {
        ViewEvent {
            video_id: VideoId::parse("viral").unwrap(),
            ts_ms,
            event_id: EventId::parse(id).unwrap(),
            viewer_id: None,
            attributes: None,
            received_ms: ts_ms,
        }
    }

    fn policy() -> SaltPolicy {
        SaltPolicy::new(&SaltingConfig::default()).unwrap()
    }

    #[test]
    fn cold_events_are_never_salted() {
        assert_eq!(policy().salt_for(&event("e1", 1_000), false), Salt::NONE);
        assert_eq!(PartitionKey::new("v", Salt::NONE).to_string(), "v");
    }

    #[test]
    fn salting_is_a_function_of_the_event_alone() {
        let a = policy();
        let b = SaltPolicy::new(&SaltingConfig::default()).unwrap();
        for i in 0..1000 {
            let e = event(&format!("evt-{i}"), 1_795_341_600_000 + i * 997);
            assert_eq!(a.salt_for(&e, true), b.salt_for(&e, true));
            assert_eq!(a.salt_for(&e, true), a.salt_for(&e.clone(), true));
        }
    }

    #[test]
    fn hot_events_spread_over_sub_shards_and_slots() {
        let p = policy();
        let same_minute: HashSet<Salt> =
            (0..200).map(|i| p.salt_for(&event(&format!("e{i}"), 1_795_341_600_000), true)).collect();
        assert_eq!(same_minute.len(), 4, "one slot spreads over every sub-shard");
        let over_slots: HashSet<Salt> =
            (0..16).map(|m| p.salt_for(&event("e", 1_795_341_600_000 + m * 60_000), true)).collect();
        assert_eq!(over_slots.len(), 16, "every slot gives another salt");
        assert!(over_slots.iter().all(|s| s.0 >= 1 && s.0 <= 64));
    }

    #[test]
    fn partition_keys_split_back() {
        let key = PartitionKey::new("abc", Salt(12));
        assert_eq!(key.to_string(), "abc~12");
        assert_eq!(PartitionKey::split("abc~12"), Some(("abc", Salt(12))));
        assert_eq!(PartitionKey::split("abc"), Some(("abc", Salt::NONE)));
        assert_eq!(PartitionKey::split("abc~x"), None);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let zero = SaltingConfig { sub_shards: 0, ..SaltingConfig::default() };
        assert_eq!(SaltPolicy::new(&zero).unwrap_err(), SaltingConfigError::Zero);
        let wide = SaltingConfig { slots: 1000, sub_shards: 100, ..SaltingConfig::default() };
        assert_eq!(SaltPolicy::new(&wide).unwrap_err(), SaltingConfigError::TooManySalts);
        let bad = SaltingConfig { hot_videos: vec!["a b".into()], ..SaltingConfig::default() };
        assert!(matches!(SaltPolicy::new(&bad), Err(SaltingConfigError::BadVideoId(_))));
    }
}
