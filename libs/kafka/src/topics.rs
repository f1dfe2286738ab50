//! Creating Tally's topics. Settings are given explicitly (`retention.ms`,
//! `cleanup.policy`): some Kafka-protocol brokers report only what a topic was
//! created with, and clients that read them expect both.

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
}

/// The four topics of the configuration.
pub fn tally_topics(config: &KafkaConfig) -> Vec<TopicSpec> {
    let t = &config.topics;
    vec![
        TopicSpec { name: t.views.clone(), partitions: t.views_partitions },
        TopicSpec { name: t.counts.clone(), partitions: t.counts_partitions },
        TopicSpec { name: t.views_dlq.clone(), partitions: 1 },
        TopicSpec { name: t.counts_dlq.clone(), partitions: 1 },
    ]
}

/// Creates the `topics` that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config, "tally-admin")
        .create()
        .map_err(|source| KafkaSetupError::Client { what: "admin client", source })?;
    let retention = config.topics.retention.as_millis().to_string();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(config.topics.replication))
                .set("retention.ms", &retention)
                .set("cleanup.policy", "delete");
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

/// Partition count of `topic`, from broker metadata (blocking; call from
/// `spawn_blocking`).
pub fn partition_count(config: &KafkaConfig, topic: &str, timeout: Duration) -> Result<usize, KafkaSetupError> {
    let consumer: BaseConsumer = base_config(config, "tally-metadata")
        .create()
        .map_err(|source| KafkaSetupError::Client { what: "metadata client", source })?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(KafkaSetupError::Metadata)?;
    Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
}
