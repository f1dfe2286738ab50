//! Settings of the ScyllaDB store (`[store.scylla]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_config::Secret;

/// Consistency of every read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyLevel {
    /// One replica (development clusters only).
    One,
    /// One replica in the local datacenter.
    LocalOne,
    /// A quorum of the local datacenter's replicas (the default).
    LocalQuorum,
    /// A quorum of all replicas.
    Quorum,
}

impl ConsistencyLevel {
    pub(crate) fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency;
        match self {
            Self::One => Consistency::One,
            Self::LocalOne => Consistency::LocalOne,
            Self::LocalQuorum => Consistency::LocalQuorum,
            Self::Quorum => Consistency::Quorum,
        }
    }
}

/// How to reach and use the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`; the driver discovers the rest of the cluster.
    pub nodes: Vec<String>,
    /// Keyspace holding Tally's tables (`infra/scylla/schema.cql`).
    pub keyspace: String,
    /// Consistency of reads and writes. Reads after writes see them when both
    /// are quorums (the writer's read-then-write relies on it).
    pub consistency: ConsistencyLevel,
    /// Datacenter to route requests to first; empty lets the driver choose.
    pub local_datacenter: String,
    /// User for password authentication; empty for none.
    pub username: String,
    /// Password of `username`.
    pub password: Secret,
    /// Client-side bound on every request (the driver retries inside it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound on opening a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Requests in flight at once per operation (videos applied concurrently).
    pub concurrency: usize,
    /// Time to live of minute rows; 0 keeps them. Must exceed the retention
    /// of `tally.counts`, or a replay from offset 0 would count them again.
    #[serde(with = "humantime_serde")]
    pub minute_ttl: Duration,
    /// Create the keyspace and tables at start (development); production
    /// applies `infra/scylla/schema.cql` with its own replication.
    pub create_schema: bool,
    /// Replication map used when `create-schema` creates the keyspace.
    pub replication: String,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "tally".into(),
            consistency: ConsistencyLevel::LocalQuorum,
            local_datacenter: String::new(),
            username: String::new(),
            password: Secret::new(""),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            concurrency: 64,
            minute_ttl: Duration::ZERO,
            create_schema: false,
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}".into(),
        }
    }
}

impl ScyllaConfig {
    /// Settings for the contact points of a `TALLY_SCYLLA_URI`-style string:
    /// `host:port[,host:port...]`, optionally prefixed by `scylla://`.
    pub fn from_uri(uri: &str) -> Self {
        let nodes = uri
            .trim()
            .trim_start_matches("scylla://")
            .trim_start_matches("cassandra://")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.trim_end_matches('/').to_owned())
            .collect();
        Self { nodes, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_gives_its_contact_points() {
        let c = ScyllaConfig::from_uri("scylla://10.0.0.1:9042,10.0.0.2:9042/");
        assert_eq!(c.nodes, vec!["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(ScyllaConfig::from_uri("127.0.0.1:9042").nodes, vec!["127.0.0.1:9042"]);
        assert_eq!(c.consistency, ConsistencyLevel::LocalQuorum);
    }
}
