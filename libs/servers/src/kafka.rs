//! An Apache Kafka node in KRaft mode: broker and controller in one JVM.
//!
//! Start-up, measured on a 2-core machine: formatting the storage (one JVM,
//! first start only) takes 3-5 s, the node is ready 5-7 s later.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::ServerProcess;
use crate::tools::{Tools, KAFKA_VERSION};
use crate::ServerError;

/// The line Kafka logs once it serves clients.
const READY_LINE: &str = "Kafka Server started";

/// One controller of the KRaft quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voter {
    /// Its `node.id`.
    pub node_id: u32,
    /// Its controller listener port on 127.0.0.1.
    pub controller_port: u16,
}

/// What a node needs to start: identity, ports, data and settings.
#[derive(Debug, Clone)]
pub struct KafkaNode {
    /// `node.id`, unique in the cluster.
    pub node_id: u32,
    /// Client listener port on 127.0.0.1.
    pub port: u16,
    /// Controller listener port on 127.0.0.1.
    pub controller_port: u16,
    /// Every controller of the quorum, this node included.
    pub voters: Vec<Voter>,
    /// The cluster id every node is formatted with ([`new_cluster_id`]).
    pub cluster_id: String,
    /// Where its configuration, log file, pidfile and data live.
    pub dir: PathBuf,
    /// JVM heap (`-Xms` = `-Xmx`), e.g. `512m`.
    pub heap: String,
    /// Broker properties over the defaults of [`KafkaNode::properties`].
    pub overrides: BTreeMap<String, String>,
}

impl KafkaNode {
    /// A single-node cluster (replication factor 1 everywhere).
    pub fn single(dir: &Path, port: u16, controller_port: u16) -> Self {
        Self {
            node_id: 1,
            port,
            controller_port,
            voters: vec![Voter { node_id: 1, controller_port }],
            cluster_id: new_cluster_id(),
            dir: dir.to_path_buf(),
            heap: "512m".into(),
            overrides: BTreeMap::new(),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its server properties: KRaft combined mode on loopback, replication
    /// settings fitting the quorum's size, then [`KafkaNode::overrides`].
    pub fn properties(&self) -> BTreeMap<String, String> {
        let replicas = self.voters.len().min(3);
        let min_isr = if replicas >= 3 { 2 } else { 1 };
        let voters = self
            .voters
            .iter()
            .map(|v| format!("{}@127.0.0.1:{}", v.node_id, v.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut p = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            p.insert(k.to_owned(), v);
        };
        set("process.roles", "broker,controller".into());
        set("node.id", self.node_id.to_string());
        set(
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}", self.port, self.controller_port),
        );
        set("advertised.listeners", format!("PLAINTEXT://127.0.0.1:{}", self.port));
        set("controller.listener.names", "CONTROLLER".into());
        set("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into());
        set("inter.broker.listener.name", "PLAINTEXT".into());
        set("controller.quorum.voters", voters);
        set("log.dirs", self.data_dir().display().to_string());
        // Topics are created by Tally (or an operator) with explicit settings, never by a typo.
        set("auto.create.topics.enable", "false".into());
        set("default.replication.factor", replicas.to_string());
        set("min.insync.replicas", min_isr.to_string());
        set("offsets.topic.replication.factor", replicas.to_string());
        set("transaction.state.log.replication.factor", replicas.to_string());
        set("transaction.state.log.min.isr", min_isr.to_string());
        set("share.coordinator.state.topic.replication.factor", replicas.to_string());
        set("share.coordinator.state.topic.min.isr", min_isr.to_string());
        // 50 partitions each (the defaults) cost seconds of start-up and first use on 2 cores.
        set("offsets.topic.num.partitions", "8".into());
        set("transaction.state.log.num.partitions", "4".into());
        // The first rebalance of a group would otherwise wait 3 s for more members.
        set("group.initial.rebalance.delay.ms", "0".into());
        for (k, v) in &self.overrides {
            p.insert(k.clone(), v.clone());
        }
        p
    }

    /// Its data directory (`log.dirs`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    /// Its pidfile.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("kafka.pid")
    }

    /// Writes the configuration and formats the storage when it is not yet
    /// formatted (a restart reuses the data).
    pub fn prepare(&self, tools: &Tools) -> Result<(), ServerError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { what, path, source }
        };
        std::fs::create_dir_all(self.data_dir()).map_err(io("create", &self.data_dir()))?;
        let config = self.dir.join("server.properties");
        std::fs::write(&config, self.properties_file()).map_err(io("write", &config))?;
        let log4j = self.dir.join("log4j2.properties");
        std::fs::write(&log4j, LOG4J2).map_err(io("write", &log4j))?;
        if self.data_dir().join("meta.properties").exists() {
            return Ok(());
        }
        let output = self
            .java(tools)?
            .args(["kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", &self.cluster_id, "-c"])
            .arg(&config)
            .output()
            .map_err(io("run the storage tool with", &tools.java))?;
        if !output.status.success() {
            return Err(ServerError::Command {
                what: "formatting Kafka's storage",
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned(),
            });
        }
        Ok(())
    }

