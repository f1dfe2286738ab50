//! One server child process: started with its output in a log file and its
//! pid in a pidfile, stopped within a bound, found again after its owner died.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{log_tail, ServerError};

/// A running (or exited) server child.
#[derive(Debug)]
pub struct ServerProcess {
    /// What it is, for messages (`Apache Kafka node 1`).
    name: String,
    child: Child,
    log: PathBuf,
    /// Length of the log when this process started: a restarted server
    /// appends to the log of its earlier life, whose lines must not count.
    log_start: usize,
    pidfile: PathBuf,
}

impl ServerProcess {
    /// Starts `command` with stdout and stderr appended to `log` and its pid
    /// written to `pidfile`.
    pub fn spawn(name: &str, mut command: Command, log: &Path, pidfile: &Path) -> Result<Self, ServerError> {
        let io = |what| move |source| ServerError::Io { what, path: log.to_path_buf(), source };
        let log_start = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(io("open log"))?;
        let err = out.try_clone().map_err(io("open log"))?;
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|source| ServerError::Io {
            what: "start",
            path: PathBuf::from(command.get_program()),
            source,
        })?;
        std::fs::write(pidfile, child.id().to_string()).map_err(|source| ServerError::Io {
            what: "write pidfile",
            path: pidfile.to_path_buf(),
            source,
        })?;
        Ok(Self { name: name.into(), child, log: log.to_path_buf(), log_start, pidfile: pidfile.to_path_buf() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status once it exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `line` appears in the log, failing when the process exits
    /// first or `limit` passes.
    pub fn wait_for_log_line(&mut self, line: &str, limit: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            if String::from_utf8_lossy(text.get(self.log_start..).unwrap_or_default()).contains(line) {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(ServerError::ExitedAtStart {
                    server: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, 30),
                });
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(limit));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The error for a server that did not get ready within `limit`.
    pub fn not_ready(&self, limit: Duration) -> ServerError {
        ServerError::NotReady { server: self.name.clone(), limit, log: self.log.clone(), tail: log_tail(&self.log, 30) }
    }

    /// Asks it to stop (SIGTERM: Kafka moves leadership away and closes its
    /// logs cleanly, Cassandra drains) and kills it when it has not exited
    /// within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.is_running() {
            signal(self.pid(), "TERM");
            let deadline = Instant::now() + grace;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// Freezes it (SIGSTOP) until [`ServerProcess::resume`].
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}

/// Kills the server whose pid `pidfile` names if it still runs with
/// `marker` (its data directory) on its command line, as one left behind by
/// an owner that was killed; then removes the pidfile. A pid that now belongs
/// to another program is left alone. True when a server was killed.
pub fn kill_leftover(pidfile: &Path, marker: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(pidfile) else { return false };
    let pid = pid.trim().to_owned();
    let _ = std::fs::remove_file(pidfile);
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker));
    if !ours {
        return false;
    }
    tracing::warn!(pid, marker, "stopping a server left behind by an earlier run");
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether something on this machine accepts connections on `port` of 127.0.0.1.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
        || std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}
