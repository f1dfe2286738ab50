//! The services of a test run under a supervisor, as systemd or Kubernetes
//! runs them: a service that exits (a start fails while its broker or store
//! is down; a counter whose group-instance-id another member took stops) is
//! started again, and a start that fails is tried again on the next round.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::TallyProcess;

/// Named `tally` processes of one configuration.
pub struct Supervised {
    config: PathBuf,
    /// The services by subcommand, in start order.
    pub running: Vec<(&'static str, TallyProcess)>,
    /// Every restart the supervisor made, by service.
    pub restarts: Vec<&'static str>,
}

impl Supervised {
    /// Starts `services` (subcommands of `tally`) with `config`.
    pub fn start(config: &Path, services: &[&'static str]) -> Self {
        let running = services.iter().map(|s| (*s, TallyProcess::spawn(config, s))).collect();
        Self::adopt(config, running)
    }

    /// Supervises processes already started with `config`.
    pub fn adopt(config: &Path, running: Vec<(&'static str, TallyProcess)>) -> Self {
        Self { config: config.to_owned(), running, restarts: Vec::new() }
    }

    /// Starts again every service that exited; one whose start fails stays
    /// exited until the next call.
    pub fn restart_exited(&mut self) {
        for (name, process) in &mut self.running {
            if !process.exited() {
                continue;
            }
            match TallyProcess::try_spawn(&self.config, name) {
                Ok(started) => {
                    eprintln!("supervisor: {name} exited; started it again");
                    *process = started;
                    self.restarts.push(name);
                }
                Err(e) => eprintln!("supervisor: {name} exited and did not start again ({e}); trying again"),
            }
        }
    }

    /// `kill -9` of `name`, then a new start as its supervisor makes it: a
    /// start that fails (the store it connects to at start is still coming
    /// back from a fault of its own) leaves the service exited, and
    /// [`Self::restart_exited`] tries again on its next round.
    pub fn kill_and_restart(&mut self, name: &str) {
        let (name, process) = self.running.iter_mut().find(|(n, _)| *n == name).expect("a supervised service");
        process.kill9_in_place();
        match TallyProcess::try_spawn(&self.config, name) {
            Ok(started) => *process = started,
            Err(e) => eprintln!("supervisor: {name} killed and did not start again ({e}); trying again"),
        }
    }

    /// The process of `name`.
    pub fn get(&self, name: &str) -> &TallyProcess {
        &self.running.iter().find(|(n, _)| *n == name).expect("a supervised service").1
    }
}

/// Calls [`Supervised::restart_exited`] every 500 ms on its own thread until
/// `stop` is set or the test dropped `services` (a test that panics drops
/// them, and with them kills their processes: the supervisor must not keep
/// them alive, or start new ones, past the test).
pub fn supervise(services: &Arc<Mutex<Supervised>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let services = Arc::downgrade(services);
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Some(services) = services.upgrade() else { return };
            services.lock().unwrap_or_else(std::sync::PoisonError::into_inner).restart_exited();
            drop(services);
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}
