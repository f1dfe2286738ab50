//! Apache Kafka and Apache Cassandra as child processes on loopback ports.
//!
//! Tally's tests, benchmarks and `tally standalone` run the real servers, not
//! stand-ins. Neither ships a native binary: both are Java programs whose jars
//! `scripts/setup` fetches from Maven Central (the small poms in `infra/jvm/`)
//! into the tools cache. This crate finds a JDK 17 and those jars, writes each
//! server's configuration, starts it, waits until it is ready and stops it
//! (SIGTERM, then SIGKILL after a bound).
//!
//! Why JDK 17: Kafka 4 needs Java 17 or newer, and Cassandra 5.0 runs on Java
//! 11 or 17 only (it installs a SecurityManager, which Java 21+ refuses).
//!
//! # Layout
//!
//! - [`tools`]: where the JDK and the jars are ([`Tools`]).
//! - [`process`]: one server child: log file, pidfile, bounded stop, leftover
//!   servers of killed owners ([`ServerProcess`]).
//! - [`kafka`]: a KRaft node (broker and controller in one JVM), one or
//!   several forming a cluster ([`KafkaNode`]).
//! - [`cassandra`]: a single Cassandra node ([`CassandraNode`]).

pub mod cassandra;
pub mod kafka;
pub mod process;
pub mod tools;

pub use cassandra::{CassandraNode, CommitLogSync};
pub use kafka::KafkaNode;
pub use process::ServerProcess;
pub use tools::Tools;

use std::path::PathBuf;
use std::time::Duration;

/// Why a server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A JDK 17 or the server's jars are missing.
    #[error("{what} not found ({looked}); run `scripts/setup` once to install it")]
    NotInstalled {
        /// What is missing.
        what: String,
        /// Where it was looked for.
        looked: String,
    },
    /// Reading or writing the server's files failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A preparatory command (formatting Kafka's storage) failed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// Which command.
        what: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// The server exited before it was ready.
    #[error("{server} exited at start ({status}); the end of its log {}:\n{tail}", log.display())]
    ExitedAtStart {
        /// Which server.
        server: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// The server did not become ready in time.
    #[error("{server} was not ready within {limit:?}; the end of its log {}:\n{tail}", log.display())]
    NotReady {
        /// Which server.
        server: String,
        /// The bound.
        limit: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A port the server needs is held by another process.
    #[error("port {port} on 127.0.0.1 is already in use by another process; {hint}")]
    PortTaken {
        /// The port.
        port: u16,
        /// What to do about it.
        hint: String,
    },
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
