//! Cache writes are monotonic: a salted video spans partitions owned by
//! different writers, each writing the total it read after its own batch, so
//! an older total can arrive after a newer one. The cache keeps the newer one
//! (greater batch generation, then more views), in Redis and in process alike.

use std::time::Duration;

use serde_json::json;
use tally_cache::{CacheBackend, CachedTotal, MemoryCache, RedisCache};
use tally_testkit::RedisServer;

const RETENTION: Duration = Duration::from_secs(600);

/// An entry as a store read gives it: `views` at batch generation `generation`.
fn entry(views: i64, generation: i64, written_ms: i64) -> CachedTotal {
    serde_json::from_value(json!({
        "views": views,
        "as_of_ms": written_ms - 50,
        "written_ms": written_ms,
        "batch_views": 0,
        "exact_through_ms": null,
        "batch_generation": generation,
    }))
    .unwrap()
}

async fn views(cache: &CacheBackend, video: &str) -> Option<i64> {
    cache.get_many(&[video.to_owned()]).await.unwrap()[0].as_ref().map(|e| e.views)
}

async fn an_older_total_written_late_does_not_replace_a_newer_one(cache: CacheBackend) {
    let put = |video: &str, e: CachedTotal| {
        let cache = cache.clone();
        let items = vec![(video.to_owned(), e)];
        async move { cache.put_many(&items, RETENTION).await.unwrap() }
    };
    // Writer B applied its batch after writer A's and read 12; A's read (10) lands last.
    put("hot", entry(12, 0, 2_000)).await;
    put("hot", entry(10, 0, 3_000)).await;
    assert_eq!(views(&cache, "hot").await, Some(12), "an older total must not overwrite a newer one");
    // The same total again (a later read, nothing new) refreshes the entry.
    put("hot", entry(12, 0, 4_000)).await;
    let refreshed = cache.get_many(&["hot".to_owned()]).await.unwrap()[0].clone().unwrap();
    assert_eq!((refreshed.views, refreshed.written_ms), (12, 4_000));
    // A reconcile (a newer batch generation) may correct a total downwards...
    put("hot", entry(11, 1, 5_000)).await;
    assert_eq!(views(&cache, "hot").await, Some(11), "a newer batch generation wins even with fewer views");
    // ...and a total read before it, with more views, cannot undo the correction.
    put("hot", entry(13, 0, 6_000)).await;
    assert_eq!(views(&cache, "hot").await, Some(11));
    // Several entries in one write: each compared on its own.
    cache
        .put_many(&[("hot".to_owned(), entry(9, 1, 7_000)), ("cold".to_owned(), entry(1, 0, 7_000))], RETENTION)
        .await
        .unwrap();
    assert_eq!((views(&cache, "hot").await, views(&cache, "cold").await), (Some(11), Some(1)));
    cache
        .put_many(&[("hot".to_owned(), entry(14, 1, 8_000)), ("cold".to_owned(), entry(0, 0, 8_000))], RETENTION)
        .await
        .unwrap();
    assert_eq!((views(&cache, "hot").await, views(&cache, "cold").await), (Some(14), Some(1)));
}

#[tokio::test]
async fn redis_cache_writes_are_monotonic() {
    let redis = RedisServer::start();
    let cache = RedisCache::connect(&redis.url(), Duration::from_secs(2)).await.unwrap();
    an_older_total_written_late_does_not_replace_a_newer_one(CacheBackend::Redis(cache)).await;
}

#[tokio::test]
async fn memory_cache_writes_are_monotonic() {
    an_older_total_written_late_does_not_replace_a_newer_one(CacheBackend::Memory(MemoryCache::default())).await;
}
