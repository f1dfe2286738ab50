//! Creating Tally's topics. Settings are given explicitly (`retention.ms`,
//! `cleanup.policy`): some Kafka-protocol brokers report only what a topic was
//! created with, and clients that read them expect both.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::clients::base_config;
use crate::{KafkaConfig, KafkaSetupError};

/// One topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Compacted (the newest record per key kept for ever) instead of
    /// deleted after the retention.
    pub compacted: bool,
}

/// The topics of the configuration.
pub fn tally_topics(config: &KafkaConfig) -> Vec<TopicSpec> {
    let t = &config.topics;
    let deleted = |name: &str, partitions| TopicSpec { name: name.to_owned(), partitions, compacted: false };
    vec![
        deleted(&t.views, t.views_partitions),
        deleted(&t.counts, t.counts_partitions),
        deleted(&t.views_dlq, 1),
        deleted(&t.counts_dlq, 1),
        TopicSpec { name: t.topology.clone(), partitions: 1, compacted: true },
    ]
}

/// How created topics are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas of each partition.
    pub factor: i32,
    /// `min.insync.replicas`, when Tally sets it.
    pub min_insync: Option<i32>,
}

impl Replication {
    /// The configured values, else derived from the number of brokers: 3
    /// replicas with 2 in sync from 3 brokers on, else one per broker.
    pub fn for_cluster(config: &KafkaConfig, brokers: usize) -> Self {
        let available = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
        let factor = config.topics.replication.unwrap_or(available.min(3));
        let min_insync = config.topics.min_insync_replicas.or((factor >= 3).then_some(2));
        Self { factor, min_insync }
    }
}

/// Creates the `topics` that do not exist yet; existing ones are left as they
/// are. Which exist is read from metadata first, so a service whose topics
/// exist starts without the controller: while the cluster has lost its
/// controller quorum, or where its principal may not create topics.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    let cluster = {
        let metadata_config = config.clone();
        tokio::task::spawn_blocking(move || cluster_topics(&metadata_config, Duration::from_secs(10)))
            .await
            .map_err(|e| KafkaSetupError::CreateTopic { topic: "*".into(), reason: e.to_string() })??
    };
    let missing: Vec<&TopicSpec> = topics.iter().filter(|t| !cluster.topics.contains(&t.name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let brokers = cluster.brokers;
    let admin: AdminClient<DefaultClientContext> = base_config(config, "tally-admin")
        .create()
        .map_err(|source| KafkaSetupError::Client { what: "admin client", source })?;
    let replication = Replication::for_cluster(config, brokers);
    if replication.factor == 1 && brokers > 1 {
        tracing::warn!(brokers, "creating topics with replication factor 1 on a multi-broker cluster, as configured");
    }
    let retention = config.topics.retention.as_millis().to_string();
    let min_insync = replication.min_insync.map(|n| n.to_string());
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication.factor));
            let topic = if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic.set("retention.ms", &retention).set("cleanup.policy", "delete")
            };
            let topic = match &min_insync {
                Some(n) => topic.set("min.insync.replicas", n),
                None => topic,
            };
            // The broker's clock stamps each view: the counter's dedup window
            // trusts it over a gateway clock running ahead (tally_model::counting).
            if t.name == config.topics.views {
                topic.set("message.timestamp.type", "LogAppendTime")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| KafkaSetupError::CreateTopic { topic: "*".into(), reason: e.to_string() })?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// What the cluster's metadata says, as far as creating topics needs it.
#[derive(Debug)]
struct ClusterTopics {
    /// Brokers in the cluster.
    brokers: usize,
    /// Names of the topics that exist.
    topics: HashSet<String>,
}

/// Brokers and existing topics, from metadata (blocking).
fn cluster_topics(config: &KafkaConfig, timeout: Duration) -> Result<ClusterTopics, KafkaSetupError> {
    let consumer: BaseConsumer = base_config(config, "tally-metadata")
        .create()
        .map_err(|source| KafkaSetupError::Client { what: "metadata client", source })?;
    let metadata = consumer.fetch_metadata(None, timeout).map_err(KafkaSetupError::Metadata)?;
    let topics = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name().to_owned())
        .collect();
    Ok(ClusterTopics { brokers: metadata.brokers().len(), topics })
}

/// Partition count of `topic`, from broker metadata (blocking; call from
/// `spawn_blocking`).
pub fn partition_count(config: &KafkaConfig, topic: &str, timeout: Duration) -> Result<usize, KafkaSetupError> {
    let consumer: BaseConsumer = base_config(config, "tally-metadata")
        .create()
        .map_err(|source| KafkaSetupError::Client { what: "metadata client", source })?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(KafkaSetupError::Metadata)?;
    Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_never_created_with_one_replica_on_a_multi_broker_cluster_unless_configured() {
        let derived = KafkaConfig::default();
        assert_eq!(Replication::for_cluster(&derived, 1), Replication { factor: 1, min_insync: None });
        assert_eq!(Replication::for_cluster(&derived, 2), Replication { factor: 2, min_insync: None });
        assert_eq!(Replication::for_cluster(&derived, 3), Replication { factor: 3, min_insync: Some(2) });
        assert_eq!(Replication::for_cluster(&derived, 9), Replication { factor: 3, min_insync: Some(2) });
        let mut explicit = KafkaConfig::default();
        explicit.topics.replication = Some(1);
        assert_eq!(Replication::for_cluster(&explicit, 3), Replication { factor: 1, min_insync: None });
        explicit.topics.replication = Some(5);
        explicit.topics.min_insync_replicas = Some(3);
        assert_eq!(Replication::for_cluster(&explicit, 5), Replication { factor: 5, min_insync: Some(3) });
    }
}
