//! Admin actions over HTTP, on the admin port of `tally reconciler` and
//! `tally standalone` (never on a public listener):
//!
//! - `POST /v1/admin/reconcile` `{"from": …, "to": …}` (RFC 3339 or epoch ms):
//!   recounts the closed periods of the range and answers the drift report.
//! - `POST /v1/admin/dlq-replay` `{"topic": "views"|"counts", "kind": "late"|"malformed", "dry_run": false}`:
//!   re-injects dead letters, as `tally dlq replay` does.
//!
//! Every action needs a key from `admin.api-keys` (`Authorization: Bearer …`
//! or `X-Api-Key`), compared in constant time and never logged; the caller's
//! key name is logged with the action. With no key configured the actions are
//! disabled (403), so an admin port is never an open door by default.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use tally_kafka::KafkaConfig;
use tally_reconciler::reconcile::ReconcileOptions;
use tally_service::api_keys::{ApiKeys, Caller};
use tally_service::Problem;
use tally_store::AnyStore;

use crate::config::AdminConfig;
use crate::dlq_replay::{replay, ReplayOptions};

/// What the actions need.
#[derive(Clone)]
pub struct AdminActions {
    keys: ApiKeys,
    store: AnyStore,
    reconcile: ReconcileOptions,
    kafka: KafkaConfig,
}

impl AdminActions {
    /// The actions over `store` and the broker of `kafka`.
    pub fn new(config: &AdminConfig, store: AnyStore, reconcile: ReconcileOptions, kafka: KafkaConfig) -> Self {
        let keys = ApiKeys::new(config.api_keys.iter().map(|k| (k.name.as_str(), &k.key)));
        Self { keys, store, reconcile, kafka }
    }

    /// The routes, to merge into an admin router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/admin/reconcile", post(reconcile))
            .route("/v1/admin/dlq-replay", post(dlq_replay))
            .with_state(Arc::new(self))
    }

    /// The caller's key name, or why the request is refused.
    fn authorize(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::Disabled);
        }
        match self.keys.authenticate(headers) {
            Some(Caller::Key(name)) => Ok(name),
            Some(Caller::Anonymous) | None => Err(Refusal::Unauthorized),
        }
    }
}

/// Why an admin request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No admin key is configured.
    Disabled,
    /// No key, or not a configured one.
    Unauthorized,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Disabled => Problem::new(
                StatusCode::FORBIDDEN,
                "admin-disabled",
                "Admin actions are disabled",
                "no admin key is configured; set admin.api-keys to enable admin actions",
            )
            .into_response(),
            Self::Unauthorized => {
                let mut response = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Missing or wrong admin key",
                    "send an admin key as `Authorization: Bearer <key>` or `X-Api-Key: <key>`",
                )
                .into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                response
            }
        }
    }
}

/// The caller's key name and the request body, or the answer that refuses them
/// (authorization first: nothing about the body is said to a caller without a key).
fn accept<T>(
    actions: &AdminActions,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<(String, T), Box<Response>> {
    let caller = actions.authorize(headers).map_err(|refused| Box::new(refused.into_response()))?;
    let Json(request) = body.map_err(|e| Box::new(bad_request(e.body_text())))?;
    Ok((caller, request))
}

fn bad_request(detail: impl Into<String>) -> Response {
    Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail).into_response()
}

fn failed(detail: impl Into<String>) -> Response {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The action failed; retry later", detail)
        .retry_after(5)
        .into_response()
}

/// Body of `POST /v1/admin/reconcile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileRequest {
    from: serde_json::Value,
    to: serde_json::Value,
}

fn time_of(value: &serde_json::Value, field: &str) -> Result<i64, String> {
    let parsed = match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => tally_model::timestamp::parse_rfc3339_ms(s).ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("`{field}` must be an RFC 3339 time or epoch milliseconds"))
}

async fn reconcile(
    State(actions): State<Arc<AdminActions>>,
    headers: HeaderMap,
    body: Result<Json<ReconcileRequest>, JsonRejection>,
) -> Response {
    let (caller, request) = match accept(&actions, &headers, body) {
        Ok(accepted) => accepted,
        Err(refused) => return *refused,
    };
    let (from, to) = match (time_of(&request.from, "from"), time_of(&request.to, "to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    if from >= to {
        return bad_request("`from` must be before `to`");
    }
    tracing::info!(caller = %caller, action = "reconcile", from, to, "admin action");
    match tally_reconciler::reconcile::reconcile(&actions.store, &actions.reconcile, from, to, None, |_, _| {}).await {
        Ok(reconciled) => {
            let reports = reconciled.reports;
            let drift: i64 = reports.iter().map(|r| r.drift).sum();
            Json(serde_json::json!({
                "periods": reports.len(),
                "drift": drift,
                "reports": reports,
                "waiting_for_archive": reconciled.waiting_for_archive.len(),
                "archive_complete_through": reconciled.archive.complete_through(),
                "archive_behind_partition": reconciled.archive.behind_partition,
            }))
            .into_response()
        }
        Err(e) => failed(e.to_string()),
    }
}

/// Body of `POST /v1/admin/dlq-replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// `views` (default) or `counts`.
    #[serde(default)]
    topic: Option<String>,
    /// `late` or `malformed`; all when absent.
    #[serde(default)]
    kind: Option<String>,
    /// Count only.
    #[serde(default)]
    dry_run: bool,
}

