//! `tally standalone`: a managed Apache Kafka broker (KRaft, one node, data
//! under the data directory, so `kill -9` loses nothing) plus every service
//! in this process, sharing one admin port and an in-process cache unless
//! Redis is configured.
//!
//! Standalone owns its broker: a broker left running by an earlier standalone
//! in the same data directory (its pidfile names it), killed before it could
//! stop it, is adopted when it runs the same configuration and answers, and
//! stopped otherwise; a port held by anything else is refused with an error,
//! never used; and when the broker exits while standalone runs, standalone
//! stops with an error rather than count through whatever answers on that
//! port next.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tally_servers::process::port_in_use;
use tally_servers::{KafkaNode, ServerProcess, Tools};
use tokio_util::sync::CancellationToken;

use crate::config::{StandaloneConfig, StoreConfig, TallyConfig};

/// The `group-instance-id` of standalone's counter, writer and archiver
/// unless configured.
const STANDALONE_INSTANCE_ID: &str = "standalone";

/// How long the broker may take to stop cleanly before it is killed.
const BROKER_STOP_GRACE: Duration = Duration::from_secs(20);

/// The broker child process; killed when dropped.
#[derive(Clone)]
pub struct ManagedBroker {
    process: Arc<Mutex<ServerProcess>>,
    log: PathBuf,
}

/// The broker exited while standalone was running.
#[derive(Debug, thiserror::Error)]
#[error("the managed Kafka broker exited ({status}); see {}", log.display())]
pub struct BrokerExited {
    status: String,
    log: PathBuf,
}

impl ManagedBroker {
    /// Stops the broker: SIGTERM (a clean shutdown, fast recovery at the
    /// next start), SIGKILL after a bound.
    pub async fn stop(self) {
        let process = self.process.clone();
        let _ = tokio::task::spawn_blocking(move || {
            process.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stop(BROKER_STOP_GRACE)
        })
        .await;
    }

