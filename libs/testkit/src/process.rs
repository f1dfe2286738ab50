//! Locating binaries, choosing free ports, waiting for servers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().expect("local address of an ephemeral listener").port()
}

/// Finds `name`: the `env_var` override, then `PATH`, then Tally's tool cache
/// (`~/.cache/tally/tools/bin`, where `scripts/setup` installs).
pub fn find_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tally/tools/bin").join(name));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain(cache)
        .chain(["/usr/bin", "/usr/sbin"].iter().map(|dir| PathBuf::from(dir).join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found (set {env_var}, or run `scripts/setup` to install it); this test needs the real server")
        })
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
