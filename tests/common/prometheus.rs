//! A real Prometheus server (Debian's, installed by `scripts/setup`) for a
//! test: scraping the given targets every second and, optionally, evaluating
//! the repository's rule files every second. Killed on drop.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_testkit::process::{find_binary, free_port, wait_for_port};

/// Whether `GET /-/ready` answers 200.
fn is_ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).is_ok() && status.ends_with(b" 200")
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API address.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in `dir` with one static scrape job per
    /// `(job, target)` and `rule_files` (absolute paths) loaded.
    pub fn start(dir: &Path, jobs: &[(&str, &str)], rule_files: &[&Path]) -> Self {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n",
        );
        for file in rule_files {
            config.push_str(&format!("  - {}\n", file.display()));
        }
        if rule_files.is_empty() {
            config.push_str("  []\n");
        }
        config.push_str("scrape_configs:\n");
        for (job, target) in jobs {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(find_binary("prometheus", "TALLY_PROMETHEUS_BIN"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        assert!(wait_for_port(addr, Duration::from_secs(20)), "prometheus listens on {addr}");
        // It listens before it has opened its storage and loaded its rules,
        // and answers queries with a plain-text 503 until then.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_ready(addr) {
            assert!(Instant::now() < deadline, "prometheus at {addr} not ready within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, addr }
    }

    /// The answer to an instant query.
    pub async fn query(&self, http: &reqwest::Client, expr: &str) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("http://{}/api/v1/query", self.addr), &[("query", expr)])
            .expect("query URL");
        http.get(url).send().await.expect("prometheus answers").json().await.expect("JSON")
    }

    /// The alerts in `state` (pending, firing) named `name`, as Prometheus
    /// reports them (`/api/v1/alerts`).
    pub async fn alerts(&self, http: &reqwest::Client, name: &str, state: &str) -> Vec<Value> {
        let answer: Value = http
            .get(format!("http://{}/api/v1/alerts", self.addr))
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("JSON");
        answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == state)
            .cloned()
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
