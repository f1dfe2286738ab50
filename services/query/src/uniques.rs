//! `GET /v1/videos/{id}/uniques?from=&to=`: distinct viewers over whole
//! hours, cached like totals.
//!
//! The store merges the video's day sketches for the whole UTC days of the
//! range and its hour sketches for the hours at the edges, over every salt
//! and source partition (`tally_store::uniques`). Answers are cached per
//! (video, hours) for `fresh-for`; concurrent misses of one key share one
//! store read; when the store fails, a cached answer of any age is served
//! marked `stale`. Cache errors open the same kind of circuit as for totals.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tally_cache::{CacheBackend, CachedRange};
use tally_model::timestamp::format_rfc3339_ms;
use tally_service::breaker::Breaker;
use tally_service::Problem;
use tally_store::{CountStore, Granularity, StoreError};

use crate::api::{bad_request, check_id, parse_time, unavailable, ApiState};
use crate::cached::{AnswerCache, Cached};
use crate::flights::Flights;

/// Longest range one request may ask for.
pub const MAX_RANGE: Duration = Duration::from_secs(400 * 24 * 3600);

/// Query string of a uniques request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniquesQuery {
    /// Start, RFC 3339 or epoch ms (inclusive; widened to its hour).
    pub from: String,
    /// End, RFC 3339 or epoch ms (exclusive; widened to the end of its hour).
    pub to: String,
}

/// Cache-then-store reads of unique viewers.
pub struct UniquesLookup<S> {
    store: S,
    cache: AnswerCache,
    fresh_for_ms: i64,
    inflight: Flights<String>,
}

/// One answer and where it came from.
struct Answered {
    json: String,
    stale: bool,
    source: &'static str,
}

impl<S: CountStore + Clone> UniquesLookup<S> {
    /// Reads over `store` and the optional `cache`.
    pub fn new(
        store: S,
        cache: Option<CacheBackend>,
        breaker: Breaker,
        fresh_for: Duration,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            cache: AnswerCache::new(cache, breaker, retention),
            fresh_for_ms: i64::try_from(fresh_for.as_millis()).unwrap_or(i64::MAX),
            inflight: Flights::default(),
        }
    }

    async fn answer(self: &Arc<Self>, video: String, from: i64, to: i64) -> Result<Answered, String> {
        let key = format!("uniques:{video}:{from}:{to}");
        let now = tally_model::timestamp::now_ms();
        let Cached { entry: cached, bypassed: bypass } = self.cache.get(&key).await;
        if let Some(entry) = cached.as_ref().filter(|e| now - e.written_ms < self.fresh_for_ms) {
            return Ok(Answered { json: entry.json.clone(), stale: false, source: "hit" });
        }
        match self.load(key.clone(), video, from, to).await {
            Ok(json) => {
                self.cache.put(&key, CachedRange { json: json.clone(), written_ms: now }).await;
                Ok(Answered { json, stale: false, source: if bypass { "bypass" } else { "miss" } })
            }
            Err(error) => match cached {
                Some(entry) => Ok(Answered { json: entry.json, stale: true, source: "stale" }),
                None => Err(error),
            },
        }
    }

    async fn load(self: &Arc<Self>, key: String, video: String, from: i64, to: i64) -> Result<String, String> {
        let store = self.store.clone();
        self.inflight
            .run(&key, move || async move { read(&store, video, from, to).await.map_err(|e| e.to_string()) }.boxed())
            .await
    }
}

/// The answer's JSON, from the store.
async fn read<S: CountStore>(store: &S, video: String, from: i64, to: i64) -> Result<String, StoreError> {
    let read = store.uniques(video.clone(), from, to).await?;
    let e = read.answer();
    Ok(json!({
        "video_id": video,
        "from": format_rfc3339_ms(read.from_ms),
        "to": format_rfc3339_ms(read.to_ms),
        "uniques": e.uniques,
        "lower_bound": e.lower_bound,
        "upper_bound": e.upper_bound,
        "exact": e.exact,
        "exact_through": read.exact_through_ms.map_or(Value::Null, |ms| Value::String(format_rfc3339_ms(ms))),
    })
    .to_string())
}

/// `GET /v1/videos/{id}/uniques?from=&to=`
pub async fn uniques<S: CountStore + Clone>(
    State(state): State<Arc<ApiState<S>>>,
    Path(id): Path<String>,
    query: Result<Query<UniquesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    check_id(&id)?;
    let Query(query) = query.map_err(|e| bad_request("invalid-range", e.body_text()))?;
    let from = Granularity::Hour.bucket(parse_time(&query.from, "from")?);
    let to = parse_time(&query.to, "to")?;
    if from >= to {
        return Err(bad_request("invalid-range", "`from` must be before `to`"));
    }
    let to = Granularity::Hour.bucket(to - 1) + Granularity::Hour.millis();
    if to - from > i64::try_from(MAX_RANGE.as_millis()).unwrap_or(i64::MAX) {
        return Err(bad_request("invalid-range", "at most 400 days per request"));
    }
    let answered = state
        .uniques
        .answer(id, from, to)
        .await
        .map_err(|e| unavailable(state.retry_after_secs, format!("store unavailable and nothing cached: {e}")))?;
    let mut body: Value = serde_json::from_str(&answered.json)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", e.to_string()))?;
    body["stale"] = Value::Bool(answered.stale);
    let mut response = Json(body).into_response();
    response.headers_mut().insert("x-tally-cache", HeaderValue::from_static(answered.source));
    Ok(response)
}
