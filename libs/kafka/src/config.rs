//! The `[kafka]` configuration section.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How Tally reaches its Kafka-protocol broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Create missing topics at start-up. Handy in development; in production
    /// the infra job creates them with the partitions and retention you chose.
    pub create_topics: bool,
    /// Topic names and creation settings.
    pub topics: TopicsConfig,
    /// Use the idempotent producer (`enable.idempotence`). Keep it on with
    /// Apache Kafka and Redpanda. tansu 0.6 crashes its storage when an
    /// idempotent producer bumps its epoch after delivery timeouts (found by
    /// Tally's broker-restart test), so the test harness and standalone mode
    /// turn it off there. Counting stays exact either way: a record the
    /// producer retried twice carries the same `event_id` on the same
    /// partition and the counter deduplicates it.
    pub idempotence: bool,
    /// Extra librdkafka properties applied to every client (security,
    /// tuning), e.g. `"security.protocol" = "SASL_SSL"`.
    pub properties: BTreeMap<String, String>,
    /// Rejoin the consumer group after holding no partition for this long
    /// (`"15s"`); off when absent. A workaround for tansu 0.6, which can
    /// settle a group on an empty assignment when its leader died (kill -9):
    /// correct for single-member groups (standalone), but in a group with
    /// more members than partitions it causes needless rebalances. Used by
    /// the counter, the writer and the archiver.
    #[serde(default, with = "humantime_serde")]
    pub rejoin_when_unassigned: Option<Duration>,
    /// Rejoin the consumer group when a partition owned by another member
    /// has not committed progress for this long while records wait
    /// (`"30s"`); off when absent. A workaround for tansu 0.6, which never
    /// takes the partitions of a member that died without leaving (kill -9)
    /// away from it while other members stay; the rejoin starts the round
    /// that evicts it. Used by the counter and the writer (not the archiver,
    /// which commits only when it seals a file).
    #[serde(default, with = "humantime_serde")]
    pub rejoin_when_partition_stalled: Option<Duration>,
    /// Extra librdkafka properties for consumers only (after `properties`),
    /// e.g. `"session.timeout.ms" = "10000"`.
    pub consumer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            create_topics: true,
            topics: TopicsConfig::default(),
            idempotence: true,
            rejoin_when_unassigned: None,
            rejoin_when_partition_stalled: None,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

/// Tally's topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Partitions of the views topic when Tally creates it; the unit of
    /// counter parallelism.
    pub views_partitions: i32,
    /// Partitions of the counts topic when Tally creates it.
    pub counts_partitions: i32,
    /// Replication factor when Tally creates topics.
    pub replication: i32,
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
            views_partitions: 12,
            counts_partitions: 12,
            replication: 1,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}