    /// The text of its `server.properties`.
    fn properties_file(&self) -> String {
        let mut text = String::from("# Written by Tally (tally-servers); rewritten at every start.\n");
        for (k, v) in self.properties() {
            let _ = writeln!(text, "{k}={v}");
        }
        text
    }

    /// Whether `leftover`, a node found running in this node's directory
    /// ([`ServerProcess::find_leftover`]), runs this node's configuration
    /// (properties and heap) and answers a metadata request within `limit`:
    /// then it can serve as this node instead of being restarted.
    pub fn is_running_as(&self, leftover: &ServerProcess, limit: Duration) -> bool {
        let written = std::fs::read_to_string(self.dir.join("server.properties")).unwrap_or_default();
        let heap = format!("-Xmx{} ", self.heap);
        written == self.properties_file()
            && leftover.command_line().is_some_and(|cmdline| cmdline.contains(&heap))
            && wait_for_metadata(&self.bootstrap(), 1, limit)
    }

    /// Starts the node (after [`KafkaNode::prepare`]) without waiting for it.
    pub fn spawn(&self, tools: &Tools) -> Result<ServerProcess, ServerError> {
        let mut command = self.java(tools)?;
        command.args(["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35"]);
        command.args(["-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true"]);
        command.arg(format!("-Xms{}", self.heap)).arg(format!("-Xmx{}", self.heap));
        command.arg("kafka.Kafka").arg(self.dir.join("server.properties"));
        ServerProcess::spawn(&format!("Apache Kafka node {}", self.node_id), command, &self.log_file(), &self.pidfile())
    }

    /// Prepares, starts and waits until the node serves clients.
    pub fn start(&self, tools: &Tools, limit: Duration) -> Result<ServerProcess, ServerError> {
        self.prepare(tools)?;
        let mut process = self.spawn(tools)?;
        self.wait_ready(&mut process, limit)?;
        Ok(process)
    }

    /// Waits for the ready line in the log, then for a metadata answer.
    pub fn wait_ready(&self, process: &mut ServerProcess, limit: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + limit;
        process.wait_for_log_line(READY_LINE, limit)?;
        if wait_for_metadata(&self.bootstrap(), 1, deadline.saturating_duration_since(Instant::now())) {
            Ok(())
        } else {
            Err(process.not_ready(limit))
        }
    }

    fn java(&self, tools: &Tools) -> Result<Command, ServerError> {
        let mut command = Command::new(&tools.java);
        command
            .current_dir(&self.dir)
            .arg(format!("-Dlog4j2.configurationFile={}", self.dir.join("log4j2.properties").display()))
            .arg("-cp")
            .arg(tools.kafka_classpath()?);
        Ok(command)
    }
}

/// Broker settings that give `consumer`-protocol groups (KIP-848) the short
/// sessions classic groups get from their clients' `session.timeout.ms`:
/// 6 s sessions (the broker's minimum is 45 s otherwise) and 1 s heartbeats
/// (5 s otherwise). The heartbeat interval also bounds how soon members learn
/// of a new assignment. For nodes whose groups must notice a dead member
/// quickly: tests, `tally standalone`.
pub fn short_consumer_group_sessions() -> BTreeMap<String, String> {
    [
        ("group.consumer.min.session.timeout.ms", "6000"),
        ("group.consumer.session.timeout.ms", "6000"),
        ("group.consumer.min.heartbeat.interval.ms", "1000"),
        ("group.consumer.heartbeat.interval.ms", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The version of Apache Kafka these nodes run.
pub fn version() -> &'static str {
    KAFKA_VERSION
}

/// A fresh cluster id: 16 random bytes, URL-safe base64 without padding, as
/// `kafka-storage random-uuid` makes them (without starting a JVM for it).
pub fn new_cluster_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    // Kafka reserves the all-zero id and ids starting with '-' read as flags on a command line.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Waits until a metadata request through `bootstrap` lists at least
/// `brokers` brokers.
pub fn wait_for_metadata(bootstrap: &str, brokers: usize, limit: Duration) -> bool {
    let Ok(client) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "tally-servers-probe")
        .create::<BaseConsumer>()
    else {
        return false;
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if client.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|m| m.brokers().len() >= brokers) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Log4j2 configuration: INFO to stdout (our log file), the request and
/// state-change chatter quieter.
const LOG4J2: &str = "\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
";
