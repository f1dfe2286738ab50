//! An in-process cache for a single-process deployment (`tally standalone`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::CachedTotal;

/// Bounded in-process cache; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryCache {
    entries: Arc<Mutex<HashMap<String, (CachedTotal, Instant)>>>,
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
