//! One server process: started as a child with its output in a log file and
//! its pid in a pidfile, stopped within a bound; found again after its owner
//! died, to be stopped or adopted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{log_tail, ServerError};

/// How this process holds the server.
#[derive(Debug)]
enum Handle {
    /// Started here: waited for, so its exit status is known.
    Child(Child),
    /// Started by an earlier owner that died: the server was re-parented to
    /// init, so only whether it still runs is known.
    Adopted {
        /// Its process id.
        pid: u32,
        /// What its command line contains (its data directory): a pid
        /// reused by another program after the server exited is not it.
        marker: String,
    },
}

/// A running (or exited) server process.
#[derive(Debug)]
pub struct ServerProcess {
    /// What it is, for messages (`Apache Kafka node 1`).
    name: String,
    handle: Handle,
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
        let handle = Handle::Child(child);
        Ok(Self { name: name.into(), handle, log: log.to_path_buf(), log_start, pidfile: pidfile.to_path_buf() })
    }

    /// The server `pidfile` names, if it still runs with `marker` (its data
    /// directory) on its command line: one an owner that was killed left
    /// behind. The caller decides whether to use it or [`Self::kill`] it.
    pub fn find_leftover(name: &str, pidfile: &Path, marker: &str, log: &Path) -> Option<Self> {
        let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
        if !command_line(pid).is_some_and(|cmdline| cmdline.contains(marker)) {
            return None;
        }
        let log_start = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
        Some(Self {
            name: name.into(),
            handle: Handle::Adopted { pid, marker: marker.to_owned() },
            log: log.to_path_buf(),
            log_start,
            pidfile: pidfile.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        match &self.handle {
            Handle::Child(child) => child.id(),
            Handle::Adopted { pid, .. } => *pid,
        }
    }

    /// Its command line, arguments separated by spaces, while it runs.
    pub fn command_line(&self) -> Option<String> {
        command_line(self.pid())
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How it ended, once it exited: the exit status of a child; for an
    /// adopted server, whose status went to init, only that it exited.
    pub fn exit_status(&mut self) -> Option<String> {
        match &mut self.handle {
            Handle::Child(child) => child.try_wait().ok().flatten().map(|status| status.to_string()),
            Handle::Adopted { pid, marker } => {
                let running = command_line(*pid).is_some_and(|cmdline| cmdline.contains(marker.as_str()));
                (!running).then(|| "exited (adopted: exit status unknown)".to_owned())
            }
        }
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
                    status,
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

    /// Kills it at once (SIGKILL), as a crash would, and waits (an adopted
    /// server up to 10 s) until it is gone.
    pub fn kill(&mut self) {
        match &mut self.handle {
            Handle::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Handle::Adopted { pid, .. } => kill_and_wait_gone(*pid),
        }
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

/// The command line of process `pid`, arguments joined by spaces.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Whether process `pid` exists. A killed server is gone only once init
/// reaped it: its leader thread turns zombie while other threads still exit
/// and hold its sockets.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
    let _ = std::fs::remove_file(pidfile);
    let Ok(pid) = pid.trim().parse::<u32>() else { return false };
    if !command_line(pid).is_some_and(|cmdline| cmdline.contains(marker)) {
        return false;
    }
    tracing::warn!(pid, marker, "stopping a server left behind by an earlier run");
    kill_and_wait_gone(pid);
    true
}

/// SIGKILL to `pid`, a process that is not our child, then waits (up to
/// 10 s) until init has reaped it.
fn kill_and_wait_gone(pid: u32) {
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `sleep 60` as an orphan (its parent shell exits at once) whose
    /// command line carries `marker`, its pid in `pidfile`: a server whose
    /// owner was killed.
    fn orphan(marker: &str, pidfile: &Path) {
        let script = format!("(exec -a 'leftover {marker}' sleep 60 & echo $! > '{}')", pidfile.display());
        let status = Command::new("bash").args(["-c", &script]).status().expect("bash");
        assert!(status.success());
        // The orphan may still be in its execve, whose command line reads
        // empty for a moment: wait until it runs as `leftover`.
        let pid: u32 = std::fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !command_line(pid).is_some_and(|c| c.starts_with("leftover ")) {
            assert!(Instant::now() < deadline, "the orphan never ran: {:?}", command_line(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_leftover_is_found_only_by_its_pidfile_and_marker_and_can_be_killed() {
        let dir = tempfile::tempdir().unwrap();
        let (pidfile, log) = (dir.path().join("server.pid"), dir.path().join("server.log"));
        let marker = dir.path().join("data").display().to_string();
        orphan(&marker, &pidfile);
        assert!(ServerProcess::find_leftover("server", &pidfile, "/elsewhere/data", &log).is_none());
        let mut leftover = ServerProcess::find_leftover("server", &pidfile, &marker, &log).expect("found");
        assert!(leftover.is_running(), "an adopted leftover runs until killed");
        assert!(leftover.command_line().is_some_and(|c| c.contains(&marker)));
        let pid = leftover.pid();
        leftover.kill();
        assert!(leftover.exit_status().is_some(), "a killed leftover has exited");
        assert!(!pidfile.exists(), "its pidfile is removed");
        assert!(command_line(pid).is_none_or(|c| !c.contains(&marker)), "the process is gone");
    }

    #[test]
    fn a_missing_or_foreign_pidfile_names_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let (pidfile, log) = (dir.path().join("server.pid"), dir.path().join("server.log"));
        assert!(ServerProcess::find_leftover("server", &pidfile, "data", &log).is_none());
        // Our own pid: a running program without the marker on its command line.
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert!(ServerProcess::find_leftover("server", &pidfile, "no-such-marker-7f3a", &log).is_none());
    }
}
