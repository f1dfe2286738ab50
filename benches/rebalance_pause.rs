//! How long counting pauses per rebalance, for each way the counters' group
//! can rebalance: eager `classic` (`range`), `cooperative-sticky`, static
//! membership (cooperative-sticky with a `group-instance-id` per counter)
//! and the `consumer` protocol (KIP-848).
//!
//! `cargo bench -p tally --bench rebalance_pause` (needs Kafka: scripts/setup).
//! A broker of its own (one KRaft node); per protocol, counter processes (the
//! release `tally` binary, flushing every 100 ms) on a 6-partition views
//! topic under steady load (about 1,000 views/s of 600 videos, uniform, so
//! every partition carries the same), cycling 1 -> 2 -> 3 counters, then a
//! restart of one of the three, then back to 1.
//!
//! The measure comes from the counts topic, not from the counters: every
//! flush is a record there, stamped by the producer when the counter emitted
//! it, naming its source partition. Under steady load each partition flushes
//! every 100 ms or so; a rebalance shows as a longer gap between two flushes
//! of the partitions it stops. Per step the pause is the longest gap of any
//! partition that ended between the step's action (a counter started or sent
//! SIGTERM) and the next step's; "stopped" counts the partitions whose longest gap exceeded
//! 500 ms, and "lost" sums their gaps beyond the steady median gap
//! (partition-seconds of counting lost). "Settled" is the time from the
//! action until every partition is owned again (polled from the counters'
//! metrics every 100 ms).
//!
//! Taking a partition over replays its dedup window from the views topic
//! (the counter's `recovery`), so what a rebalance costs grows with the
//! records in the window: `TALLY_BENCH_PREFILL` views (default 300,000,
//! 50,000 per partition) are produced before the first counter starts, so
//! every takeover replays about that much (3,000,000: 500,000 a partition,
//! a full 10-minute window at 10,000 views/s over 12 partitions).
//!
//! Other knobs: `TALLY_BENCH_PROTOCOLS` (comma-separated of `eager`,
//! `cooperative`, `static`, `consumer`; default all), `TALLY_BENCH_CYCLES`
//! (default 3), `TALLY_BENCH_TIMEOUTS` (`short`, the default: 6 s sessions
//! and 1 s heartbeats for both protocols, as in the tests and standalone;
//! `default`: librdkafka's and Apache Kafka's defaults, classic 45 s / 3 s
//! set by the client, consumer protocol 45 s / 5 s set by the broker).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{write_config_with_groups, TallyProcess, ViewsProducer, CLASSIC_SHORT_SESSIONS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::KafkaConfig;
use tally_model::counts::{self, CountsRecord};
use tally_testkit::Broker;

const PARTITIONS: i32 = 6;

/// How long each arrangement counts under load before the next step.
const HOLD: Duration = Duration::from_secs(4);

/// A gap longer than this means the partition was stopped by the rebalance
/// (steady gaps stay under 200 ms with a 100 ms flush interval).
const STOPPED: i64 = 500;

/// Views of 600 videos drawn uniformly, so that every partition carries the
/// same load and holds the same dedup window (a zipf load would put half the
/// views, and most of the takeover work, on one partition).
#[derive(Default)]
struct Uniform {
    next: u64,
}

impl Uniform {
    fn batch(&mut self, n: usize) -> Vec<(String, String, i64, i64, bool)> {
        let now = now_ms();
        (0..n)
            .map(|_| {
                self.next += 1;
                (format!("video-{}", self.next % 600), format!("evt-{}", self.next), now, now, true)
            })
            .collect()
    }
}

/// One way of running the group.
#[derive(Clone)]
struct Protocol {
    name: &'static str,
    kafka: String,
    static_members: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    JoinSecond,
    JoinThird,
    RestartOne,
    LeaveTwo,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::JoinSecond => "1 -> 2 (join)",
            Self::JoinThird => "2 -> 3 (join)",
            Self::RestartOne => "restart 1 of 3",
            Self::LeaveTwo => "3 -> 1 (2 leave)",
        }
    }
}

/// One step as it happened: wall-clock milliseconds, to compare with record timestamps.
struct Taken {
    step: Step,
    action_ms: i64,
    settled_ms: i64,
    end_ms: i64,
}

fn now_ms() -> i64 {
    tally_model::timestamp::now_ms()
}

fn protocols(short: bool) -> Vec<Protocol> {
    let classic = |strategy: &str| {
        let sessions = if short { CLASSIC_SHORT_SESSIONS } else { "" };
        format!("{sessions}\nassignment-strategy = \"{strategy}\"")
    };
    let all = vec![
        Protocol { name: "eager", kafka: classic("range"), static_members: false },
        Protocol { name: "cooperative", kafka: classic("cooperative-sticky"), static_members: false },
        Protocol { name: "static", kafka: classic("cooperative-sticky"), static_members: true },
        Protocol { name: "consumer", kafka: "group-protocol = \"consumer\"".into(), static_members: false },
    ];
    let wanted = std::env::var("TALLY_BENCH_PROTOCOLS").unwrap_or_default();
    all.into_iter().filter(|p| wanted.is_empty() || wanted.split(',').any(|w| w == p.name)).collect()
}

