//! Partition keys of hot videos, salted so that a hot video's events spread
//! over partitions while every retry of an event keeps the key of its first
//! attempt.
//!
//! A cold video's events are keyed by its id, so one partition (and one
//! counter) owns all of them. A hot video's events are keyed by
//! `video_id~salt`, with
//!
//! `salt = 1 + hash(event_id) mod sub_shards`
//!
//! # The rule
//!
//! Dedup is per partition: a retry is deduplicated only if it lands on the
//! partition of its first attempt. So the salt, and the decision to salt at
//! all, come only from what a retry repeats and from state every gateway
//! holds alike:
//!
//! - the salt from the `event_id` (a retry repeats it; a stable hash spreads
//!   a hot video evenly over its `sub_shards` keys), never from the event
//!   time: a client that omits `ts` gets the gateway's clock, which differs
//!   on a retry, and a time slot of it sent retries across a slot boundary
//!   to another partition;
//! - the decision from the configured list `hot-videos` alone, which every
//!   gateway must list alike. Never from a gateway's run-time detector
//!   ([`crate::hot`]): two gateways (or one restarted) see different
//!   traffic, and a retry through the other one would land elsewhere. The
//!   detector only reports videos over its threshold (a metric, a logged
//!   suggestion to add them to `hot-videos`).
//!
//! Changing `hot-videos` moves a video's new events to other keys, so
//! retries of events first sent before the change are not deduplicated
//! against them: change it on every gateway at once, ideally before the
//! video's traffic starts (a launch, a live event).
//!
//! Count rows are keyed by `(video_id, salt, minute)`; readers, rollups and
//! the batch recount sum a video over its salts, whatever their values.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::ViewEvent;
use crate::hash::stable_hash;

/// Most sub-shards: salts `1..=MAX_SUB_SHARDS` fit every store's salt column
/// (ScyllaDB's is a `smallint`).
pub const MAX_SUB_SHARDS: u16 = i16::MAX as u16;

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SaltingConfig {
    /// Videos salted (spread over `sub-shards` keys), whatever their rate:
    /// known launches, live events. Every gateway must list the same videos
    /// (see [the rule](self)).
    pub hot_videos: Vec<String>,
    /// Rate, in events per second seen by one gateway, above which the
    /// detector reports a video hot (`tally_ingest_hot_videos`, and a logged
    /// suggestion to add it to `hot-videos`); it never salts. `0` turns
    /// detection off.
    pub detect_threshold_per_sec: u64,
    /// How long a detected video stays reported hot after its rate last
    /// crossed the threshold.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Salted keys a hot video spreads over (partitions, when they hash apart).
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
            sub_shards: 4,
            detector_capacity: 1024,
        }
    }
}

/// Why a salting configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaltingConfigError {
    /// No sub-shard to spread over.
    #[error("salting: sub-shards must be at least 1")]
    Zero,
    /// More salts than every store holds (ScyllaDB keeps them as `smallint`).
    #[error("salting: sub-shards must be at most {MAX_SUB_SHARDS}")]
    TooManySalts,
    /// A configured hot video id is invalid.
    #[error("salting: hot video {0:?} is not a valid video id")]
    BadVideoId(String),
}

/// Decides salts from a validated configuration: a function of the event
/// and the configuration alone.
#[derive(Debug, Clone)]
pub struct SaltPolicy {
    always_hot: HashSet<String>,
    sub_shards: u64,
}

impl SaltPolicy {
    /// Validates `config`.
    pub fn new(config: &SaltingConfig) -> Result<Self, SaltingConfigError> {
        if config.sub_shards == 0 {
            return Err(SaltingConfigError::Zero);
        }
        if config.sub_shards > MAX_SUB_SHARDS {
            return Err(SaltingConfigError::TooManySalts);
        }
        for id in &config.hot_videos {
            crate::video_id::validate(id).map_err(|_| SaltingConfigError::BadVideoId(id.clone()))?;
        }
        Ok(Self { always_hot: config.hot_videos.iter().cloned().collect(), sub_shards: u64::from(config.sub_shards) })
    }

    /// Whether `video_id` is on the configured hot list.
    pub fn is_configured_hot(&self, video_id: &str) -> bool {
        self.always_hot.contains(video_id)
    }

    /// The salt of `event`: from its `event_id` when its video is on the
    /// configured hot list, else [`Salt::NONE`].
    pub fn salt(&self, event: &ViewEvent) -> Salt {
        self.salt_for(event, self.is_configured_hot(event.video_id.as_str()))
    }

    /// The salt of `event` when its video is hot (`hot`), else [`Salt::NONE`].
    /// Only the event id decides it: a retry gets the same salt whatever its
    /// time, whichever gateway it reaches.
    pub fn salt_for(&self, event: &ViewEvent, hot: bool) -> Salt {
        if !hot {
            return Salt::NONE;
        }
        let sub = stable_hash(event.event_id.as_str().as_bytes()) % self.sub_shards;
        // Bounded by the constructor's check: 1 + sub <= MAX_SUB_SHARDS < u16::MAX.
        Salt(u16::try_from(1 + sub).expect("sub-shards fit the salt"))
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
        assert_eq!(policy().salt(&event("e1", 1_000)), Salt::NONE, "not on the configured list");
        assert_eq!(PartitionKey::new("v", Salt::NONE).to_string(), "v");
    }

    #[test]
    fn a_salt_depends_on_the_event_id_alone_never_on_its_time() {
        let a = policy();
        let b = SaltPolicy::new(&SaltingConfig::default()).unwrap();
        for i in 0..1000 {
            let first = event(&format!("evt-{i}"), 1_795_341_600_000 + i * 997);
            // A retry without a client ts: another receive time, hours later.
            let retry = event(&format!("evt-{i}"), 1_795_341_600_000 + i * 997 + 3 * 3_600_000 + 1);
            assert_eq!(a.salt_for(&first, true), b.salt_for(&retry, true), "evt-{i}");
        }
    }

    #[test]
    fn a_configured_hot_video_spreads_evenly_over_its_sub_shards() {
        let config = SaltingConfig { hot_videos: vec!["viral".into()], sub_shards: 8, ..SaltingConfig::default() };
        let p = SaltPolicy::new(&config).unwrap();
        let mut per_salt = std::collections::BTreeMap::<Salt, u32>::new();
        for i in 0..8_000 {
            *per_salt.entry(p.salt(&event(&format!("e{i}"), 1_795_341_600_000))).or_default() += 1;
        }
        assert_eq!(per_salt.keys().copied().collect::<Vec<_>>(), (1..=8).map(Salt).collect::<Vec<_>>());
        assert!(per_salt.values().all(|n| (800..1_200).contains(n)), "{per_salt:?}");
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
        let widest = SaltingConfig { sub_shards: MAX_SUB_SHARDS, ..SaltingConfig::default() };
        assert!(SaltPolicy::new(&widest).is_ok());
        let wide = SaltingConfig { sub_shards: MAX_SUB_SHARDS + 1, ..SaltingConfig::default() };
        assert_eq!(SaltPolicy::new(&wide).unwrap_err(), SaltingConfigError::TooManySalts);
        let bad = SaltingConfig { hot_videos: vec!["a b".into()], ..SaltingConfig::default() };
        assert!(matches!(SaltPolicy::new(&bad), Err(SaltingConfigError::BadVideoId(_))));
    }
}
