//! The count cache: what the writer writes through after every applied batch
//! and what the query service reads first.
//!
//! An entry is a video's total with the time it was written. Entries live
//! for a long `retention` so that a query can still answer (marked stale)
//! while the store is down; freshness is judged by the reader from
//! `written_ms`.
//!
//! Writes are monotonic: several writers (a salted video spans partitions
//! owned by different writers) and the query service write the totals they
//! read, in any order, so an entry is replaced only by one that is not older
//! ([`CachedTotal::newer_or_same`]: greater batch generation, else at least as
//! many views). Both backends apply the rule, Redis atomically in a script.
//!
//! # Layout
//!
//! - this file: [`Cache`], [`CachedTotal`], [`CacheError`], [`CacheBackend`].
//! - [`redis_cache`]: Redis (`tally:total:{video}` keys holding JSON; range
//!   answers such as unique viewers under `tally:range:{key}`).
//! - [`memory`]: an in-process map for `tally standalone` without Redis.

pub mod memory;
pub mod redis_cache;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use memory::MemoryCache;
pub use redis_cache::RedisCache;

/// A cached total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedTotal {
    /// Views.
    pub views: i64,
    /// The store's `as_of` when read.
    pub as_of_ms: i64,
    /// When the entry was written (epoch ms).
    pub written_ms: i64,
    /// The batch-verified part of `views`.
    #[serde(default)]
    pub batch_views: i64,
    /// End of the last reconciled period, epoch ms.
    #[serde(default)]
    pub exact_through_ms: Option<i64>,
    /// Batch generation of the read (`tally_store::Total::batch_generation`).
    #[serde(default)]
    pub batch_generation: i64,
}

impl CachedTotal {
    /// Whether this entry may replace `old`: it was read at a newer batch
    /// generation (a reconcile may lower a total), or at the same one with at
    /// least as many views (real-time counts only grow). The same rule as the
    /// Redis script's.
    pub fn newer_or_same(&self, old: &Self) -> bool {
        (self.batch_generation, self.views) >= (old.batch_generation, old.views)
    }
}

/// A cached answer about a range (unique viewers of a video over hours):
/// the answer's JSON and when it was written. Unlike totals, such an answer
/// has one writer (the query service), so the last write wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedRange {
    /// The answer, JSON.
    pub json: String,
    /// When the entry was written (epoch ms).
    pub written_ms: i64,
}

/// Why a cache operation failed (the caller degrades to the store).
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(pub String);

/// The cache in use.
#[derive(Clone)]
pub enum CacheBackend {
    /// Redis.
    Redis(RedisCache),
    /// In-process.
    Memory(MemoryCache),
}

impl CacheBackend {
    /// Reads `videos`' entries (`None` for a miss).
    pub async fn get_many(&self, videos: &[String]) -> Result<Vec<Option<CachedTotal>>, CacheError> {
        match self {
            Self::Redis(c) => c.get_many(videos).await,
            Self::Memory(c) => Ok(c.get_many(videos)),
        }
    }

    /// Writes entries, each kept for `retention`, except where the cached
    /// entry is newer ([`CachedTotal::newer_or_same`]).
    pub async fn put_many(&self, entries: &[(String, CachedTotal)], retention: Duration) -> Result<(), CacheError> {
        match self {
            Self::Redis(c) => c.put_many(entries, retention).await,
            Self::Memory(c) => {
                c.put_many(entries, retention);
                Ok(())
            }
        }
    }

    /// Reads the range answer under `key` (`None` for a miss).
    pub async fn get_range(&self, key: &str) -> Result<Option<CachedRange>, CacheError> {
        match self {
            Self::Redis(c) => c.get_range(key).await,
            Self::Memory(c) => Ok(c.get_range(key)),
        }
    }

    /// Writes the range answer under `key`, kept for `retention`.
    pub async fn put_range(&self, key: &str, entry: &CachedRange, retention: Duration) -> Result<(), CacheError> {
        match self {
            Self::Redis(c) => c.put_range(key, entry, retention).await,
            Self::Memory(c) => {
                c.put_range(key, entry, retention);
                Ok(())
            }
        }
    }
}
