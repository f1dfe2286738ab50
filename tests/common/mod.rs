//! Cross-service test helpers: the real `tally` binary as a child process,
//! configured by a generated file, and a producer of views records.

#![allow(dead_code)]

pub mod client;
pub mod prometheus;
pub mod query;
pub mod supervisor;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_kafka::KafkaConfig;
#[allow(unused_imports)]
pub use tally_testkit::views::{Load, ViewsProducer};

/// Group settings of the `[kafka]` section for classic groups (the default
/// protocol): a killed member's partitions move to the others after 6 s (the
/// broker's minimum), not 45 s.
pub const CLASSIC_SHORT_SESSIONS: &str =
    r#"consumer-properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }"#;

/// Writes a tally.toml for `kafka` plus extra TOML `sections`. The consumer
/// groups of counter, writer and archiver are named after the test's views
/// topic: the broker may be shared by tests running at once.
pub fn write_config(dir: &Path, kafka: &KafkaConfig, sections: &str) -> PathBuf {
    write_config_with_groups(dir, kafka, CLASSIC_SHORT_SESSIONS, sections)
}

/// The consumer group [`write_config`] gives `service` (counter, writer, archiver).
pub fn group_id(service: &str, kafka: &KafkaConfig) -> String {
    format!("tally-{service}-{}", kafka.topics.views)
}

/// Waits, off the async threads, until the counter's group (as
/// [`write_config`] names it) has committed the whole views topic and the
/// writer's the whole counts topic: nothing more will be counted or
/// applied. False when `limit` passed first.
pub async fn pipeline_quiet(kafka: &KafkaConfig, limit: Duration) -> bool {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let (counter, writer) = (group_id("counter", &kafka), group_id("writer", &kafka));
        let groups = [(counter.as_str(), kafka.topics.views.as_str()), (writer.as_str(), kafka.topics.counts.as_str())];
        tally_testkit::topic::wait_quiet(&kafka, &groups, limit)
    })
    .await
    .expect("the quiet check panicked")
}

/// [`write_config`] with `group_settings` as the group lines of the
/// `[kafka]` section (protocol, strategy, session) instead of
/// [`CLASSIC_SHORT_SESSIONS`].
pub fn write_config_with_groups(dir: &Path, kafka: &KafkaConfig, group_settings: &str, sections: &str) -> PathBuf {
    let mut sections = sections.to_owned();
    for service in ["counter", "writer", "archiver"] {
        let header = format!("[{service}]\n");
        let group = format!("group-id = \"{}\"\n", group_id(service, kafka));
        match sections.find(&header).filter(|at| *at == 0 || sections[..*at].ends_with('\n')) {
            Some(at) => sections.insert_str(at + header.len(), &group),
            None => sections.push_str(&format!("\n{header}{group}")),
        }
    }
    let t = &kafka.topics;
    let text = format!(
        r#"
[log]
level = "info,librdkafka=warn,rdkafka=warn"

[shutdown]
drain-timeout = "10s"

[kafka]
brokers = "{brokers}"
{group_settings}

[kafka.topics]
views = "{views}"
counts = "{counts}"
views-dlq = "{views_dlq}"
counts-dlq = "{counts_dlq}"
topology = "{topology}"
views-partitions = {vp}
counts-partitions = {cp}

{sections}
"#,
        brokers = kafka.brokers,
        views = t.views,
        counts = t.counts,
        views_dlq = t.views_dlq,
        counts_dlq = t.counts_dlq,
        topology = t.topology,
        vp = t.views_partitions,
        cp = t.counts_partitions,
    );
    let path = dir.join("tally.toml");
    std::fs::write(&path, text).expect("write tally.toml");
    path
}

/// Moves the stopped writer group's committed offsets of the counts topic
/// back to 0, so a restarted writer replays `tally.counts` from the start.
pub fn rewind_writer_group(kafka: &KafkaConfig, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group_id("writer", kafka))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(&kafka.topics.counts, partition, Offset::Offset(0)).unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

/// Configuration sections for a counter (flushing every 200 ms) and a writer
/// over the embedded store at `db`; `writer_extra` adds lines to `[writer]`.
pub fn counter_writer_sections(db: &Path, writer_extra: &str) -> String {
    format!(
        "[counter]\nadmin-listen = \"127.0.0.1:0\"\nflush-interval = \"200ms\"\n\n[writer]\nadmin-listen = \"127.0.0.1:0\"\n{writer_extra}\n\n[store]\nsqlite-path = \"{}\"\n",
        db.display()
    )
}

/// Configuration sections for the pipeline as separate processes (gateway,
/// counter, writer, query) over the embedded store in `dir` and Redis at
/// `redis_url`; the gateway and query listen on the given ports (0: any),
/// `ingest_extra` adds lines to `[ingest]`.
pub fn process_sections(dir: &Path, redis_url: &str, ingest_port: u16, query_port: u16, ingest_extra: &str) -> String {
    let store = format!("[store]\nsqlite-path = \"{}\"\n", dir.join("counts.db").display());
    process_sections_with_store(redis_url, ingest_port, query_port, ingest_extra, &store)
}