async fn dlq_replay(
    State(actions): State<Arc<AdminActions>>,
    headers: HeaderMap,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    let (caller, request) = match accept(&actions, &headers, body) {
        Ok(accepted) => accepted,
        Err(refused) => return *refused,
    };
    let topics = &actions.kafka.topics;
    let dlq_topic = match request.topic.as_deref() {
        None | Some("views") => topics.views_dlq.clone(),
        Some("counts") => topics.counts_dlq.clone(),
        Some(other) => return bad_request(format!("`topic` must be `views` or `counts`, not {other:?}")),
    };
    if let Some(kind) = request.kind.as_deref().filter(|k| !matches!(*k, "late" | "malformed")) {
        return bad_request(format!("`kind` must be `late` or `malformed`, not {kind:?}"));
    }
    tracing::info!(caller = %caller, action = "dlq-replay", topic = %dlq_topic, kind = ?request.kind, dry_run = request.dry_run, "admin action");
    let options = ReplayOptions { dlq_topic, kind: request.kind, dry_run: request.dry_run };
    let kafka = actions.kafka.clone();
    match tokio::task::spawn_blocking(move || replay(&kafka, &options)).await {
        Ok(Ok(report)) => Json(serde_json::json!({
            "replayed": report.replayed,
            "filtered": report.filtered,
            "duplicates": report.duplicates,
            "unroutable": report.unroutable,
            "dry_run": request.dry_run,
        }))
        .into_response(),
        Ok(Err(e)) => failed(format!("{e:#}")),
        Err(e) => failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tally_config::Secret;
    use tally_store::SqliteStore;
    use tower::ServiceExt;

    use super::*;
    use crate::config::AdminKeyConfig;

    fn actions(keys: &[(&str, &str)], archive: &std::path::Path) -> Router {
        let config = AdminConfig {
            api_keys: keys.iter().map(|(n, k)| AdminKeyConfig { name: (*n).into(), key: Secret::new(*k) }).collect(),
        };
        let store = AnyStore::Sqlite(SqliteStore::in_memory().unwrap());
        let options = ReconcileOptions {
            archive: tally_reconciler::archive::storage::ArchiveStorage::Local(archive.to_owned()),
            counting: tally_counter::CounterConfig {
                allowed_lateness: std::time::Duration::from_secs(60),
                ..tally_counter::CounterConfig::default()
            }
            .counting_rule(),
            lookback: std::time::Duration::from_secs(900),
            late_lookahead: std::time::Duration::from_secs(3600),
            views: tally_reconciler::coverage::ViewsLog::Known(Default::default()),
            in_flight: std::time::Duration::from_secs(30),
        };
        AdminActions::new(&config, store, options, KafkaConfig::default()).router()
    }

    async fn post(
        router: Router,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut request = Request::post(path).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = router.oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    const RANGE: &str = r#"{"from": "2026-11-20T00:00:00Z", "to": "2026-11-20T02:00:00Z"}"#;

    #[tokio::test]
    async fn admin_actions_are_disabled_without_configured_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (status, _, body) = post(actions(&[], dir.path()), "/v1/admin/reconcile", Some("anything"), RANGE).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["type"], "urn:tally:problem:admin-disabled");
        let (status, _, _) = post(actions(&[], dir.path()), "/v1/admin/dlq-replay", None, "{}").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_admin_key_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        for key in [None, Some("wrong"), Some("ops-key-")] {
            let (status, headers, body) =
                post(actions(&[("ops", "ops-key")], dir.path()), "/v1/admin/reconcile", key, RANGE).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert!(!body.to_string().contains("ops-key"), "the key is never echoed");
        }
        let (status, _, _) =
            post(actions(&[("ops", "ops-key")], dir.path()), "/v1/admin/dlq-replay", Some("wrong"), "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn reconcile_with_an_admin_key_runs_and_reports_the_closed_periods() {
        let dir = tempfile::tempdir().unwrap();
        let router = actions(&[("ops", "ops-key")], dir.path());
        let (status, _, body) = post(router, "/v1/admin/reconcile", Some("ops-key"), RANGE).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Two closed hours, an empty archive and an empty store: no drift.
        assert_eq!(body["periods"], 2);
        assert_eq!(body["drift"], 0);
    }

    #[tokio::test]
    async fn bad_admin_requests_get_problem_details() {
        let dir = tempfile::tempdir().unwrap();
        let router = || actions(&[("ops", "ops-key")], dir.path());
        let cases = [
            ("/v1/admin/reconcile", r#"{"from": "yesterday", "to": 1}"#),
            ("/v1/admin/reconcile", r#"{"from": 2000, "to": 1000}"#),
            ("/v1/admin/reconcile", "not json"),
            ("/v1/admin/dlq-replay", r#"{"topic": "other"}"#),
            ("/v1/admin/dlq-replay", r#"{"kind": "everything"}"#),
            ("/v1/admin/dlq-replay", r#"{"dryrun": true}"#),
        ];
        for (path, body) in cases {
            let (status, headers, problem) = post(router(), path, Some("ops-key"), body).await;
            assert!(status.is_client_error(), "{path} {body}: {status}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json", "{path} {body}");
            assert!(problem["detail"].is_string(), "{path} {body}: {problem}");
        }
    }
}
