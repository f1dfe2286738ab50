//! `tally standalone` as a newcomer runs it: post events, query counts,
//! `kill -9`, restart, and nothing acknowledged is lost or counted twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TallyProcess;
use serde_json::{json, Value};
use tally_testkit::bounded;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let (port, controller_port) = (tally_testkit::process::free_port(), tally_testkit::process::free_port());
    let text = format!(
        r#"
[log]
level = "info,librdkafka=warn,rdkafka=warn"

[standalone]
data-dir = "{data}"
broker-port = {port}
controller-port = {controller_port}
admin-listen = "127.0.0.1:0"

[ingest]
listen = "127.0.0.1:0"

[query]
listen = "127.0.0.1:0"
fresh-for = "100ms"

[counter]
flush-interval = "200ms"

[kafka.topics]
views-partitions = 4
counts-partitions = 4
"#,
        data = dir.join("data").display(),
    );
    let path = dir.join("tally.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn post(http: &reqwest::Client, ingest: &str, events: Vec<Value>) {
    let response = http.post(format!("http://{ingest}/v1/events")).json(&Value::from(events)).send().await.unwrap();
    assert_eq!(response.status(), 202);
}

async fn views(http: &reqwest::Client, query: &str, video: &str) -> i64 {
    let body: Value =
        http.get(format!("http://{query}/v1/videos/{video}/views")).send().await.unwrap().json().await.unwrap();
    body["views"].as_i64().unwrap()
}

async fn wait_for(http: &reqwest::Client, query: &str, expected: &BTreeMap<&str, i64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut got = BTreeMap::new();
        for video in expected.keys() {
            got.insert(*video, views(http, query, video).await);
        }
        if &got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "counts did not converge: got {got:?}, want {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills the broker a killed standalone process leaves behind, should the test fail before restarting it.
struct BrokerReaper(std::path::PathBuf);

impl Drop for BrokerReaper {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("data/broker/kafka.pid")) {
            let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

/// The pid in the broker's pidfile.
fn broker_pid(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("data/broker/kafka.pid")).expect("broker pidfile").trim().to_owned()
}

fn batch(video: &str, ids: std::ops::Range<u32>) -> Vec<Value> {
    ids.map(|i| json!({"video_id": video, "event_id": format!("{video}-{i}")})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_views_become_queryable_and_survive_kill_9_and_restart() {
    bounded(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let _reaper = BrokerReaper(dir.path().to_owned());
        let config = write_config(dir.path());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let tally = TallyProcess::spawn(&config, "standalone");
        let (ingest, query) = (tally.address_of("ingest"), tally.address_of("query"));
        post(&http, &ingest, batch("trailer", 0..300)).await;
        post(&http, &ingest, batch("trailer", 100..200)).await; // client retries: counted once
        post(&http, &ingest, batch("short", 0..7)).await;
        let mut expected = BTreeMap::from([("trailer", 300), ("short", 7), ("nobody", 0)]);
        wait_for(&http, &query, &expected, Duration::from_secs(60)).await;

        // Acknowledged just before the crash: maybe counted, maybe not yet; never lost.
        post(&http, &ingest, batch("trailer", 300..500)).await;
        post(&http, &ingest, batch("late-night", 0..50)).await;
        let broker = broker_pid(dir.path());
        tally.kill9();
        expected.insert("trailer", 500);
        expected.insert("late-night", 50);

        let tally = TallyProcess::spawn(&config, "standalone");
        let (ingest, query) = (tally.address_of("ingest"), tally.address_of("query"));
        assert_eq!(broker_pid(dir.path()), broker, "the broker the killed run left running was adopted, not restarted");
        let broker_line = tally.next_line_containing("broker", Duration::from_secs(10)).expect("the broker line");
        assert!(broker_line.contains("adopted"), "{broker_line}");
        post(&http, &ingest, batch("short", 5..10)).await; // 5..7 are resends
        expected.insert("short", 10);
        wait_for(&http, &query, &expected, Duration::from_secs(90)).await;
        let status = tally.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful stop: {status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_refuses_a_broker_port_held_by_another_process() {
    bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        // Someone else listens on the broker port (another broker, say).
        let text = std::fs::read_to_string(&config).unwrap();
        let port: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("broker-port = "))
            .and_then(|p| p.trim().parse().ok())
            .expect("broker-port in the config");
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the broker port");
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
                .arg("--config")
                .arg(&config)
                .arg("standalone")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run tally standalone")
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "standalone must not start on a foreign broker: {stderr}");
        assert!(
            stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")),
            "the error names the port: {stderr}"
        );
        assert!(!dir.path().join("data/broker/kafka.pid").exists(), "no broker of its own was left running");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_stops_with_an_error_when_its_broker_exits() {
    bounded(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let _reaper = BrokerReaper(dir.path().to_owned());
        let config = write_config(dir.path());
        let mut tally = TallyProcess::spawn(&config, "standalone");
        let broker_pid = std::fs::read_to_string(dir.path().join("data/broker/kafka.pid")).expect("broker pidfile");
        let _ = std::process::Command::new("kill").args(["-9", broker_pid.trim()]).status();
        let status = tokio::task::spawn_blocking(move || {
            let status = tally.wait(Duration::from_secs(60));
            (status, tally)
        })
        .await
        .unwrap()
        .0;
        assert!(!status.success(), "standalone must not run on without its broker: {status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_broker_with_another_configuration_is_replaced_and_its_data_kept() {
    bounded(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let _reaper = BrokerReaper(dir.path().to_owned());
        let config = write_config(dir.path());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let tally = TallyProcess::spawn(&config, "standalone");
        let (ingest, query) = (tally.address_of("ingest"), tally.address_of("query"));
        post(&http, &ingest, batch("pilot", 0..40)).await;
        let expected = BTreeMap::from([("pilot", 40)]);
        wait_for(&http, &query, &expected, Duration::from_secs(60)).await;
        let leftover = broker_pid(dir.path());
        tally.kill9();

        // The next run asks for another broker heap: the leftover is not what it would start.
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("[standalone]\n", "[standalone]\nbroker-heap = \"600m\"\n")).unwrap();
        let tally = TallyProcess::spawn(&config, "standalone");
        let replacement = broker_pid(dir.path());
        assert_ne!(replacement, leftover, "a broker of another configuration was adopted");
        assert!(!std::path::Path::new(&format!("/proc/{leftover}")).exists(), "the leftover broker still runs");
        let broker_line = tally.next_line_containing("broker", Duration::from_secs(10)).expect("the broker line");
        assert!(!broker_line.contains("adopted"), "{broker_line}");
        let cmdline = std::fs::read(format!("/proc/{replacement}/cmdline")).expect("the new broker runs");
        assert!(String::from_utf8_lossy(&cmdline).contains("-Xmx600m"), "the new broker runs the new heap");
        wait_for(&http, &tally.address_of("query"), &expected, Duration::from_secs(60)).await;
        assert!(tally.terminate(Duration::from_secs(30)).success());
    })
    .await;
}
