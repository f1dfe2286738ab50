//! An in-process cache for a single-process deployment (`tally standalone`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{CachedRange, CachedTotal};

/// Bounded in-process cache; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryCache {
    entries: Arc<Mutex<HashMap<String, (CachedTotal, Instant)>>>,
    ranges: Arc<Mutex<HashMap<String, (CachedRange, Instant)>>>,
}

/// Entries kept at most; beyond it expired entries are dropped, then the map is cleared.
const MAX_ENTRIES: usize = 1_000_000;

impl MemoryCache {
    pub(crate) fn get_many(&self, videos: &[String]) -> Vec<Option<CachedTotal>> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        videos
            .iter()
            .map(|v| entries.get(v).filter(|(_, until)| *until > now).map(|(entry, _)| entry.clone()))
            .collect()
    }

    pub(crate) fn get_range(&self, key: &str) -> Option<CachedRange> {
        let ranges = self.ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ranges.get(key).filter(|(_, until)| *until > Instant::now()).map(|(entry, _)| entry.clone())
    }

    pub(crate) fn put_range(&self, key: &str, entry: &CachedRange, retention: Duration) {
        let mut ranges = self.ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if ranges.len() >= MAX_ENTRIES {
            ranges.retain(|_, (_, until)| *until > now);
            if ranges.len() >= MAX_ENTRIES {
                ranges.clear();
            }
        }
        ranges.insert(key.to_owned(), (entry.clone(), now + retention));
    }

    pub(crate) fn put_many(&self, items: &[(String, CachedTotal)], retention: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if entries.len() + items.len() > MAX_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() + items.len() > MAX_ENTRIES {
                entries.clear();
            }
        }
        for (video, entry) in items {
            let kept = entries.get(video).is_some_and(|(old, until)| *until > now && !entry.newer_or_same(old));
            if !kept {
                entries.insert(video.clone(), (entry.clone(), now + retention));
            }
        }
    }
}
