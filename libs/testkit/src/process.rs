//! Locating binaries, choosing free ports, waiting for servers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The lowest port servers are given.
const LOWEST_SERVER_PORT: u16 = 10_000;

/// A free TCP port on 127.0.0.1 for a server (bound, then released for the
/// child), below the kernel's ephemeral range: a port from that range can be
/// taken as the source port of any client connection while the server is
/// down, and a server restarted on it (Kafka, Cassandra in the fault tests)
/// then fails with "Address already in use" (seen: Cassandra exiting at a
/// restart in `cassandra_chaos`).
pub fn free_port() -> u16 {
    let below = ephemeral_range_start();
    if below > LOWEST_SERVER_PORT + 1_000 {
        for _ in 0..1_000 {
            let port = rand::Rng::gen_range(&mut rand::thread_rng(), LOWEST_SERVER_PORT..below);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().expect("local address of an ephemeral listener").port()
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ports_are_free_and_below_the_ephemeral_range() {
        let below = ephemeral_range_start();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for port in &ports {
            assert!((LOWEST_SERVER_PORT..below).contains(port), "{port} is not below {below}");
            TcpListener::bind(("127.0.0.1", *port)).expect("still free");
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert!(distinct.len() > 45, "spread over the range: {ports:?}");
    }
}
