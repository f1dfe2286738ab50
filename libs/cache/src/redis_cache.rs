//! Redis: one key per video, `tally:total:{video}` → JSON, with a TTL,
//! written by a script that keeps a newer entry ([`PUT_NEWER`]).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::{CacheError, CachedRange, CachedTotal};

/// Redis-backed cache; cheap to clone (one multiplexed, reconnecting connection).
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
}

/// Writes each key unless it holds a newer entry, by the rule of
/// [`CachedTotal::newer_or_same`]. `KEYS`: the entries' keys; `ARGV[1]`: TTL
/// in seconds, then `batch_generation`, `views` and the JSON value of each
/// key. One script for the whole write: atomic against every other writer.
/// (Numbers compare as Lua doubles: exact below 2^53, past any view count or
/// generation.) Returns how many keys were written.
pub const PUT_NEWER: &str = r"
local ttl = ARGV[1]
local written = 0
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 3
  local generation = tonumber(ARGV[at])
  local views = tonumber(ARGV[at + 1])
  local keep = false
  local old = redis.call('GET', key)
  if old then
    local ok, entry = pcall(cjson.decode, old)
    if ok and type(entry) == 'table' then
      local old_generation = tonumber(entry['batch_generation']) or 0
      local old_views = tonumber(entry['views']) or 0
      keep = old_generation > generation or (old_generation == generation and old_views > views)
    end
  end
  if not keep then
    redis.call('SET', key, ARGV[at + 2], 'EX', ttl)
    written = written + 1
  end
end
return written
";

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
        let seconds = retention.as_secs().max(1);
        let mut script = redis::cmd("EVAL");
        script.arg(PUT_NEWER).arg(entries.len());
        for (video, _) in entries {
            script.arg(key(video));
        }
        script.arg(seconds);
        for (_, entry) in entries {
            let value = serde_json::to_string(entry).map_err(|e| CacheError(e.to_string()))?;
            script.arg(entry.batch_generation).arg(entry.views).arg(value);
        }
        let mut connection = self.connection.clone();
        script.query_async::<i64>(&mut connection).await.map(|_| ()).map_err(|e| CacheError(e.to_string()))
    }

    pub(crate) async fn get_range(&self, key: &str) -> Result<Option<CachedRange>, CacheError> {
        let mut connection = self.connection.clone();
        let raw: Option<String> =
            connection.get(format!("tally:range:{key}")).await.map_err(|e| CacheError(e.to_string()))?;
        Ok(raw.and_then(|text| serde_json::from_str(&text).ok()))
    }

    pub(crate) async fn put_range(
        &self,
        key: &str,
        entry: &CachedRange,
        retention: Duration,
    ) -> Result<(), CacheError> {
        let value = serde_json::to_string(entry).map_err(|e| CacheError(e.to_string()))?;
        let mut connection = self.connection.clone();
        connection
            .set_ex::<_, _, ()>(format!("tally:range:{key}"), value, retention.as_secs().max(1))
            .await
            .map_err(|e| CacheError(e.to_string()))
    }

    /// PING.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _: String = connection.ping().await.map_err(|e| CacheError(e.to_string()))?;
        Ok(())
    }
}
