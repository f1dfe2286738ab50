//! `POST /v1/events`: authenticate, check the media type, refuse what the
//! head alone shows cannot be admitted, read the body under its limits,
//! validate every event, charge the rate limit, salt hot keys, produce, and
//! answer 202 only once the broker has acknowledged everything.
//!
//! Shedding load must cost almost nothing, or refusing becomes the overload:
//! a `Content-Length` above the body limit gets 413, and a gateway whose
//! admission bound has no room at all gets 503, answered from the head before
//! a byte of the body is read (a client sending `Expect: 100-continue` does
//! not even send it). The body is then only drained, never buffered or
//! parsed: a connection closed with the body unread is reset, and a client
//! still sending would see a broken pipe instead of its 503 and `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tally_model::hot::HotKeyDetector;
use tally_model::viewer::Pseudonymizer;
use tally_model::{parse_events, wire, BodyFormat, Limits, ParseFailure, PartitionKey, Salt, SaltPolicy, ViewEvent};
use tally_service::traces::{KeyValue, RequestSpan, TRACEPARENT};
use tally_service::Problem;

use crate::metrics::IngestMetrics;
use crate::publish::{PublishError, Publisher, Record};
use crate::rate_limit::RateLimiter;
use tally_service::api_keys::{ApiKeys, Caller};

/// Everything the handler needs, shared by all requests.
pub struct AppState {
    /// Produces and awaits acknowledgements.
    pub publisher: Publisher,
    /// Configured API keys.
    pub keys: ApiKeys,
    /// Per-key token buckets.
    pub limiter: RateLimiter,
    /// Event validation bounds.
    pub limits: Limits,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to read a body.
    pub body_read_timeout: Duration,
    /// `Retry-After` for 503s, in seconds.
    pub retry_after_secs: u64,
    /// Salt choice for hot videos.
    pub salt_policy: SaltPolicy,
    /// Run-time hot-key detection, for metrics and suggestions only (it
    /// never chooses a key); locked once per request.
    pub detector: Mutex<HotKeyDetector>,
    /// Gateway metrics.
    pub metrics: IngestMetrics,
    /// Replaces viewer ids with their pseudonyms; `None`: viewer ids are dropped.
    pub viewers: Option<Pseudonymizer>,
}

/// The handler.
pub async fn post_events(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Only when traces are exported and this request is sampled.
    let mut span = RequestSpan::start("POST /v1/events", request.headers().get(TRACEPARENT).map(|v| v.as_bytes()));
    let traceparent = span.as_ref().map(|s| s.traceparent().to_owned());
    let response = match accept(&state, request, traceparent.as_deref()).await {
        Ok(accepted) => {
            state.metrics.events_accepted.inc_by(accepted as u64);
            if let Some(span) = &mut span {
                span.set(KeyValue::new("tally.events", i64::try_from(accepted).unwrap_or(i64::MAX)));
            }
            (StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))).into_response()
        }
        Err((reason, events, problem)) => {
            state.metrics.reject(reason, events);
            if let Some(span) = &mut span {
                span.set(KeyValue::new("tally.rejected", reason));
            }
            problem.into_response()
        }
    };
    if let Some(span) = &mut span {
        span.set(KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())));
    }
    response
}

type Rejection = (&'static str, usize, Problem);

/// `traceparent`: the context the records carry, when the request is traced.
async fn accept(state: &AppState, request: Request, traceparent: Option<&str>) -> Result<usize, Rejection> {
    let (parts, body) = request.into_parts();
    let caller = state.keys.authenticate(&parts.headers).ok_or_else(|| {
        (
            "unauthorized",
            0,
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or unknown API key",
                "send a configured key as `Authorization: Bearer <key>`",
            ),
        )
    })?;
    let format = body_format(&parts.headers).map_err(|p| ("unsupported_media_type", 0, p))?;
    if let Some(refusal) = refusal_from_head(state, &parts.headers) {
        drain(body, state);
        return Err(refusal);
    }
    let bytes = read_body(body, state).await?;
    let now_ms = tally_model::timestamp::now_ms();
    let events = parse_events(&bytes, format, &state.limits, now_ms).map_err(|failure| {
        let events = match &failure {
            ParseFailure::Invalid { events, .. } | ParseFailure::TooManyEvents { got: events, .. } => *events,
            _ => 0,
        };
        (
            if matches!(failure, ParseFailure::TooManyEvents { .. }) { "too_large" } else { "invalid" },
            events,
            parse_problem(failure),
        )
    })?;
    if let Caller::Key(name) = &caller {
        state.limiter.check(name, events.len()).map_err(|wait| {
            let secs = wait.as_secs_f64().ceil() as u64;
            (
                "rate_limited",
                events.len(),
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limit exceeded",
                    format!("key {name:?} is over its event rate; retry after {secs} s"),
                )
                .retry_after(secs),
            )
        })?;
    }
    let records = encode(state, &events, now_ms);
    let count = records.len();
    state.publisher.publish(records, traceparent).await.map_err(|e| {
        tracing::warn!(error = %e, events = count, "answering 503");
        let (reason, detail) = match &e {
            PublishError::Overloaded => ("overloaded", OVERLOADED.to_owned()),
            PublishError::Timeout(t) => {
                ("broker_timeout", format!("the broker did not acknowledge within {} ms", t.as_millis()))
            }
            PublishError::Broker(_) => ("broker_error", "the broker did not accept the events".to_owned()),
        };
        (reason, count, unavailable(state, detail))
    })?;
    Ok(count)
}

