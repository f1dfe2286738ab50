//! Whether the cluster can forget a write it acknowledged.
//!
//! The writer commits its offsets on `tally.counts` once the store
//! acknowledged a batch, so a count the cluster acknowledged and then forgot
//! is never applied again. Cassandra's default `commitlog_sync: periodic`
//! acknowledges a write before its commit log is synced, and replay after a
//! crash stops at the last sync marker (written every 100 ms): measured on
//! Apache Cassandra 5.0.8 (`tests/cassandra_crash.rs`), a kill -9 of the
//! process, not only a power loss, loses the last acknowledged writes. With
//! more than one replica and `local-quorum` the other replicas still hold
//! them; with one replica they are gone. The store looks at both when it
//! connects and warns about that combination.
//!
//! Cassandra 4.0+ reports its settings in `system_views.settings`; ScyllaDB
//! has no such table, and the check then says nothing.

use scylla::client::session::Session;

/// What the contacted node and the keyspace say about durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// The node's `commitlog_sync` (`periodic`, `batch`, `group`), when it reports it.
    pub commitlog_sync: Option<String>,
    /// The fewest replicas the keyspace keeps in any data centre, when readable.
    pub min_replicas: Option<u32>,
}

impl Durability {
    /// The warning to give, when acknowledged counts can be lost by a node crash.
    pub fn risk(&self, keyspace: &str) -> Option<String> {
        match (self.commitlog_sync.as_deref(), self.min_replicas) {
            (Some("periodic"), Some(1)) => Some(format!(
                "keyspace {keyspace} has one replica and the node acknowledges writes before syncing its commit log \
                 (commitlog_sync: periodic): a crash of the node loses the counts acknowledged in its last \
                 moments, after the writer committed their offsets. Set commitlog_sync: batch (or group) on the \
                 nodes, or keep three replicas and consistency local-quorum"
            )),
            _ => None,
        }
    }

    /// Reads both from the cluster; what cannot be read stays `None`.
    pub async fn read(session: &Session, keyspace: &str) -> Self {
        Self { commitlog_sync: commitlog_sync(session).await, min_replicas: min_replicas(session, keyspace).await }
    }
}

async fn commitlog_sync(session: &Session) -> Option<String> {
    let result = session
        .query_unpaged("SELECT value FROM system_views.settings WHERE name = 'commitlog_sync'", ())
        .await
        .ok()?;
    let rows = result.into_rows_result().ok()?;
    let (value,) = rows.maybe_first_row::<(Option<String>,)>().ok()??;
    value
}

async fn min_replicas(session: &Session, keyspace: &str) -> Option<u32> {
    let result = session
        .query_unpaged("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?", (keyspace,))
        .await
        .ok()?;
    let rows = result.into_rows_result().ok()?;
    let (replication,) = rows.maybe_first_row::<(std::collections::HashMap<String, String>,)>().ok()??;
    replicas_in_replication(&replication)
}

/// The fewest replicas a replication map gives any data centre.
fn replicas_in_replication(replication: &std::collections::HashMap<String, String>) -> Option<u32> {
    replication
        .iter()
        .filter(|(key, _)| key.as_str() != "class")
        .filter_map(|(_, value)| value.parse::<u32>().ok())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_fewest_replicas_of_any_data_centre_count() {
        let simple = map(&[("class", "org.apache.cassandra.locator.SimpleStrategy"), ("replication_factor", "1")]);
        assert_eq!(replicas_in_replication(&simple), Some(1));
        let two_dcs =
            map(&[("class", "org.apache.cassandra.locator.NetworkTopologyStrategy"), ("dc1", "3"), ("dc2", "1")]);
        assert_eq!(replicas_in_replication(&two_dcs), Some(1));
        assert_eq!(replicas_in_replication(&map(&[("class", "x")])), None);
    }

    #[test]
    fn only_one_replica_with_a_periodic_commit_log_is_a_risk() {
        let at = |sync: &str, replicas| Durability { commitlog_sync: Some(sync.into()), min_replicas: Some(replicas) };
        assert!(at("periodic", 1).risk("tally").unwrap().contains("commitlog_sync: batch"));
        assert_eq!(at("periodic", 3).risk("tally"), None);
        assert_eq!(at("batch", 1).risk("tally"), None);
        assert_eq!(at("group", 1).risk("tally"), None);
        assert_eq!(Durability { commitlog_sync: None, min_replicas: Some(1) }.risk("tally"), None);
    }
}
