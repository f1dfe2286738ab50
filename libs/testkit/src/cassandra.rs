//! A real Apache Cassandra 5.0 node on free loopback ports.
//!
//! A Cassandra node costs 15-20 s and 1 GB to start, so the whole test run
//! shares one: `scripts/test` starts it and names it in
//! `TALLY_TEST_CASSANDRA`; each test works in a keyspace of its own. Without
//! the variable (one test run by hand) the test starts a node of its own.

use std::time::Duration;

use tally_servers::{CassandraNode, ServerProcess, Tools};

use crate::process::free_port;
use crate::server_dir::ServerDir;

/// The environment variable naming the run's shared node (`host:port`).
pub const SHARED_CASSANDRA_VAR: &str = "TALLY_TEST_CASSANDRA";

const START_LIMIT: Duration = Duration::from_secs(180);

/// A Cassandra node of this test, or the run's shared one.
pub struct Cassandra {
    contact_point: String,
    _own: Option<(ServerProcess, ServerDir)>,
}

impl Cassandra {
    /// Starts a node of this test's own (system keyspaces not fsynced: tests only).
    pub fn start() -> Self {
        let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
        let dir = ServerDir::create("cassandra");
        let mut node = CassandraNode::new(dir.path(), free_port(), free_port());
        node.test_speedups = true;
        let process = node.start(&tools, START_LIMIT).unwrap_or_else(|e| panic!("Apache Cassandra: {e}"));
        Self { contact_point: node.contact_point(), _own: Some((process, dir)) }
    }

    /// The run's shared node when `scripts/test` started one, else a node of this test's own.
    pub fn shared() -> Self {
        match std::env::var(SHARED_CASSANDRA_VAR) {
            Ok(contact_point) if !contact_point.is_empty() => Self { contact_point, _own: None },
            _ => Self::start(),
        }
    }

    /// `127.0.0.1:<port>`, the CQL contact point.
    pub fn contact_point(&self) -> String {
        self.contact_point.clone()
    }
}
