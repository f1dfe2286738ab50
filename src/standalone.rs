//! `tally standalone`: a managed tansu broker (SQLite engine, data in the
//! data directory, so `kill -9` loses nothing) plus every service in this
//! process, sharing one admin port and an in-process cache unless Redis is
//! configured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use crate::config::{StandaloneConfig, StoreConfig, TallyConfig};

/// The broker child process; killed when dropped.
pub struct ManagedBroker {
    child: Child,
    pidfile: PathBuf,
}

impl ManagedBroker {
    /// Stops the broker (SIGKILL: it keeps its data in SQLite, and tansu may
    /// ignore SIGTERM while busy).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// Adjusts `config` for one process on one machine.
pub fn prepare(config: &mut TallyConfig) {
    let s = &config.standalone;
    config.kafka.brokers = format!("127.0.0.1:{}", s.broker_port);
    // tansu 0.6 crashes on an idempotent producer's epoch bump (see KafkaConfig::idempotence).
    config.kafka.idempotence = false;
    // One member per group: after a crash, rejoin quickly instead of waiting 45 s for the old session.
    for (key, value) in [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "1000")] {
        config.kafka.consumer_properties.entry(key.into()).or_insert_with(|| value.into());
    }
    // One member per group, so an empty assignment is always tansu's stuck-leader case.
    config.kafka.rejoin_when_unassigned.get_or_insert(Duration::from_secs(10));
    // Successive crashes can leave dead members holding partitions (see KafkaConfig).
    config.kafka.rejoin_when_partition_stalled.get_or_insert(Duration::from_secs(15));
    if config.archiver.dir == tally_reconciler::ArchiverConfig::default().dir {
        config.archiver.dir = s.data_dir.join("archive");
    }
    if config.store == StoreConfig::default() {
        config.store.sqlite_path = s.data_dir.join("counts.db");
    }
}

fn tansu_binary(config: &StandaloneConfig) -> anyhow::Result<PathBuf> {
    if !config.broker_bin.is_empty() {
        return Ok(PathBuf::from(&config.broker_bin));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"));
    let cached = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tally/tools/bin/tansu"));
    on_path.chain(cached).find(|p| p.is_file()).context(
        "the tansu broker is not installed: run `scripts/setup` once (it builds tansu into ~/.cache/tally/tools), \
         or set standalone.broker-bin",
    )
}

/// A broker left running by a standalone process that was killed: stop it,
/// so this one can own the port and the data.
fn stop_leftover(pidfile: &Path) {
    let Ok(pid) = std::fs::read_to_string(pidfile) else { return };
    let pid = pid.trim();
    let is_tansu = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("tansu"))
        .unwrap_or(false);
    if is_tansu {
        tracing::warn!(pid, "stopping the broker a previous standalone run left behind");
        let _ = std::process::Command::new("kill").args(["-9", pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

/// Starts tansu on 127.0.0.1 with its data under the data directory.
pub async fn start_broker(config: &StandaloneConfig) -> anyhow::Result<ManagedBroker> {
    let dir = config.data_dir.join("broker");
    std::fs::create_dir_all(&dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    let pidfile = dir.join("tansu.pid");
    stop_leftover(&pidfile);
    let binary = tansu_binary(config)?;
    let url = format!("tcp://127.0.0.1:{}", config.broker_port);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log"))?;
    let child = Command::new(&binary)
        .current_dir(&dir)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db", "--cluster-id", "tally-standalone"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("Failed to start {}", binary.display()))?;
    if let Some(pid) = child.id() {
        std::fs::write(&pidfile, pid.to_string())?;
    }
    let mut broker = ManagedBroker { child, pidfile };
    let deadline = Instant::now() + crate::services::BROKER_START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", config.broker_port)).await.is_ok() {
            return Ok(broker);
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            bail!("the broker exited at start ({status}); see {}", dir.join("broker.log").display());
        }
        if Instant::now() > deadline {
            broker.stop().await;
            bail!("the broker did not listen on port {} within 30 s", config.broker_port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
