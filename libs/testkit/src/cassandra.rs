//! A real Apache Cassandra 5.0 node on free loopback ports.
//!
//! A Cassandra node costs 15-20 s and 1 GB to start, so the whole test run
//! shares one: `scripts/test` starts it and names it in
//! `TALLY_TEST_CASSANDRA`; each test works in a keyspace of its own. Without
//! the variable (one test run by hand) the test starts a node of its own.
//! A test that stops, kills or restarts its node starts one of its own
//! ([`Cassandra::start`]).

use std::time::Duration;

use tally_servers::{CassandraNode, CommitLogSync, ServerProcess, Tools};

use crate::process::free_port;
use crate::server_dir::ServerDir;

/// The environment variable naming the run's shared node (`host:port`).
pub const SHARED_CASSANDRA_VAR: &str = "TALLY_TEST_CASSANDRA";

const START_LIMIT: Duration = Duration::from_secs(180);

/// A Cassandra node of this test, or the run's shared one.
pub struct Cassandra {
    contact_point: String,
    own: Option<OwnNode>,
}

/// A node this test started; stopped when dropped.
struct OwnNode {
    node: CassandraNode,
    tools: Tools,
    process: Option<ServerProcess>,
    // Dropped last: the directory (and its logs, kept on failure) outlives the process.
    _dir: ServerDir,
}

impl Cassandra {
    /// Starts a node of this test's own (system keyspaces not fsynced, writes
    /// acknowledged before the commit log is synced: tests that never kill it).
    pub fn start() -> Self {
        Self::start_node(|node| {
            node.test_speedups = true;
            node.commitlog_sync = CommitLogSync::Periodic;
        })
    }

    /// Starts a node of this test's own configured as a single-replica
    /// operator's node must be (every fsync, `commitlog_sync: batch`): a kill
    /// -9 and restart of it is a crash and restart of that node.
    pub fn start_default() -> Self {
        Self::start_with_commitlog(CommitLogSync::Batch)
    }

    /// Like [`Cassandra::start_default`], with the given commit log mode.
    pub fn start_with_commitlog(commitlog_sync: CommitLogSync) -> Self {
        Self::start_node(|node| node.commitlog_sync = commitlog_sync)
    }

    fn start_node(configure: impl FnOnce(&mut CassandraNode)) -> Self {
        let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
        let dir = ServerDir::create("cassandra");
        let mut node = CassandraNode::new(dir.path(), free_port(), free_port());
        configure(&mut node);
        let process = node.start(&tools, START_LIMIT).unwrap_or_else(|e| panic!("Apache Cassandra: {e}"));
        Self {
            contact_point: node.contact_point(),
            own: Some(OwnNode { node, tools, process: Some(process), _dir: dir }),
        }
    }

    /// The run's shared node when `scripts/test` started one, else a node of this test's own.
    pub fn shared() -> Self {
        match std::env::var(SHARED_CASSANDRA_VAR) {
            Ok(contact_point) if !contact_point.is_empty() => Self { contact_point, own: None },
            _ => Self::start(),
        }
    }

    /// `127.0.0.1:<port>`, the CQL contact point.
    pub fn contact_point(&self) -> String {
        self.contact_point.clone()
    }

    /// Stops the node cleanly (SIGTERM: Cassandra drains; SIGKILL after 60 s).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.own_node("stop").process.take() {
            process.stop(Duration::from_secs(60));
        }
    }

    /// Kills the node (SIGKILL), as a crash or power loss of its host would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.own_node("kill").process.take() {
            process.kill();
        }
    }

    /// Starts the node again on the same ports with the same data (killing
    /// it first when it runs) and waits until it takes CQL connections.
    pub fn restart(&mut self) {
        let own = self.own_node("restart");
        if let Some(mut process) = own.process.take() {
            process.kill();
        }
        let process = own.node.start(&own.tools, START_LIMIT).unwrap_or_else(|e| panic!("restarting Cassandra: {e}"));
        own.process = Some(process);
    }

    fn own_node(&mut self, action: &str) -> &mut OwnNode {
        self.own
            .as_mut()
            .unwrap_or_else(|| panic!("{action}: the shared Cassandra node is not this test's to {action}"))
    }
}
