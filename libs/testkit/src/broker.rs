//! A real Apache Kafka broker (KRaft, broker and controller in one JVM) on
//! free loopback ports.
//!
//! A JVM broker costs 8-12 s and a core to start on these machines, so tests
//! that only need *a* broker share one: `scripts/test` starts it once for the
//! whole run and names it in `TALLY_TEST_KAFKA` ([`Broker::shared`]); each
//! test keeps to its own random topic and group names. A test that stops,
//! kills or restarts its broker starts one of its own ([`Broker::start`]).

use std::path::Path;
use std::time::Duration;

use tally_servers::{KafkaNode, ServerProcess, Tools};

use crate::process::free_port;
use crate::server_dir::ServerDir;

/// The environment variable naming the run's shared broker (`host:port`).
pub const SHARED_BROKER_VAR: &str = "TALLY_TEST_KAFKA";

/// How long a broker may take to start on a busy 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(90);

/// A broker of this test, or the run's shared one.
pub struct Broker {
    bootstrap: String,
    own: Option<OwnBroker>,
}

/// A broker this test started; stopped when dropped.
struct OwnBroker {
    node: KafkaNode,
    tools: Tools,
    process: Option<ServerProcess>,
    // Dropped last: the directory (and its logs, kept on failure) outlives the process.
    dir: ServerDir,
}

impl Broker {
    /// Starts a broker of this test's own, on fresh ports with empty storage,
    /// and waits until it answers metadata requests.
    pub fn start() -> Self {
        let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
        let mut last_error = String::new();
        for attempt in 0..3 {
            let dir = ServerDir::create("kafka");
            let node = KafkaNode::single(dir.path(), free_port(), free_port());
            match node.start(&tools, START_LIMIT) {
                Ok(process) => {
                    return Self {
                        bootstrap: node.bootstrap(),
                        own: Some(OwnBroker { node, tools, process: Some(process), dir }),
                    }
                }
                Err(e) => {
                    eprintln!("Apache Kafka did not start (attempt {attempt}): {e}");
                    last_error = e.to_string();
                }
            }
        }
        panic!("Apache Kafka did not start after 3 attempts: {last_error}");
    }

    /// The run's shared broker when `scripts/test` started one
    /// (`TALLY_TEST_KAFKA`), else a broker of this test's own.
    pub fn shared() -> Self {
        match std::env::var(SHARED_BROKER_VAR) {
            Ok(bootstrap) if !bootstrap.is_empty() => Self { bootstrap, own: None },
            _ => Self::start(),
        }
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The broker process id while it runs (benchmarks read its CPU time);
    /// `None` for the shared broker.
    pub fn pid(&self) -> Option<u32> {
        self.own.as_ref().and_then(|own| own.process.as_ref()).map(ServerProcess::pid)
    }

    /// The broker's directory (configuration, log, data).
    pub fn data_dir(&self) -> &Path {
        self.own_broker("data_dir").dir.path()
    }

    /// Stops the broker cleanly (SIGTERM; SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.own_broker_mut("stop").process.take() {
            process.stop(Duration::from_secs(30));
        }
    }

    /// Kills the broker (SIGKILL), as a crash or power loss of its host would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.own_broker_mut("kill").process.take() {
            process.kill();
        }
    }

    /// Starts the broker again on the same ports with the same data (killing
    /// it first when it runs).
    pub fn restart(&mut self) {
        let own = self.own_broker_mut("restart");
        if let Some(mut process) = own.process.take() {
            process.kill();
        }
        let process = own.node.start(&own.tools, START_LIMIT).unwrap_or_else(|e| panic!("restarting Kafka: {e}"));
        own.process = Some(process);
    }

    /// Whether the broker process is running (the shared one always counts as running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.own {
            Some(own) => own.process.as_mut().is_some_and(ServerProcess::is_running),
            None => true,
        }
    }

    fn own_broker(&self, what: &str) -> &OwnBroker {
        self.own
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: a test that needs this starts its own broker (Broker::start)"))
    }

    fn own_broker_mut(&mut self, what: &str) -> &mut OwnBroker {
        self.own
            .as_mut()
            .unwrap_or_else(|| panic!("{what}: a test that needs this starts its own broker (Broker::start)"))
    }
}
