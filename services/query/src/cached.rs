//! Cached JSON answers behind a circuit breaker, shared by the range reads
//! (unique viewers, trending): a cache failure opens the circuit and reads
//! go to the store; it never fails a request.

use std::time::Duration;

use tally_cache::{CacheBackend, CachedRange};
use tally_service::breaker::Breaker;

/// An optional cache and its circuit.
pub struct AnswerCache {
    cache: Option<CacheBackend>,
    breaker: Breaker,
    retention: Duration,
}

/// What a cache read gave.
pub struct Cached {
    /// The entry, when there is one.
    pub entry: Option<CachedRange>,
    /// Whether the cache was skipped or failed (its circuit open, or an error).
    pub bypassed: bool,
}

impl AnswerCache {
    /// Entries of `cache` (none: nothing is cached) kept for `retention`.
    pub fn new(cache: Option<CacheBackend>, breaker: Breaker, retention: Duration) -> Self {
        Self { cache, breaker, retention }
    }

    /// The entry under `key`, if the cache is there and answers.
    pub async fn get(&self, key: &str) -> Cached {
        let Some(cache) = &self.cache else { return Cached { entry: None, bypassed: false } };
        if !self.breaker.allow() {
            return Cached { entry: None, bypassed: true };
        }
        match cache.get_range(key).await {
            Ok(entry) => {
                self.breaker.success();
                Cached { entry, bypassed: false }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache read failed; reading the store");
                self.breaker.failure();
                Cached { entry: None, bypassed: true }
            }
        }
    }

    /// Writes `entry` under `key` (failures are logged and counted by the circuit).
    pub async fn put(&self, key: &str, entry: CachedRange) {
        let Some(cache) = &self.cache else { return };
        if !self.breaker.allow() {
            return;
        }
        match cache.put_range(key, &entry, self.retention).await {
            Ok(()) => self.breaker.success(),
            Err(e) => {
                tracing::warn!(error = %e, "cache write failed");
                self.breaker.failure();
            }
        }
    }
}
