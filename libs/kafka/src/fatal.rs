//! librdkafka's fatal errors. An idempotent producer that loses its
//! guarantees (its producer id fenced, a sequence gap it cannot close) enters
//! a fatal state: every later send fails. Retrying cannot help; the service
//! stops with an error so that its supervisor (systemd, Kubernetes) restarts
//! it with a fresh producer, while the gateway answers 503 until then.

use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// A client's fatal error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Kafka producer failed fatally ({code}): {reason}")]
pub struct FatalError {
    /// The underlying error code.
    pub code: RDKafkaErrorCode,
    /// librdkafka's description.
    pub reason: String,
}

/// The client's fatal error, if it has one.
pub fn fatal_error<C: ClientContext>(client: &Client<C>) -> Option<FatalError> {
    client.fatal_error().map(|(code, reason)| FatalError { code, reason })
}

/// How often [`watch`] looks.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves once `client` has a fatal error (checked every [`WATCH_INTERVAL`]).
pub async fn watch<C: ClientContext>(client: &Client<C>) -> FatalError {
    loop {
        if let Some(fatal) = fatal_error(client) {
            tracing::error!(code = %fatal.code, reason = %fatal.reason, "Kafka producer failed fatally; stopping");
            return fatal;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}
