//! The public API: totals, series and batch lookups (unique viewers:
//! [`crate::uniques`]; trending videos: [`crate::trending`]).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tally_model::timestamp::{format_rfc3339_ms, parse_rfc3339_ms};
use tally_service::Problem;
use tally_store::{CountStore, Granularity};

use crate::lookup::{Answer, Lookup};

/// Shared state of the handlers.
pub struct ApiState<S> {
    /// Cache-then-store lookups.
    pub lookup: Arc<Lookup<S>>,
    /// Most ids per batch request.
    pub max_batch_ids: usize,
    /// Most points per series.
    pub max_series_points: i64,
    /// `Retry-After` for 503s, seconds.
    pub retry_after_secs: u64,
    /// Cache-then-store reads of unique viewers.
    pub uniques: Arc<crate::uniques::UniquesLookup<S>>,
    /// Cache-then-store reads of trending videos.
    pub trending: Arc<crate::trending::TrendingLookup<S>>,
}

pub(crate) fn bad_request(kind: &'static str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, kind, "Invalid request", detail)
}

pub(crate) fn unavailable(retry_after: u64, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Counts unavailable", detail).retry_after(retry_after)
}

pub(crate) fn check_id(id: &str) -> Result<(), Problem> {
    tally_model::video_id::validate(id).map_err(|e| bad_request("invalid-video-id", format!("video id {e}")))
}

fn render(answer: &Answer) -> Value {
    let t = &answer.total;
    json!({
        "video_id": t.video_id,
        "views": t.views,
        "as_of": if t.as_of_ms > 0 { Value::String(format_rfc3339_ms(t.as_of_ms)) } else { Value::Null },
        "batch_verified_views": t.batch_views,
        "provisional_views": t.views - t.batch_views,
        "exact_through": t.exact_through_ms.map_or(Value::Null, |ms| Value::String(format_rfc3339_ms(ms))),
        "stale": answer.stale,
    })
}

/// `GET /v1/videos/{id}/views`
pub async fn total<S: CountStore + Clone>(State(state): State<Arc<ApiState<S>>>, Path(id): Path<String>) -> Response {
    if let Err(problem) = check_id(&id) {
        return problem.into_response();
    }
    match state.lookup.totals(vec![id]).await {
        Ok(answers) => {
            let answer = &answers[0];
            let mut response = Json(render(answer)).into_response();
            response.headers_mut().insert("x-tally-cache", HeaderValue::from_static(answer.source));
            response
        }
        Err(e) => unavailable(state.retry_after_secs, e.to_string()).into_response(),
    }
}

/// Query string of a series request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// Start, RFC 3339 or epoch ms (inclusive).
    pub from: String,
    /// End, RFC 3339 or epoch ms (exclusive).
    pub to: String,
    /// `minute` (default), `hour` or `day`.
    pub step: Option<String>,
}

pub(crate) fn parse_time(raw: &str, name: &str) -> Result<i64, Problem> {
    raw.parse::<i64>()
        .ok()
        .or_else(|| parse_rfc3339_ms(raw).ok())
        .ok_or_else(|| bad_request("invalid-range", format!("`{name}` must be RFC 3339 or epoch milliseconds")))
}

/// `GET /v1/videos/{id}/views/series?from=&to=&step=`
pub async fn series<S: CountStore + Clone>(
    State(state): State<Arc<ApiState<S>>>,
    Path(id): Path<String>,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    check_id(&id)?;
    let Query(query) = query.map_err(|e| bad_request("invalid-range", e.body_text()))?;
    let from = parse_time(&query.from, "from")?;
    let to = parse_time(&query.to, "to")?;
    let step_name = query.step.as_deref().unwrap_or("minute");
    let step = Granularity::parse(step_name)
        .ok_or_else(|| bad_request("invalid-range", "`step` must be minute, hour or day"))?;
    if from >= to {
        return Err(bad_request("invalid-range", "`from` must be before `to`"));
    }
    let points = (to - from).div_euclid(step.millis()) + 1;
    if points > state.max_series_points {
        return Err(bad_request(
            "invalid-range",
            format!("the range holds {points} {step_name}s; at most {} per request", state.max_series_points),
        ));
    }
    let series = state
        .lookup
        .store()
        .series(id.clone(), from, to, step)
        .await
        .map_err(|e| unavailable(state.retry_after_secs, e.to_string()))?;
    let points: Vec<Value> =
        series.iter().map(|p| json!({ "start": format_rfc3339_ms(p.bucket_ms), "views": p.views })).collect();
    Ok(Json(json!({
        "video_id": id,
        "step": step_name,
        "from": format_rfc3339_ms(from),
        "to": format_rfc3339_ms(to),
        "points": points,
    }))
    .into_response())
}

/// Body of a batch request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Video ids, at most `max-batch-ids`.
    pub video_ids: Vec<String>,
}

/// `POST /v1/views:batchGet`
pub async fn batch_get<S: CountStore + Clone>(
    State(state): State<Arc<ApiState<S>>>,
    body: Result<Json<BatchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| bad_request("malformed-json", e.body_text()))?;
    if request.video_ids.is_empty() || request.video_ids.len() > state.max_batch_ids {
        return Err(bad_request(
            "invalid-batch",
            format!("`video_ids` must hold 1 to {} ids, got {}", state.max_batch_ids, request.video_ids.len()),
        ));
    }
    let errors: Vec<Value> = request
        .video_ids
        .iter()
        .enumerate()
        .filter_map(|(index, id)| {
            tally_model::video_id::validate(id)
                .err()
                .map(|e| json!({ "index": index, "message": format!("video id {e}") }))
        })
        .collect();
    if !errors.is_empty() {
        return Err(bad_request("invalid-video-id", "some video ids are invalid").with("errors", Value::Array(errors)));
    }
    let answers =
        state.lookup.totals(request.video_ids).await.map_err(|e| unavailable(state.retry_after_secs, e.to_string()))?;
    Ok(Json(json!({ "results": answers.iter().map(render).collect::<Vec<_>>() })).into_response())
}

/// 404 as a problem.
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such route; see /openapi.json")
}

/// 405 as a problem.
pub async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "see /openapi.json")
}
