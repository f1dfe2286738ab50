//! The whole configuration file: one section per service plus the shared ones.
//! Loaded in layers by [`tally_config::load`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_counter::CounterConfig;
use tally_ingest::IngestConfig;
use tally_kafka::KafkaConfig;
use tally_query::QueryConfig;
use tally_reconciler::ArchiverConfig;
use tally_service::logging::LogConfig;
use tally_service::traces::TraceConfig;
use tally_writer::WriterConfig;

/// Everything `tally` can be configured with.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TallyConfig {
    /// Logging.
    pub log: LogConfig,
    /// Call-chain tracing (OpenTelemetry over OTLP; off by default).
    pub traces: TraceConfig,
    /// Process-wide shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// The Kafka-protocol broker and topics.
    pub kafka: KafkaConfig,
    /// The ingest gateway.
    pub ingest: IngestConfig,
    /// The counter.
    #[serde(serialize_with = "crate::config_show::serialize_counter")]
    pub counter: CounterConfig,
    /// The writer.
    pub writer: WriterConfig,
    /// The query service.
    pub query: QueryConfig,
    /// Where counts are stored.
    pub store: StoreConfig,
    /// The cache between writer and query.
    pub cache: CacheConfig,
    /// `tally standalone`.
    pub standalone: StandaloneConfig,
    /// Admin actions over HTTP (reconcile, dead-letter replay).
    pub admin: AdminConfig,
    /// The Parquet archive of raw events.
    pub archiver: ArchiverConfig,
    /// The batch recount.
    pub reconciler: ReconcilerConfig,
}

impl TallyConfig {
    /// The free-form maps whose keys environment variables spell literally
    /// ([`tally_config::env`]): librdkafka's dotted properties
    /// (`TALLY_KAFKA__PROPERTIES__SASL_PASSWORD` is `sasl.password`) and
    /// object_store's options (`TALLY_ARCHIVER__OBJECT_STORE_OPTIONS__AWS_REGION`
    /// is `aws_region`).
    pub const ENV_LITERAL_KEYS: &'static [tally_config::LiteralKeys] = &[
        tally_config::LiteralKeys { path: "kafka.properties", underscore: '.' },
        tally_config::LiteralKeys { path: "kafka.consumer-properties", underscore: '.' },
        tally_config::LiteralKeys { path: "archiver.object-store-options", underscore: '_' },
    ];

    /// Loads the configuration: defaults, `file`, `TALLY_` environment
    /// variables (with [`Self::ENV_LITERAL_KEYS`]), then `overrides`.
    pub fn load(file: Option<&std::path::Path>, overrides: &[String]) -> Result<Self, tally_config::ConfigError> {
        tally_config::load_with(file, overrides, Self::ENV_LITERAL_KEYS)
    }

    /// Checks what the file's types cannot: the group settings of counter,
    /// writer and archiver ([`KafkaConfig::validate_membership`]), so a
    /// conflict fails start-up with the setting's name instead of a consumer
    /// failing later.
    pub fn validate(&self) -> Result<(), tally_kafka::MembershipError> {
        self.kafka.validate_member("counter", self.counter.group_instance_id.as_deref())?;
        self.kafka.validate_member("writer", self.writer.group_instance_id.as_deref())?;
        self.kafka.validate_member("archiver", self.archiver.group_instance_id.as_deref())
    }
}

/// The scheduled batch recount (`tally reconciler`) and `tally reconcile`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ReconcilerConfig {
    /// Admin listener of `tally reconciler`.
    pub admin_listen: SocketAddr,
    /// How often newly closed periods are looked for.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How far back the first scheduled run starts. Counts before it are
    /// never recounted by the loop and stay real time in every read.
    #[serde(with = "humantime_serde")]
    pub first_lookback: Duration,
    /// How far past a period archive files are read for its late events.
    #[serde(with = "humantime_serde")]
    pub late_lookahead: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9084)),
            interval: Duration::from_secs(300),
            first_lookback: Duration::from_secs(24 * 3600),
            late_lookahead: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which store holds the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreBackend {
    /// The embedded store: SQLite in `sqlite-path` (standalone, tests, small installs).
    Sqlite,
    /// A ScyllaDB / Cassandra cluster (`[store.scylla]`, schema in `infra/scylla/schema.cql`).
    Scylla,
}