    /// Resolves with an error when the broker exits, or with `Ok` at
    /// `shutdown` (the broker keeps running for the services' drain).
    pub async fn watch(self, shutdown: CancellationToken) -> Result<(), BrokerExited> {
        loop {
            let exited = self.process.lock().unwrap_or_else(std::sync::PoisonError::into_inner).exit_status();
            if let Some(status) = exited {
                tracing::error!(%status, log = %self.log.display(), "the managed Kafka broker exited; stopping");
                return Err(BrokerExited { status, log: self.log.clone() });
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// Adjusts `config` for one process on one machine.
pub fn prepare(config: &mut TallyConfig) -> anyhow::Result<()> {
    let s = &config.standalone;
    config.kafka.brokers = format!("127.0.0.1:{}", s.broker_port);
    // One member per group: after a crash, the restarted member should not wait
    // out the dead one's 45 s session before it gets its partitions back. With
    // the consumer protocol the broker sets sessions ([`node`]).
    if config.kafka.group_protocol == tally_kafka::GroupProtocol::Classic {
        for (key, value) in [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "1000")] {
            config.kafka.consumer_properties.entry(key.into()).or_insert_with(|| value.into());
        }
    }
    // Static membership: its groups have one member each, and a member that
    // comes back after a crash with the same instance id takes its old place
    // (and partitions) at once instead of waiting out the dead one's session.
    for instance_id in [
        &mut config.counter.group_instance_id,
        &mut config.writer.group_instance_id,
        &mut config.archiver.group_instance_id,
    ] {
        instance_id.get_or_insert_with(|| STANDALONE_INSTANCE_ID.to_owned());
    }
    if config.archiver.dir == tally_reconciler::ArchiverConfig::default().dir {
        config.archiver.dir = s.data_dir.join("archive");
    }
    if config.store == StoreConfig::default() {
        config.store.sqlite_path = s.data_dir.join("counts.db");
    }
    if config.ingest.viewer_id_key.is_none() {
        config.ingest.viewer_id_key = Some(viewer_id_key(&s.data_dir)?);
    }
    Ok(())
}

/// The viewer pseudonym key of a data directory: generated at the first
/// start and kept, so a viewer hashes the same after every restart.
fn viewer_id_key(data_dir: &std::path::Path) -> anyhow::Result<tally_config::Secret> {
    use anyhow::Context;
    use rand::RngCore;
    let path = data_dir.join("viewer-id.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(tally_config::Secret::new(key.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("Failed to read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir).with_context(|| format!("Failed to create {}", data_dir.display()))?;
    std::fs::write(&path, &key).with_context(|| format!("Failed to write {}", path.display()))?;
    Ok(tally_config::Secret::new(key))
}

/// The broker's node description: one KRaft node in `<data-dir>/broker`.
fn node(config: &StandaloneConfig) -> anyhow::Result<KafkaNode> {
    let data_dir = std::path::absolute(&config.data_dir)
        .with_context(|| format!("Failed to resolve {}", config.data_dir.display()))?;
    let mut node = KafkaNode::single(&data_dir.join("broker"), config.broker_port, config.controller_port);
    node.heap = config.broker_heap.clone();
    // Standalone's groups have one member that restarts after a crash: allow
    // the 6 s session above, and give consumer-protocol groups the same.
    node.overrides.insert("group.min.session.timeout.ms".into(), "6000".into());
    node.overrides.extend(tally_servers::kafka::short_consumer_group_sessions());
    Ok(node)
}

/// How standalone came by its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOrigin {
    /// Started by this run.
    Started,
    /// Left running by an earlier standalone that was killed, with the same
    /// configuration, and serving: used as it is (a restart after a crash of
    /// the Tally process costs no broker restart and no log recovery).
    Adopted,
}

impl BrokerOrigin {
    /// What the start-up line adds about the broker.
    pub fn note(self) -> &'static str {
        match self {
            Self::Started => "",
            Self::Adopted => "; left running by the previous run, adopted",
        }
    }
}

/// How long a leftover broker may take to answer before it is replaced.
const ADOPTION_PROBE: Duration = Duration::from_secs(5);

/// Starts Apache Kafka on 127.0.0.1 with its data under the data directory
/// and waits until it serves clients; or adopts the broker an earlier
/// standalone in the same data directory left running, when it runs the same
/// configuration and serves (any other leftover is stopped first).
pub async fn start_broker(config: &StandaloneConfig) -> anyhow::Result<(ManagedBroker, BrokerOrigin)> {
    let node = node(config)?;
    std::fs::create_dir_all(&node.dir).with_context(|| format!("Failed to create {}", node.dir.display()))?;
    let tools = Tools::find()?;
    let marker = node.dir.display().to_string();
    let started = tokio::task::spawn_blocking(move || -> anyhow::Result<(ServerProcess, BrokerOrigin)> {
        let name = "Apache Kafka (standalone)";
        if let Some(mut leftover) = ServerProcess::find_leftover(name, &node.pidfile(), &marker, &node.log_file()) {
            if node.is_running_as(&leftover, ADOPTION_PROBE) {
                tracing::info!(pid = leftover.pid(), "adopted the broker a previous standalone run left running");
                return Ok((leftover, BrokerOrigin::Adopted));
            }
            tracing::warn!(
                pid = leftover.pid(),
                "stopping the broker a previous standalone run left behind (another configuration, or not answering)"
            );
            leftover.kill();
        }
        for (port, setting) in [(node.port, "standalone.broker-port"), (node.controller_port, "standalone.controller-port")]
        {
            if port_in_use(port) {
                return Err(tally_servers::ServerError::PortTaken {
                    port,
                    hint: format!(
                        "standalone runs its own broker and will not use another one; stop that process or choose another port ({setting})"
                    ),
                }
                .into());
            }
        }
        Ok((node.start(&tools, crate::services::BROKER_START_TIMEOUT)?, BrokerOrigin::Started))
    })
    .await
    .context("Failed to start the broker")??;
    let (process, origin) = started;
    let log = process.log().to_path_buf();
    Ok((ManagedBroker { process: Arc::new(Mutex::new(process)), log }, origin))
}