/// [`process_sections`] with `store` as the `[store]` section(s).
pub fn process_sections_with_store(
    redis_url: &str,
    ingest_port: u16,
    query_port: u16,
    ingest_extra: &str,
    store: &str,
) -> String {
    format!(
        r#"
[ingest]
listen = "127.0.0.1:{ingest_port}"
admin-listen = "127.0.0.1:0"
{ingest_extra}

[counter]
admin-listen = "127.0.0.1:0"
flush-interval = "200ms"

[writer]
admin-listen = "127.0.0.1:0"

[query]
listen = "127.0.0.1:{query_port}"
admin-listen = "127.0.0.1:0"
fresh-for = "100ms"

{store}

[cache]
redis-url = "{redis_url}"
"#,
    )
}

/// `[store]` sections for the ScyllaDB/Cassandra store at `contact_point`
/// in a keyspace of this test's own (created by the services).
pub fn cassandra_store_sections(contact_point: &str, keyspace: &str) -> String {
    format!(
        "[store]\nbackend = \"scylla\"\n\n[store.scylla]\nnodes = [\"{contact_point}\"]\nkeyspace = \"{keyspace}\"\ncreate-schema = true\n"
    )
}

/// Runs `tally --config <config> <args>` to its end (within `limit`); returns
/// its exit status and everything it printed (stdout, then stderr).
pub fn run_to_exit(config: &Path, args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = format!("{}{}", stdout.join().expect("stdout"), stderr.join().expect("stderr"));
    (status, printed)
}

/// How long a `tally` process may take to announce its admin URL.
const ANNOUNCE_WITHIN: Duration = Duration::from_secs(120);

/// A `tally` child process.
pub struct TallyProcess {
    child: Child,
    /// Lines the process printed on stdout, as they come.
    lines: mpsc::Receiver<String>,
    /// The admin address it announced.
    pub admin: String,
    /// Lines printed up to the admin announcement.
    pub announced: Vec<String>,
}

impl TallyProcess {
    /// Runs `tally --config <config> <command>` and waits for its admin URL.
    pub fn spawn(config: &Path, command: &str) -> Self {
        Self::try_spawn(config, command).unwrap_or_else(|e| panic!("tally {command}: {e}"))
    }

    /// Like [`Self::spawn`], for callers that expect a start to fail at
    /// times (a supervisor starting a service while a dependency is down):
    /// the error says how the process ended.
    pub fn try_spawn(config: &Path, command: &str) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("--config")
            .arg(config)
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot spawn: {e}"))?;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Above standalone's 60 s for its broker to start, plus the services.
        let deadline = Instant::now() + ANNOUNCE_WITHIN;
        let mut announced = Vec::new();
        let admin = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    announced.push(line.clone());
                    let url = line.split("admin http://").nth(1).or_else(|| line.split("metrics http://").nth(1));
                    if let Some(rest) = url {
                        break rest.trim_end_matches("/metrics").to_owned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(|e| format!("cannot wait: {e}"))?;
                    return Err(format!("exited before announcing its admin URL ({status})"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("announced no admin URL within {ANNOUNCE_WITHIN:?}; killed"));
                }
            }
        };
        Ok(Self { child, lines: rx, admin, announced })
    }

    /// The `host:port` of the announced URL on the line containing `label`.
    pub fn address_of(&self, label: &str) -> String {
        let line = self
            .announced
            .iter()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no {label} line in {:?}", self.announced));
        let url = line.split("http://").nth(1).expect("a URL on the line");
        url.split('/').next().expect("host:port").to_owned()
    }

    /// The next line printed after the admin announcement that contains
    /// `needle`, waiting up to `limit`.
    pub fn next_line_containing(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let line = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        self.kill9_in_place();
    }

    /// SIGKILL, and reap, keeping the exited process (its [`Self::exited`] is then true).
    pub fn kill9_in_place(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets and its state but
    /// neither heartbeats nor counts, like a long pause, until [`Self::thaw`].
    pub fn freeze(&self) {
        let _ = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status();
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.wait(limit)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tally did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Value of an unlabelled gauge or counter in `/metrics`, if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|line| {
            line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }

    /// Waits until the unlabelled metric `name` is at least `min`.
    pub fn wait_for_metric(&self, name: &str, min: f64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.metric(name).is_some_and(|v| v >= min) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The admin server's `/metrics` text (blocking).
    pub fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        std::thread::spawn(move || reqwest::blocking_get(&url)).join().expect("metrics thread")
    }
}

impl Drop for TallyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod reqwest {
    //! A tiny blocking GET over std (the tests need no HTTP client crate for this).
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn blocking_get(url: &str) -> String {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = TcpStream::connect(host).expect("connect admin");
        write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }
}

/// Sends `size` views (a tenth of them resends) every `every` until
/// `settled()` holds, so records keep arriving on every partition while a
/// group rebalances; fails the test, saying `what` never happened, after
/// `limit`. Returns how long it took.
pub async fn feed_until(
    producer: &mut ViewsProducer,
    load: &mut Load,
    (size, every): (usize, Duration),
    limit: Duration,
    what: &str,
    mut settled: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !settled() {
        assert!(started.elapsed() < limit, "waited {limit:?} for: {what}");
        producer.send(&load.batch(size, tally_model::timestamp::now_ms(), 10)).await;
        tokio::time::sleep(every).await;
    }
    started.elapsed()
}
