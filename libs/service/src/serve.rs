//! Serving an axum router until shutdown, then draining in-flight requests.

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `shutdown` is cancelled; in-flight
/// requests finish (the supervisor bounds how long) and new connections are refused.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Binds `addr`, with a readable error naming the address.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind the {what} listener on {addr}: {e}")))
}
