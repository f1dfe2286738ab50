//! RFC 9457 problem details: every HTTP error Tally returns.
//!
//! The body tells the client what to fix; it never carries internals (broker
//! addresses, stack traces). Those go to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An HTTP error with a problem-details body.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Short machine-readable kind, e.g. `invalid-events`; becomes `type` = `urn:tally:problem:<kind>`.
    pub kind: &'static str,
    /// Human-readable summary of the kind.
    pub title: &'static str,
    /// What went wrong in this request.
    pub detail: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after_secs: Option<u64>,
    /// Extension members (e.g. per-index `errors`).
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A problem with no extensions and no retry hint.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), retry_after_secs: None, extensions: Map::new() }
    }

    /// Adds a `Retry-After` hint (at least one second).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::String(format!("urn:tally:problem:{}", self.kind)));
        body.insert("title".into(), Value::String(self.title.into()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail.clone()));
        for (key, value) in &self.extensions {
            body.insert(key.clone(), value.clone());
        }
        Value::Object(body)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_follow_rfc9457_and_carry_retry_after() {
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Try later", "broker slow")
            .retry_after(0)
            .with("queued", Value::from(3));
        let body = problem.body();
        assert_eq!(body["type"], "urn:tally:problem:unavailable");
        assert_eq!(body["status"], 503);
        assert_eq!(body["queued"], 3);
        let response = problem.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
