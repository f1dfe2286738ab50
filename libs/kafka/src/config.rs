//! The `[kafka]` configuration section.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::membership::{AssignmentStrategy, GroupProtocol};

/// How Tally reaches its Kafka-protocol broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Create missing topics at start-up. Handy in development; in production
    /// the infra job creates them with the partitions and retention you chose.
    pub create_topics: bool,
    /// Topic names and creation settings.
    pub topics: TopicsConfig,
    /// Extra librdkafka properties applied to every client (security,
    /// tuning), e.g. `"security.protocol" = "SASL_SSL"`.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (after `properties`),
    /// e.g. `"session.timeout.ms" = "10000"` (classic groups only: with the
    /// `consumer` protocol the broker sets sessions). Properties that the
    /// settings below or a service's `group-id` and `group-instance-id`
    /// govern are refused at start-up.
    pub consumer_properties: BTreeMap<String, String>,
    /// The consumer group protocol of counter, writer and archiver:
    /// `classic` (every Kafka-protocol broker) or `consumer` (KIP-848,
    /// Apache Kafka 4.0 or later: the broker assigns partitions and
    /// rebalances are incremental; session timeout and heartbeat interval
    /// are the broker's `group.consumer.*` settings).
    pub group_protocol: GroupProtocol,
    /// How `classic` groups assign partitions: `cooperative-sticky`
    /// (incremental: a rebalance stops only the partitions that move),
    /// `range` or `roundrobin` (eager: every rebalance stops every
    /// partition). Absent: `cooperative-sticky`. Not allowed with the
    /// `consumer` protocol, where the broker assigns.
    pub assignment_strategy: Option<AssignmentStrategy>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            create_topics: true,
            topics: TopicsConfig::default(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            group_protocol: GroupProtocol::Classic,
            assignment_strategy: None,
        }
    }
}

/// Tally's topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TopicsConfig {
    /// Raw view events, keyed by partition key (video id, salted when hot).
    pub views: String,
    /// Aggregated count deltas from the counter.
    pub counts: String,
    /// Dead letters of the views topic.
    pub views_dlq: String,
    /// Dead letters of the counts topic.
    pub counts_dlq: String,
    /// The recorded topology of the views and counts topics (one partition,
    /// compacted; see `tally_kafka::topology`). Shared by every counter and
    /// writer of a deployment; never delete it.
    pub topology: String,
    /// Partitions of the views topic when Tally creates it; the unit of
    /// counter parallelism.
    pub views_partitions: i32,
    /// Partitions of the counts topic when Tally creates it.
    pub counts_partitions: i32,
    /// Replication factor when Tally creates topics. Absent: derived from
    /// the cluster, 3 when it has 3 brokers or more (with
    /// `min.insync.replicas=2`, so one broker down loses nothing and stops
    /// nothing), else the number of brokers. Never 1 on a multi-broker
    /// cluster unless set here explicitly.
    pub replication: Option<i32>,
    /// `min.insync.replicas` of created topics. Absent: 2 when the
    /// replication factor is 3 or more, else the broker's default.
    pub min_insync_replicas: Option<i32>,
    /// Retention of created topics; must cover the counter's dedup window
    /// and the time the archiver may lag.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            views: "tally.views".into(),
            counts: "tally.counts".into(),
            views_dlq: "tally.views.dlq".into(),
            counts_dlq: "tally.counts.dlq".into(),
            topology: "tally.topology".into(),
            views_partitions: 12,
            counts_partitions: 12,
            replication: None,
            min_insync_replicas: None,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}
