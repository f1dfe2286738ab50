//! Cross-service test helpers: the real `tally` binary as a child process,
//! configured by a generated file, and a producer of views records.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_kafka::KafkaConfig;
use tally_model::{wire, EventId, PartitionKey, SaltPolicy, SaltingConfig, VideoId, ViewEvent};

/// Writes a tally.toml for `kafka` plus extra TOML `sections`.
pub fn write_config(dir: &Path, kafka: &KafkaConfig, sections: &str) -> PathBuf {
    let t = &kafka.topics;
    let text = format!(
        r#"
[log]
level = "info,librdkafka=warn,rdkafka=warn"

[shutdown]
drain-timeout = "10s"

[kafka]
brokers = "{brokers}"
idempotence = false
consumer-properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }}

[kafka.topics]
views = "{views}"
counts = "{counts}"
views-dlq = "{views_dlq}"
counts-dlq = "{counts_dlq}"
views-partitions = {vp}
counts-partitions = {cp}

{sections}
"#,
        brokers = kafka.brokers,
        views = t.views,
        counts = t.counts,
        views_dlq = t.views_dlq,
        counts_dlq = t.counts_dlq,
        vp = t.views_partitions,
        cp = t.counts_partitions,
    );
    let path = dir.join("tally.toml");
    std::fs::write(&path, text).expect("write tally.toml");
    path
}

/// A `tally` child process.
pub struct TallyProcess {
    child: Child,
    /// Lines the process printed on stdout, as they come.
    lines: mpsc::Receiver<String>,
    /// The admin address it announced.
    pub admin: String,
}

impl TallyProcess {
    /// Runs `tally --config <config> <command>` and waits for its admin URL.
    pub fn spawn(config: &Path, command: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("--config")
            .arg(config)
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("tally announced its admin URL");
            if let Some(rest) = line.split("admin http://").nth(1) {
                break rest.trim_end_matches("/metrics").to_owned();
            }
        };
        Self { child, lines: rx, admin }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Produces views records the way the gateway does, remembering what a
/// correct count must be.
pub struct ViewsProducer {
    producer: FutureProducer,
    topic: String,
    policy: SaltPolicy,
    /// Distinct `(video, event id)` per video: the exact expected totals.
    pub expected: BTreeMap<String, i64>,
    /// Records produced (duplicates included).
    pub produced: u64,
}

impl ViewsProducer {
    /// A producer for `kafka`'s views topic; `hot` videos are salted.
    pub fn new(kafka: &KafkaConfig, hot: &[&str]) -> Self {
        let producer = tally_kafka::clients::base_config(kafka, "test-views-producer")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        let salting =
            SaltingConfig { hot_videos: hot.iter().map(|v| (*v).to_owned()).collect(), ..SaltingConfig::default() };
        Self {
            producer,
            topic: kafka.topics.views.clone(),
            policy: SaltPolicy::new(&salting).expect("salting"),
            expected: BTreeMap::new(),
            produced: 0,
        }
    }

    /// Produces one batch of `(video, event id, ts, received)` and waits for
    /// every acknowledgement. `new_view` says which ones are new views (the
    /// others are resends within the dedup window).
    pub async fn send(&mut self, events: &[(String, String, i64, i64, bool)]) {
        let mut deliveries = Vec::with_capacity(events.len());
        for (video, id, ts_ms, received_ms, new_view) in events {
            let event = ViewEvent {
                video_id: VideoId::parse(video).expect("video id"),
                ts_ms: *ts_ms,
                event_id: EventId::parse(id).expect("event id"),
                viewer_id: None,
                attributes: None,
                received_ms: *received_ms,
            };
            let salt = self.policy.salt_for(&event, self.policy.is_configured_hot(video));
            let key = PartitionKey::new(video, salt);
            let mut payload = Vec::new();
            wire::encode(&event, salt, &mut payload);
            let record = FutureRecord::to(&self.topic).key(key.as_bytes()).payload(&payload);
            deliveries.push(self.producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
            if *new_view {
                *self.expected.entry(video.clone()).or_default() += 1;
            }
        }
        for delivery in deliveries {
            delivery.await.expect("delivery").map_err(|(e, _)| e).expect("acknowledged");
        }
        self.produced += events.len() as u64;
    }

    /// Produces raw bytes (poison) with `key`.
    pub async fn send_raw(&mut self, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue")
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("ack");
    }
}

/// A deterministic little generator: zipf-like videos, some resends.
pub struct Load {
    state: u64,
    next_id: u64,
    sent: Vec<(String, String, i64)>,
}

impl Load {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1, next_id: 0, sent: Vec::new() }
    }

    /// The next pseudo-random number.
    pub fn rand(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `n` events at `now_ms`; about `resend_percent` of them resend an earlier event.
    pub fn batch(&mut self, n: usize, now_ms: i64, resend_percent: u64) -> Vec<(String, String, i64, i64, bool)> {
        (0..n)
            .map(|_| {
                if !self.sent.is_empty() && self.rand() % 100 < resend_percent {
                    let index = (self.rand() as usize) % self.sent.len();
                    let (video, id, ts) = self.sent[index].clone();
                    (video, id, ts, now_ms, false)
                } else {
                    // Roughly zipf: video k with probability ~ 1/(k+1).
                    let r = self.rand() % 1000;
                    let video = format!("video-{}", (1000 / (r + 1)).min(40));
                    self.next_id += 1;
                    let id = format!("evt-{}", self.next_id);
                    let ts = now_ms - (self.rand() % 120_000) as i64;
                    self.sent.push((video.clone(), id.clone(), ts));
                    (video, id, ts, now_ms, true)
                }
            })
            .collect()
    }
}
