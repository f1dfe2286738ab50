//! The whole configuration file: one section per service plus the shared ones.
//! Loaded in layers by [`tally_config::load`].

use std::time::Duration;

use serde::Deserialize;
use tally_counter::CounterConfig;
use tally_ingest::IngestConfig;
use tally_kafka::KafkaConfig;
use tally_service::logging::LogConfig;

/// Everything `tally` can be configured with.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TallyConfig {
    /// Logging.
    pub log: LogConfig,
    /// Process-wide shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// The Kafka-protocol broker and topics.
    pub kafka: KafkaConfig,
    /// The ingest gateway.
    pub ingest: IngestConfig,
    /// The counter.
    pub counter: CounterConfig,
}

/// How the process stops.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ShutdownConfig {
    /// How long in-flight work may take to drain after SIGTERM/Ctrl-C before
    /// the process exits anyway (with exit code 5).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout: Duration::from_secs(30) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_example_file_with_every_section_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(
            &path,
            r#"
[log]
level = "debug"
format = "json"

[shutdown]
drain-timeout = "5s"

[kafka]
brokers = "10.0.0.1:9092,10.0.0.2:9092"
properties = { "security.protocol" = "plaintext" }

[kafka.topics]
views-partitions = 48

[ingest]
listen = "0.0.0.0:8080"
ack-timeout = "2s"
api-keys = [{ name = "web", key = "k1", events-per-sec = 1000.0, burst = 5000.0 }]

[ingest.salting]
hot-videos = ["launch-video"]
sub-shards = 8
"#,
        )
        .unwrap();
        let config: TallyConfig = tally_config::load(Some(&path), &[]).unwrap();
        assert_eq!(config.kafka.topics.views_partitions, 48);
        assert_eq!(config.ingest.ack_timeout, Duration::from_secs(2));
        assert_eq!(config.ingest.api_keys[0].key.expose(), "k1");
        assert_eq!(config.ingest.salting.sub_shards, 8);
        assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_typo_in_any_section_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[ingest.salting]\nsub-shard = 8\n").unwrap();
        let err = tally_config::load::<TallyConfig>(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("sub-shard"), "{err}");
    }
}
