//! A 3-broker Apache Kafka cluster on loopback ports: every node is broker
//! and controller, topics get replication factor 3 and
//! `min.insync.replicas=2` by default, so one broker down is tolerated and
//! two down stop `acks=all` writes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tally_servers::kafka::{new_cluster_id, Voter};
use tally_servers::{KafkaNode, ServerProcess, Tools};

use crate::process::free_port;
use crate::server_dir::ServerDir;

const START_LIMIT: Duration = Duration::from_secs(120);

/// A running cluster; every node is stopped when dropped.
pub struct KafkaCluster {
    tools: Tools,
    nodes: Vec<KafkaNode>,
    processes: Vec<Option<ServerProcess>>,
    _dir: ServerDir,
}

impl KafkaCluster {
    /// Starts `size` nodes (node ids 1..=size) and waits until every one
    /// serves clients.
    pub fn start(size: usize) -> Self {
        let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
        let dir = ServerDir::create("kafka-cluster");
        let cluster_id = new_cluster_id();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<Voter> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller_port))| Voter { node_id: i as u32 + 1, controller_port: *controller_port })
            .collect();
        let nodes: Vec<KafkaNode> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, controller_port))| KafkaNode {
                node_id: i as u32 + 1,
                port: *port,
                controller_port: *controller_port,
                voters: voters.clone(),
                cluster_id: cluster_id.clone(),
                dir: dir.path().join(format!("node-{}", i + 1)),
                heap: "512m".into(),
                overrides: BTreeMap::new(),
            })
            .collect();
        // The quorum forms only once a majority runs: start every node before waiting for any.
        let mut processes = Vec::new();
        for node in &nodes {
            node.prepare(&tools).unwrap_or_else(|e| panic!("{e}"));
            processes.push(Some(node.spawn(&tools).unwrap_or_else(|e| panic!("{e}"))));
        }
        for (node, process) in nodes.iter().zip(&mut processes) {
            let process = process.as_mut().expect("just started");
            node.wait_ready(process, START_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        }
        let cluster = Self { tools, nodes, processes, _dir: dir };
        assert!(
            tally_servers::kafka::wait_for_metadata(&cluster.bootstrap(), size, START_LIMIT),
            "the cluster did not list {size} brokers"
        );
        cluster
    }

    /// Every node's `127.0.0.1:<port>`, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(KafkaNode::bootstrap).collect::<Vec<_>>().join(",")
    }

    /// Node ids, in order.
    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.node_id).collect()
    }

    /// Kills node `id` (SIGKILL).
    pub fn kill(&mut self, id: u32) {
        if let Some(mut process) = self.slot(id).take() {
            process.kill();
        }
    }

    /// Stops node `id` cleanly (SIGTERM: leadership moves away first).
    pub fn stop(&mut self, id: u32) {
        if let Some(mut process) = self.slot(id).take() {
            process.stop(Duration::from_secs(30));
        }
    }

    /// Starts node `id` again with its data and waits until it serves clients.
    pub fn restart(&mut self, id: u32) {
        self.kill(id);
        let index = self.index(id);
        let node = &self.nodes[index];
        let process = node.start(&self.tools, START_LIMIT).unwrap_or_else(|e| panic!("{e}"));
        self.processes[index] = Some(process);
    }

    /// Whether node `id` runs.
    pub fn is_running(&mut self, id: u32) -> bool {
        self.slot(id).as_mut().is_some_and(ServerProcess::is_running)
    }

    /// The leader of `topic`'s `partition` according to the cluster's
    /// metadata; `None` while it has none.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<u32> {
        self.partition_metadata(topic, partition).map(|(leader, _)| leader).filter(|l| *l >= 0).map(|l| l as u32)
    }

    /// The in-sync replicas of `topic`'s `partition`.
    pub fn isr(&self, topic: &str, partition: i32) -> Vec<u32> {
        self.partition_metadata(topic, partition).map(|(_, isr)| isr).unwrap_or_default()
    }

    /// Waits until every partition of `topic` has all `size` replicas in sync.
    pub fn wait_fully_replicated(&self, topic: &str, partitions: i32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if (0..partitions).all(|p| self.isr(topic, p).len() == self.nodes.len()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn partition_metadata(&self, topic: &str, partition: i32) -> Option<(i32, Vec<u32>)> {
        let client: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().expect("metadata client");
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
        let topic = metadata.topics().first()?;
        let p = topic.partitions().iter().find(|p| p.id() == partition)?;
        Some((p.leader(), p.isr().iter().map(|r| *r as u32).collect()))
    }

    fn index(&self, id: u32) -> usize {
        self.nodes.iter().position(|n| n.node_id == id).unwrap_or_else(|| panic!("no node {id} in the cluster"))
    }

    fn slot(&mut self, id: u32) -> &mut Option<ServerProcess> {
        let index = self.index(id);
        &mut self.processes[index]
    }
}