struct Group<'a> {
    kafka: &'a KafkaConfig,
    protocol: &'a Protocol,
    dir: &'a Path,
    counters: Vec<(TallyProcess, PathBuf)>,
}

impl Group<'_> {
    fn config(&self, index: usize) -> PathBuf {
        let dir = self.dir.join(format!("counter-{index}"));
        std::fs::create_dir_all(&dir).expect("counter dir");
        let mut counter = "[counter]\nadmin-listen = \"127.0.0.1:0\"\nflush-interval = \"100ms\"\n".to_owned();
        if self.protocol.static_members {
            counter.push_str(&format!("group-instance-id = \"counter-{index}\"\n"));
        }
        write_config_with_groups(&dir, self.kafka, &self.protocol.kafka, &counter)
    }

    fn spawn(&mut self, index: usize) -> (TallyProcess, PathBuf) {
        let config = self.config(index);
        (TallyProcess::spawn(&config, "counter"), config)
    }

    /// Waits until every counter owns a share and together they own every partition.
    fn wait_settled(&self, limit: Duration) -> i64 {
        let deadline = Instant::now() + limit;
        loop {
            let owned: Vec<f64> =
                self.counters.iter().map(|(c, _)| c.metric("tally_counter_owned_partitions").unwrap_or(0.0)).collect();
            if owned.iter().all(|o| *o >= 1.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS) {
                return now_ms();
            }
            assert!(Instant::now() < deadline, "the group did not settle within {limit:?}: {owned:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn take(&mut self, step: Step, limit: Duration) -> Taken {
        let action_ms = now_ms();
        match step {
            Step::JoinSecond | Step::JoinThird => {
                let index = self.counters.len();
                let counter = self.spawn(index);
                self.counters.push(counter);
            }
            Step::RestartOne => {
                let (process, config) = self.counters.remove(1);
                assert!(process.terminate(Duration::from_secs(60)).success(), "graceful stop");
                self.counters.insert(1, (TallyProcess::spawn(&config, "counter"), config));
            }
            Step::LeaveTwo => {
                for (process, _) in self.counters.drain(1..).rev() {
                    assert!(process.terminate(Duration::from_secs(60)).success(), "graceful stop");
                }
            }
        }
        let settled_ms = self.wait_settled(limit);
        std::thread::sleep(HOLD);
        Taken { step, action_ms, settled_ms, end_ms: now_ms() }
    }
}

/// Emit times (ms) of the flushes of each source partition, one per range.
fn flush_times(kafka: &KafkaConfig) -> BTreeMap<u32, Vec<i64>> {
    let topic = &kafka.topics.counts;
    let consumer: BaseConsumer = tally_kafka::clients::base_config(kafka, "rebalance-bench-reader")
        .set("group.id", tally_testkit::unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        remaining += high;
        list.add_partition_offset(topic, p, Offset::Beginning).expect("assign");
    }
    consumer.assign(&list).expect("assign");
    let mut seen: BTreeMap<(u32, i64, i64), i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while remaining > 0 && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
        remaining -= 1;
        let Some(at) = message.timestamp().to_millis() else { continue };
        if let Ok(CountsRecord::Chunk(chunk)) = counts::decode(message.payload().unwrap_or_default()) {
            let h = &chunk.header;
            // A range re-emitted after a takeover keeps its first emission.
            let first = seen.entry((h.source_partition, h.start, h.end)).or_insert(at);
            *first = (*first).min(at);
        }
    }
    let mut times: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for ((partition, _, _), at) in seen {
        times.entry(partition).or_default().push(at);
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    times
}

/// What one step cost.
struct Measured {
    /// Longest gap of any partition, ms.
    pause: i64,
    /// Partitions whose longest gap exceeded [`STOPPED`].
    stopped: i64,
    /// Their gaps beyond the steady median, summed: partition-milliseconds of counting lost.
    lost: i64,
    /// From the action until every partition was owned again, ms.
    settled: i64,
}

impl Measured {
    fn line(&self) -> String {
        format!(
            "pause {:>6} ms  stopped {}/{PARTITIONS}  lost {:>5.1} partition-s  settled {:>6} ms",
            self.pause,
            self.stopped,
            self.lost as f64 / 1000.0,
            self.settled
        )
    }
}

/// Longest gap per partition between two flushes, the later in `(from, to]`
/// (a pause belongs to the step in which counting resumed).
fn longest_gaps(times: &BTreeMap<u32, Vec<i64>>, from: i64, to: i64) -> Vec<i64> {
    times
        .values()
        .map(|t| t.windows(2).filter(|w| w[1] > from && w[1] <= to).map(|w| w[1] - w[0]).max().unwrap_or(0))
        .collect()
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        // The counters inherit it: their info lines would bury the figures.
        std::env::set_var("RUST_LOG", "warn");
    }
    let short = std::env::var("TALLY_BENCH_TIMEOUTS").map_or(true, |t| t != "default");
    let knob = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let cycles = knob("TALLY_BENCH_CYCLES", 3);
    let prefill = knob("TALLY_BENCH_PREFILL", 300_000);
    let broker = if short { Broker::start() } else { Broker::start_with(BTreeMap::new()) };
    let settle_limit = Duration::from_secs(if short { 60 } else { 180 });
    println!(
        "rebalance pause: {} timeouts, {cycles} cycles, {PARTITIONS} partitions, Apache Kafka {}",
        if short { "short (6 s sessions, 1 s heartbeats)" } else { "default" },
        tally_servers::kafka::version()
    );
    for protocol in protocols(short) {
        let mut kafka = tally_testkit::kafka_config(&broker);
        kafka.topics.views_partitions = PARTITIONS;
        kafka.topics.counts_partitions = PARTITIONS;
        tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await.expect("topics");
        let dir = tempfile::tempdir().expect("tempdir");
        let filled = Instant::now();
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut load = Uniform::default();
        for _ in 0..prefill / 10_000 {
            producer.send(&load.batch(10_000)).await;
        }
        println!("\n{}: {prefill} views produced in {:.1} s", protocol.name, filled.elapsed().as_secs_f64());
        let feeding = Arc::new(AtomicBool::new(true));
        let feeder = tokio::spawn({
            let feeding = feeding.clone();
            async move {
                while feeding.load(Ordering::SeqCst) {
                    producer.send(&load.batch(100)).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let steps = tokio::task::spawn_blocking({
            let kafka = kafka.clone();
            let dir = dir.path().to_owned();
            let protocol = protocol.clone();
            move || {
                let mut group = Group { kafka: &kafka, protocol: &protocol, dir: &dir, counters: Vec::new() };
                let first = group.spawn(0);
                group.counters.push(first);
                group.wait_settled(settle_limit);
                // Caught up with the prefill: steady counting before the first step.
                let deadline = Instant::now() + settle_limit;
                let lag = |group: &Group<'_>| group.counters[0].0.metric("tally_counter_owned_lag_records");
                while lag(&group).is_none_or(|lag| lag > 1_000.0) {
                    assert!(Instant::now() < deadline, "the first counter did not catch up");
                    std::thread::sleep(Duration::from_millis(200));
                }
                std::thread::sleep(HOLD);
                let mut taken = Vec::new();
                for _ in 0..cycles {
                    for step in [Step::JoinSecond, Step::JoinThird, Step::RestartOne, Step::LeaveTwo] {
                        taken.push(group.take(step, settle_limit));
                    }
                }
                for (process, _) in group.counters.drain(..) {
                    let _ = process.terminate(Duration::from_secs(60));
                }
                taken
            }
        })
        .await
        .expect("steps");
        feeding.store(false, Ordering::SeqCst);
        feeder.await.expect("feeder");
        let times = flush_times(&kafka);
        let mut baseline = Vec::new();
        for step in &steps {
            let quiet_from = step.settled_ms + 1_000;
            for t in times.values() {
                baseline
                    .extend(t.windows(2).filter(|w| w[0] >= quiet_from && w[1] <= step.end_ms).map(|w| w[1] - w[0]));
            }
        }
        let steady = median(baseline.clone());
        println!(
            "{}: steady gap between flushes p50 {steady} ms, max {} ms",
            protocol.name,
            baseline.iter().max().unwrap_or(&0)
        );
        let mut by_step: BTreeMap<Step, Vec<Measured>> = BTreeMap::new();
        for step in &steps {
            let gaps = longest_gaps(&times, step.action_ms, step.end_ms);
            let stopped: Vec<i64> = gaps.iter().copied().filter(|g| *g > STOPPED).collect();
            let measured = Measured {
                pause: gaps.iter().copied().max().unwrap_or(0),
                stopped: stopped.len() as i64,
                lost: stopped.iter().map(|g| g - steady).sum(),
                settled: step.settled_ms - step.action_ms,
            };
            println!("  {:<18} {}", step.step.name(), measured.line());
            by_step.entry(step.step).or_default().push(measured);
        }
        println!("{} medians over {cycles} cycles:", protocol.name);
        for (step, runs) in by_step {
            let mid = |f: fn(&Measured) -> i64| median(runs.iter().map(f).collect());
            let medians = Measured {
                pause: mid(|m| m.pause),
                stopped: mid(|m| m.stopped),
                lost: mid(|m| m.lost),
                settled: mid(|m| m.settled),
            };
            let pauses: Vec<String> = runs.iter().map(|r| r.pause.to_string()).collect();
            println!("  {:<18} {} (pauses {})", step.name(), medians.line(), pauses.join(", "));
        }
    }
}
