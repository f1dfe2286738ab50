//! Directories of servers started by tests, and reaping the servers of test
//! processes that were killed (a test over its time bound is killed by the
//! runner; its servers' JVMs would otherwise run on).
//!
//! Every server lives in a directory under `$TMPDIR/tally-test-servers/` with
//! an `owner.pid` file naming the test process. Before a test starts a server
//! it stops the servers of owners that no longer exist and removes their
//! directories. A directory kept for its logs (a failed test) is marked
//! `kept` and only its servers are stopped.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A server's directory; removed when dropped, kept (and its path printed)
/// when dropped during a panic, so the logs of a failed test survive.
pub struct ServerDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl ServerDir {
    /// A fresh directory `<root>/<prefix>-<random>` owned by this process,
    /// after reaping the leftovers of dead owners.
    pub fn create(prefix: &str) -> Self {
        let root = root();
        std::fs::create_dir_all(&root).expect("create the test servers' root directory");
        reap_orphans(&root);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&root)
            .expect("create a server directory");
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string()).expect("write owner.pid");
        let path = dir.path().to_path_buf();
        Self { dir: Some(dir), path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let _ = std::fs::write(dir.path().join("kept"), "");
                eprintln!("test failed: server logs kept in {}", dir.keep().display());
            }
        }
    }
}

/// `$TMPDIR/tally-test-servers`.
pub fn root() -> PathBuf {
    std::env::temp_dir().join("tally-test-servers")
}

/// Stops the servers of owners that are gone and removes their directories.
pub fn reap_orphans(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for dir in entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()) {
        let Ok(owner) = std::fs::read_to_string(dir.join("owner.pid")) else { continue };
        if Path::new(&format!("/proc/{}", owner.trim())).exists() {
            continue;
        }
        let marker = dir.display().to_string();
        for pidfile in pidfiles(&dir) {
            tally_servers::process::kill_leftover(&pidfile, &marker);
        }
        if !dir.join("kept").exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// `*.pid` files in `dir` and its direct subdirectories (cluster nodes).
fn pidfiles(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut visit = |d: &Path| {
        for path in std::fs::read_dir(d).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "pid") && !path.ends_with("owner.pid") {
                found.push(path);
            }
        }
    };
    visit(dir);
    for sub in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).map(|e| e.path()) {
        if sub.is_dir() {
            visit(&sub);
        }
    }
    found
}
