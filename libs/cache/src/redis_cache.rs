//! Redis: one key per video, `tally:total:{video}` → JSON, with a TTL.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::{CacheError, CachedTotal};

/// Redis-backed cache; cheap to clone (one multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
}

fn key(video: &str) -> String {
    format!("tally:total:{video}")
}

impl RedisCache {
    /// Connects to `url` with `timeout` on connecting and on every response,
    /// so a dead Redis costs at most that per call.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection =
            ConnectionManager::new_with_config(client, config).await.map_err(|e| CacheError(e.to_string()))?;
        Ok(Self { connection })
    }

    pub(crate) async fn get_many(&self, videos: &[String]) -> Result<Vec<Option<CachedTotal>>, CacheError> {
        if videos.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = videos.iter().map(|v| key(v)).collect();
        let mut connection = self.connection.clone();
        let raw: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut connection).await.map_err(|e| CacheError(e.to_string()))?;
        Ok(raw.into_iter().map(|value| value.and_then(|text| serde_json::from_str(&text).ok())).collect())
    }

    pub(crate) async fn put_many(
        &self,
        entries: &[(String, CachedTotal)],
        retention: Duration,
    ) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let seconds = retention.as_secs().max(1);
        for (video, entry) in entries {
            let value = serde_json::to_string(entry).map_err(|e| CacheError(e.to_string()))?;
            pipe.set_ex(key(video), value, seconds).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await.map_err(|e| CacheError(e.to_string()))
    }

    /// PING.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _: String = connection.ping().await.map_err(|e| CacheError(e.to_string()))?;
        Ok(())
    }
}