const OVERLOADED: &str = "too many events are awaiting broker acknowledgement";

/// The 503 of every refusal a later retry may overcome.
fn unavailable(state: &AppState, detail: String) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Events not accepted; retry with the same event ids",
        detail,
    )
    .retry_after(state.retry_after_secs)
}

/// The records of `events`: partition keys by the salting rule (the event
/// and the configured hot list alone, see `tally_model::salt`); the
/// detector only watches, and its newly hot videos are logged as suggestions.
fn encode(state: &AppState, events: &[tally_model::ViewEvent], now_ms: i64) -> Vec<Record> {
    let mut detector = state.detector.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut salted = 0u64;
    let records = events
        .iter()
        .map(|event| {
            let video = event.video_id.as_str();
            detector.observe(video, now_ms);
            let salt = state.salt_policy.salt(event);
            salted += u64::from(salt != Salt::NONE);
            let mut payload = Vec::with_capacity(64);
            match &event.viewer_id {
                None => wire::encode(event, salt, &mut payload),
                Some(raw) => {
                    // A raw viewer id never leaves the gateway.
                    let viewer_id = state.viewers.as_ref().map(|p| Arc::from(p.pseudonym(raw)));
                    wire::encode(&ViewEvent { viewer_id, ..event.clone() }, salt, &mut payload);
                }
            }
            Record { key: PartitionKey::new(video, salt).as_bytes().to_vec(), payload }
        })
        .collect();
    state.metrics.hot_videos.set(detector.hot_count(now_ms) as i64);
    let newly_hot = detector.take_newly_hot();
    drop(detector);
    state.metrics.events_salted.inc_by(salted);
    for video in newly_hot.iter().filter(|v| !state.salt_policy.is_configured_hot(v)) {
        tracing::warn!(
            video_id = %video,
            "video is hot at this gateway but not salted: list it in ingest.salting.hot-videos on every gateway at once to spread it over partitions"
        );
    }
    records
}

/// A refusal the request head alone justifies: 413 when `Content-Length`
/// exceeds the body limit, 503 when the admission bound has no room at all.
/// Its events are unknown: the rejection metric counts the request as one.
fn refusal_from_head(state: &AppState, headers: &HeaderMap) -> Option<Rejection> {
    if content_length(headers).is_some_and(|declared| declared > state.max_body_bytes) {
        return Some(("too_large", 0, too_large_body(state.max_body_bytes)));
    }
    if !state.publisher.has_room() {
        return Some(("shed", 0, unavailable(state, OVERLOADED.to_owned())));
    }
    None
}

/// Reads `body` to its end and drops every chunk, in the background, while
/// the answer goes out: hyper closes a connection whose body is left unread,
/// and the unread bytes turn that close into a reset the client may see
/// before the answer. Bounded like any body read: past `max_body_bytes` or
/// `body_read_timeout` the connection is closed after all.
fn drain(body: axum::body::Body, state: &AppState) {
    let (limit, timeout) = (state.max_body_bytes, state.body_read_timeout);
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0usize;
        let _ = tokio::time::timeout(timeout, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, bytes::Bytes::len);
                if read > limit {
                    return;
                }
            }
        })
        .await;
    });
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Problem> {
    let raw = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("content type {raw:?} is not supported; use application/json or application/x-ndjson"),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn read_body(body: axum::body::Body, state: &AppState) -> Result<bytes::Bytes, Rejection> {
    let read = tokio::time::timeout(state.body_read_timeout, axum::body::to_bytes(body, state.max_body_bytes));
    match read.await {
        Err(_) => Err((
            "timeout",
            0,
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!("the body was not received within {} ms", state.body_read_timeout.as_millis()),
            ),
        )),
        Ok(Err(e)) if is_length_limit(&e) => Err(("too_large", 0, too_large_body(state.max_body_bytes))),
        Ok(Err(e)) => Err((
            "unreadable",
            0,
            Problem::new(StatusCode::BAD_REQUEST, "body-unreadable", "Request body could not be read", e.to_string()),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn too_large_body(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "Request too large",
        format!("the body exceeds {max} bytes; split it into smaller requests"),
    )
}

fn parse_problem(failure: ParseFailure) -> Problem {
    let detail = failure.to_string();
    match failure {
        ParseFailure::Empty => Problem::new(StatusCode::BAD_REQUEST, "empty-body", "No events", detail),
        ParseFailure::Malformed(_) => Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON", detail),
        ParseFailure::TooManyEvents { max, .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-many-events", "Too many events", detail)
                .with("max_events", Value::from(max))
        }
        ParseFailure::Invalid { errors, total, .. } => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-events", "Invalid events", detail)
                .with("error_count", Value::from(total))
                .with("errors", serde_json::to_value(errors).unwrap_or(Value::Null))
        }
    }
}

/// 404 for every unknown path, as a problem.
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such route; see /openapi.json")
}

/// 405 for a known path with the wrong method, as a problem.
pub async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "see /openapi.json")
}

#[cfg(test)]
mod tests;
