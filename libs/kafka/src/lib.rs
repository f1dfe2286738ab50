//! Kafka client helpers shared by every Tally service.
//!
//! Works with any Kafka-protocol broker: nothing here needs transactions.
//!
//! # Layout
//!
//! - [`config`]: [`KafkaConfig`] and [`TopicsConfig`], the `[kafka]` section.
//! - [`clients`]: building producers (idempotent, `acks=all`) and consumers
//!   (manual offset commits) from the configuration.
//! - [`membership`]: group protocol, assignment strategy, static membership,
//!   and the start-up check of their combinations.
//! - [`topics`]: creating Tally's topics with explicit settings.
//! - [`topology`]: the recorded topology of the views and counts topics
//!   (partition counts, topic ids, retention), checked at every start.
//! - [`dlq`]: provenance headers of dead letters.
//! - [`fatal`]: librdkafka's fatal errors, which stop a service.

pub mod clients;
pub mod config;
pub mod dlq;
pub mod fatal;
pub mod membership;
pub mod topics;
pub mod topology;

pub use config::{KafkaConfig, TopicsConfig};
pub use membership::{AssignmentStrategy, GroupMember, GroupProtocol, MembershipError};

/// Errors from the Kafka helpers.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka rejected a client configuration.
    #[error("cannot create Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Creating a topic failed for a reason other than "already exists".
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The group settings conflict ([`membership`]).
    #[error("invalid Kafka group settings: {0}")]
    Membership(#[from] MembershipError),
    /// The broker did not answer a metadata request.
    #[error("broker metadata unavailable: {0}")]
    Metadata(rdkafka::error::KafkaError),
}
