//! What the store's test binaries share (each uses part of it).
#![allow(dead_code)]

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

/// Runs `body` on a store in a keyspace of its own on the run's Cassandra
/// node (or a node of the test's own), and drops the keyspace afterwards.
pub async fn in_cassandra<F, Fut>(body: F)
where
    F: FnOnce(ScyllaStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let node = tally_testkit::Cassandra::shared();
    let store = scylla_store(&node.contact_point()).await;
    body(store.clone()).await;
    store.drop_keyspace().await.unwrap();
    drop(node);
}
