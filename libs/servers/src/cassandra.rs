//! A single Apache Cassandra 5.0 node on a loopback address.
//!
//! Start-up, measured on a 2-core machine: ready 15-20 s after the JVM starts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::ServerProcess;
use crate::tools::{Tools, CASSANDRA_VERSION};
use crate::ServerError;

/// The line Cassandra logs once its CQL port is open and start-up finished.
const READY_LINE: &str = "Startup complete";

/// The module flags Cassandra needs on Java 17 (its `conf/jvm17-server.options`):
/// without them it fails with `InaccessibleObjectException`.
const JAVA17_FLAGS: &[&str] = &[
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    // Cassandra 5.0 installs a SecurityManager, which Java 17 allows only when asked.
    "-Djava.security.manager=allow",
];

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct CassandraNode {
    /// CQL (native transport) port on 127.0.0.1.
    pub native_port: u16,
    /// Inter-node storage port on 127.0.0.1.
    pub storage_port: u16,
    /// Where its configuration, log file, pidfile and data live.
    pub dir: PathBuf,
    /// JVM heap (`-Xms` = `-Xmx`); Cassandra's own script would size it from
    /// the machine's memory (6 GB on 24 GB).
    pub heap: String,
    /// Skip fsyncs of the system keyspaces: faster schema changes for tests.
    /// Never for durability tests or benchmarks.
    pub test_speedups: bool,
    /// When a write is acknowledged relative to its commit log reaching the disk.
    pub commitlog_sync: CommitLogSync,
}

/// Cassandra's `commitlog_sync`: whether a node acknowledges a write before
/// or after the commit log segment holding it is synced.
///
/// Measured here (`tally-store`'s `cassandra_crash` test, Apache Cassandra
/// 5.0.8): with `Periodic` a kill -9 of the process, not only a power loss,
/// loses acknowledged writes. The segment is memory-mapped, but replay after
/// a crash stops at the last sync marker, and markers are written every
/// 100 ms (more rarely when the syncing thread is starved). A single replica
/// (every node Tally starts) therefore needs `Batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitLogSync {
    /// Acknowledge at once; sync every 10 s (Cassandra's default).
    Periodic,
    /// Acknowledge once the commit log is synced; concurrent writes share a sync.
    Batch,
}

impl CommitLogSync {
    fn yaml(self) -> &'static str {
        match self {
            Self::Periodic => "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms\n",
            Self::Batch => "commitlog_sync: batch\n",
        }
    }
}

impl CassandraNode {
    /// A node in `dir` on the given ports, 1 GB heap, no speed-ups, every
    /// write synced to the commit log before it is acknowledged.
    pub fn new(dir: &Path, native_port: u16, storage_port: u16) -> Self {
        Self {
            native_port,
            storage_port,
            dir: dir.to_path_buf(),
            heap: "1G".into(),
            test_speedups: false,
            commitlog_sync: CommitLogSync::Batch,
        }
    }

    /// `127.0.0.1:<native port>`, for the CQL driver.
    pub fn contact_point(&self) -> String {
        format!("127.0.0.1:{}", self.native_port)
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("cassandra.log")
    }

    /// Its pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("cassandra.pid")
    }

    /// Writes `cassandra.yaml` and the logback configuration.
    pub fn prepare(&self) -> Result<(), ServerError> {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(|source| ServerError::Io { what: "create", path: data, source })?;
        let yaml = format!("{YAML}{}", self.commitlog_sync.yaml());
        for (name, text) in [("cassandra.yaml", yaml.as_str()), ("logback.xml", LOGBACK)] {
            let path = self.dir.join(name);
            std::fs::write(&path, text).map_err(|source| ServerError::Io { what: "write", path, source })?;
        }
        Ok(())
    }

    /// Starts the node (after [`CassandraNode::prepare`]) without waiting.
    pub fn spawn(&self, tools: &Tools) -> Result<ServerProcess, ServerError> {
        let mut command = Command::new(&tools.java);
        command.current_dir(&self.dir);
        command.arg(format!("-Xms{}", self.heap)).arg(format!("-Xmx{}", self.heap));
        command.args(["-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1"]);
        command.arg(format!("-javaagent:{}", tools.cassandra_jamm()?.display()));
        command.args(JAVA17_FLAGS);
        command.arg("-Dcassandra-foreground=yes");
        command.arg(format!("-Dcassandra.config=file://{}", self.dir.join("cassandra.yaml").display()));
        command.arg(format!("-Dlogback.configurationFile={}", self.dir.join("logback.xml").display()));
        command.arg(format!("-Dcassandra.storagedir={}", self.dir.join("data").display()));
        command.arg(format!("-Dcassandra.native_transport_port={}", self.native_port));
        command.arg(format!("-Dcassandra.storage_port={}", self.storage_port));
        // One node: nothing to gossip with (saves 5-8 s of start-up).
        command.args(["-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.load_ring_state=false"]);
        if self.test_speedups {
            command.arg("-Dcassandra.unsafesystem=true");
        }
        command.arg("-cp").arg(tools.cassandra_classpath()?);
        command.arg("org.apache.cassandra.service.CassandraDaemon");
        ServerProcess::spawn("Apache Cassandra", command, &self.log_file(), &self.pidfile())
    }

    /// Prepares, starts and waits until the node takes CQL connections.
    pub fn start(&self, tools: &Tools, limit: Duration) -> Result<ServerProcess, ServerError> {
        self.prepare()?;
        let mut process = self.spawn(tools)?;
        self.wait_ready(&mut process, limit)?;
        Ok(process)
    }

    /// Waits for the ready line, then for the CQL port to accept connections.
    pub fn wait_ready(&self, process: &mut ServerProcess, limit: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + limit;
        process.wait_for_log_line(READY_LINE, limit)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.native_port));
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(process.not_ready(limit))
    }
}

/// The version of Apache Cassandra these nodes run.
pub fn version() -> &'static str {
    CASSANDRA_VERSION
}

/// A one-node configuration for a 2-core machine (5.0 key names: unknown keys are fatal).
const YAML: &str = r#"# Written by Tally (tally-servers); rewritten at every start.
cluster_name: tally
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
start_native_transport: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# Dropping a test's keyspace should not copy its data first.
auto_snapshot: false
hinted_handoff_enabled: false
# The store writes one single-partition batch per video and flush chunk.
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 1MiB
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 4
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
counter_cache_size: 0MiB
"#;

/// INFO to stdout (the log file); without a configuration Cassandra logs at DEBUG.
const LOGBACK: &str = r#"<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"#;
