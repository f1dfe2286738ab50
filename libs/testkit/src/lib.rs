//! Test harness: starts REAL dependencies on free loopback ports and stops
//! them when dropped.
//!
//! - [`Broker`]: an Apache Kafka broker (KRaft), the run's shared one or a
//!   test's own; [`KafkaCluster`]: three brokers, replication factor 3.
//! - [`Cassandra`]: an Apache Cassandra 5.0 node, shared by the run.
//! - [`RedisServer`]: Debian's `redis-server`.
//! - [`unique`] and [`kafka_config`]: random topic and group names per test;
//!   [`kafka_with_topics`] also creates Tally's topics.
//! - [`bounded`]: the outer time bound every integration test runs under.
//!
//! A missing binary fails the test with the command that installs it
//! (`scripts/setup`); nothing here skips silently.
//!
//! # Layout
//!
//! - [`broker`], [`cluster`], [`cassandra`], [`redis`], [`s3`]: the servers
//!   (the JVM ones through the `tally-servers` crate).
//! - [`server_dir`]: the servers' directories; the servers of killed tests reaped.
//! - [`process`]: locating binaries, free ports, waiting for a port.
//! - [`topic`]: reading a topic back, counting its records.
//! - [`counts`]: an oracle reading the counts topic independently of the writer's fold.
//! - [`views`]: producing views records with known expected counts.
//! - [`store`]: a count store a test can switch off.
//! - [`metrics`]: reading metric values from a registry.

pub mod broker;
pub mod cassandra;
pub mod cluster;
pub mod counts;
pub mod metrics;
pub mod process;
pub mod redis;
pub mod s3;
pub mod server_dir;
pub mod store;
pub mod topic;
pub mod views;

use std::future::Future;
use std::time::Duration;

pub use broker::Broker;
pub use cassandra::Cassandra;
pub use cluster::KafkaCluster;
pub use redis::RedisServer;
pub use s3::S3Server;
use tally_kafka::KafkaConfig;
pub use tally_servers::CommitLogSync;

/// A name no other test uses: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// A Kafka configuration for `broker` with topic names unique to this test.
pub fn kafka_config(broker: &Broker) -> KafkaConfig {
    kafka_config_for(&broker.bootstrap())
}

/// [`kafka_config`] for any bootstrap list (a [`KafkaCluster`]'s, say).
pub fn kafka_config_for(bootstrap: &str) -> KafkaConfig {
    let run = unique("t");
    let mut config = KafkaConfig { brokers: bootstrap.to_owned(), ..KafkaConfig::default() };
    config.topics.views = format!("{run}.views");
    config.topics.counts = format!("{run}.counts");
    config.topics.views_dlq = format!("{run}.views.dlq");
    config.topics.counts_dlq = format!("{run}.counts.dlq");
    config.topics.topology = format!("{run}.topology");
    config.topics.views_partitions = 4;
    config.topics.counts_partitions = 4;
    config
}

/// [`kafka_config`] with Tally's topics created on `broker`.
pub async fn kafka_with_topics(broker: &Broker) -> KafkaConfig {
    let kafka = kafka_config(broker);
    tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka))
        .await
        .expect("creating Tally's topics");
    kafka
}

/// Runs `test` under an outer time bound, failing loudly when it is exceeded
/// (rdkafka can hang in `rd_kafka_destroy`; a test must not hang with it).
pub async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    match tokio::time::timeout(limit, test).await {
        Ok(output) => output,
        Err(_) => panic!("test exceeded its time bound of {limit:?}"),
    }
}
