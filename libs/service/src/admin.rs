//! The admin server: `/metrics` (Prometheus text format), `/healthz` (the
//! process is alive) and `/readyz` (its dependencies are reachable). It runs
//! on its own port so that metrics and health never share a listener, a rate
//! limit or an API key with public traffic.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::readiness::Readiness;

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// The admin router over `registry` and `readiness`.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { registry, readiness })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(state): State<AdminState>) -> Response {
    let (ready, checks) = state.readiness.report();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_status(app: Router, path: &str) -> StatusCode {
        app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn readyz_follows_the_checks_and_healthz_is_always_ok() {
        let readiness = Readiness::default();
        readiness.register("kafka");
        let app = router(Registry::new(), readiness.clone());
        assert_eq!(get_status(app.clone(), "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get_status(app.clone(), "/healthz").await, StatusCode::OK);
        readiness.set("kafka", Ok(()));
        assert_eq!(get_status(app.clone(), "/readyz").await, StatusCode::OK);
        assert_eq!(get_status(app, "/metrics").await, StatusCode::OK);
    }
}
