//! What the store contract suites share.

use tally_store::{ScyllaConfig, ScyllaStore};

/// A store in a fresh keyspace of the Cassandra node at `uri`.
pub async fn scylla_store(uri: &str) -> ScyllaStore {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut config = ScyllaConfig::from_uri(uri);
    config.keyspace = format!("tally_contract_{}_{nanos}_{n}", std::process::id());
    config.create_schema = true;
    ScyllaStore::connect(config).await.unwrap_or_else(|e| panic!("connect to Cassandra at {uri}: {e}"))
}
