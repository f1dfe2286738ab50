//! A real tansu broker (SQLite engine) on a free loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::process::{find_binary, free_port, wait_for_port};

/// A running (or stopped) broker. Killed when dropped.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    engine: &'static str,
}

impl Broker {
    /// Starts a broker with a fresh SQLite database on a free port and waits
    /// until it answers metadata requests.
    pub fn start() -> Self {
        Self::start_with_engine("sqlite://tansu.db")
    }

    /// Starts a broker on tansu's in-memory engine: 4-5x faster, keeps
    /// nothing, and its watermarks are not trusted (see TEST-BROKER.md); for
    /// throughput benchmarks only.
    pub fn start_in_memory() -> Self {
        Self::start_with_engine("memory://tansu/")
    }

    fn start_with_engine(engine: &'static str) -> Self {
        for attempt in 0..3 {
            let dir = tempfile::Builder::new().prefix("tally-broker-").tempdir().expect("create broker data dir");
            let mut broker = Self { child: None, port: free_port(), dir, engine };
            if broker.spawn_and_wait() {
                return broker;
            }
            eprintln!("broker did not come up on port {} (attempt {attempt}); retrying", broker.port);
        }
        panic!("tansu broker did not start after 3 attempts");
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker (SIGKILL: tansu may ignore SIGTERM when busy).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn_and_wait(), "tansu broker did not restart on port {}", self.port);
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn_and_wait(&mut self) -> bool {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("open broker log");
        let child = Command::new(find_binary("tansu", "TALLY_TANSU_BIN"))
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", self.engine, "--cluster-id", "tally-test"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu broker");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_for_port(addr, Duration::from_secs(20)) && self.wait_for_metadata(Duration::from_secs(20))
    }

    fn wait_for_metadata(&mut self, limit: Duration) -> bool {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().expect("metadata client");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                return false;
            }
            if consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                return true;
            }
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