/// The count store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StoreConfig {
    /// Which store: `sqlite` (embedded, the default) or `scylla`.
    pub backend: StoreBackend,
    /// File of the embedded store (SQLite, WAL); writer and query may share it.
    pub sqlite_path: PathBuf,
    /// When the embedded store's commits reach the disk: `full` (the
    /// default) syncs every commit before it returns, so a batch whose Kafka
    /// offsets the writer commits survives an OS crash or a power loss;
    /// `normal` makes commits cheaper (no sync per commit) and trades exactly
    /// that: after an OS crash or a power loss the last commits can be gone
    /// while their offsets are committed, and those counts are lost for good.
    /// A crash of the process alone loses nothing either way.
    pub sqlite_synchronous: tally_store::Synchronous,
    /// The ScyllaDB / Cassandra cluster, when `backend = "scylla"`.
    pub scylla: tally_store::ScyllaConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            sqlite_path: PathBuf::from("tally-data/counts.db"),
            sqlite_synchronous: tally_store::Synchronous::Full,
            scylla: tally_store::ScyllaConfig::default(),
        }
    }
}

/// Admin actions on the admin port of `tally reconciler` and `tally standalone`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AdminConfig {
    /// Keys allowed to run admin actions; with none, the actions answer 403.
    pub api_keys: Vec<AdminKeyConfig>,
}

/// One admin key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminKeyConfig {
    /// Name logged with every action (never the key itself).
    pub name: String,
    /// The bearer token.
    pub key: tally_config::Secret,
}

/// The cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CacheConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`; empty means no Redis (an
    /// in-process cache in standalone mode, none for separate processes).
    pub redis_url: String,
    /// Bound on connecting to and every answer from Redis.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { redis_url: String::new(), redis_timeout: Duration::from_millis(200) }
    }
}

/// `tally standalone`: every service in one process, a managed broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StandaloneConfig {
    /// Where the broker's data, the embedded store and the broker log live.
    pub data_dir: PathBuf,
    /// Client port of the managed Apache Kafka broker on 127.0.0.1.
    pub broker_port: u16,
    /// Controller (KRaft quorum) port of the managed broker on 127.0.0.1.
    pub controller_port: u16,
    /// The managed broker's JVM heap (Kafka serves reads from the page
    /// cache, so a small heap is enough).
    pub broker_heap: String,
    /// The single admin listener of all services.
    pub admin_listen: SocketAddr,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tally-data"),
            broker_port: 19092,
            controller_port: 19093,
            broker_heap: "512m".into(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9099)),
        }
    }
}

/// How the process stops.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

    #[tokio::test]
    async fn the_embedded_store_commits_durably_unless_told_otherwise() {
        use tally_store::AnyStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        for (text, expected) in [("", 2), ("[store]\nsqlite-synchronous = \"normal\"\n", 1)] {
            std::fs::write(&path, text).unwrap();
            let mut config: TallyConfig = tally_config::load(Some(&path), &[]).unwrap();
            config.store.sqlite_path = dir.path().join(format!("counts-{expected}.db"));
            let AnyStore::Sqlite(store) = crate::services::open_store(&config).await.unwrap() else {
                panic!("the default backend is the embedded store")
            };
            assert_eq!(store.synchronous().await.unwrap(), expected, "PRAGMA synchronous for {text:?}");
        }
    }

    #[test]
    fn group_settings_load_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            tally_config::load::<TallyConfig>(Some(&path), &[]).unwrap()
        };
        let config = load(
            "[kafka]\ngroup-protocol = \"classic\"\nassignment-strategy = \"range\"\n\n[counter]\ngroup-instance-id = \"counter-0\"\n",
        );
        assert_eq!(config.kafka.assignment_strategy, Some(tally_kafka::AssignmentStrategy::Range));
        assert_eq!(config.counter.group_instance_id.as_deref(), Some("counter-0"));
        assert_eq!(config.validate(), Ok(()));

        let config = load(
            "[kafka]\ngroup-protocol = \"consumer\"\nconsumer-properties = { \"session.timeout.ms\" = \"6000\" }\n",
        );
        assert_eq!(config.kafka.group_protocol, tally_kafka::GroupProtocol::Consumer);
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("session.timeout.ms") && refused.contains("group.consumer.session.timeout.ms"),
            "{refused}"
        );

        let config = load("[writer]\ngroup-instance-id = \"writer 0\"\n");
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.starts_with("writer.group-instance-id"), "{refused}");
    }

    #[test]
    fn the_shipped_example_file_loads_and_states_every_default() {
        // tally.example.toml documents every key with its default value: it
        // must load (no unknown or misspelt key) and change nothing.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tally.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: TallyConfig = tally_config::load(Some(&path), &[]).unwrap();
        assert_eq!(example, TallyConfig::default(), "tally.example.toml and the built-in defaults differ");
        // Every section is in it, uncommented.
        for section in [
            "[log]",
            "[shutdown]",
            "[kafka]",
            "[kafka.topics]",
            "[ingest]",
            "[ingest.salting]",
            "[counter]",
            "[writer]",
            "[query]",
            "[store]",
            "[store.scylla]",
            "[cache]",
            "[standalone]",
            "[admin]",
            "[archiver]",
            "[reconciler]",
        ] {
            assert!(text.lines().any(|l| l.trim() == section), "no {section} in tally.example.toml");
        }
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
