//! Counters scaled 1 -> 2 -> 3 -> 1 under continuous load with each way a
//! consumer group can rebalance: eager `classic` (the baseline, every
//! rebalance stops every partition), `cooperative-sticky`, static
//! membership, and Kafka 4's `consumer` protocol (KIP-848). A writer stores
//! the counts in the embedded store; its totals must equal what the producer
//! sent, exactly, and again once the pipeline has gone quiet.
//!
//! Also: members that share a `group-instance-id` by mistake. The broker
//! fences one of them; it must stop (its supervisor restarts it or an
//! operator notices), not keep running without partitions.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::query::store_totals_become;
use common::{feed_until, write_config_with_groups, Load, TallyProcess, ViewsProducer, CLASSIC_SHORT_SESSIONS};
use tally_kafka::KafkaConfig;
use tally_testkit::{bounded, Broker};

/// Partitions of the views topic: three counters all have work.
const PARTITIONS: i32 = 6;

/// Views per batch and the pause between batches: continuous load, bounded.
const FEED: (usize, Duration) = (40, Duration::from_millis(100));

/// How long each arrangement of counters counts under load.
const HOLD: Duration = Duration::from_secs(2);

/// How long one scaling step may take to settle.
const SETTLE: Duration = Duration::from_secs(60);

/// What a rebalance revokes from the members that keep running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revokes {
    /// Eager: every partition of every member, until the group has settled.
    Everything,
    /// Incremental: only the partitions that move to another member.
    OnlyMoved,
}

/// One way of running the group.
struct Protocol {
    /// The group lines of the `[kafka]` section.
    kafka: String,
    /// What a rebalance revokes.
    revokes: Revokes,
    /// Whether each counter has a `group-instance-id` of its own.
    static_members: bool,
}

fn classic(strategy: &str) -> String {
    format!("{CLASSIC_SHORT_SESSIONS}\nassignment-strategy = \"{strategy}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_rebalances_stop_every_partition_and_keep_totals_exact() {
    let protocol = Protocol { kafka: classic("range"), revokes: Revokes::Everything, static_members: false };
    scale_under_load(protocol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_rebalances_revoke_only_moved_partitions_and_keep_totals_exact() {
    let protocol =
        Protocol { kafka: classic("cooperative-sticky"), revokes: Revokes::OnlyMoved, static_members: false };
    scale_under_load(protocol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_gets_its_partitions_back_without_a_rebalance() {
    let protocol = Protocol { kafka: classic("cooperative-sticky"), revokes: Revokes::OnlyMoved, static_members: true };
    scale_under_load(protocol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_rebalances_revoke_only_moved_partitions_and_keep_totals_exact() {
    let protocol =
        Protocol { kafka: "group-protocol = \"consumer\"".into(), revokes: Revokes::OnlyMoved, static_members: false };
    scale_under_load(protocol).await;
}

/// A counter process and its identity.
struct Counter {
    process: TallyProcess,
    config: PathBuf,
}

/// A counter's partition metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ownership {
    owned: f64,
    assigned: f64,
    revoked: f64,
}

impl Counter {
    fn spawn(config: PathBuf) -> Self {
        Self { process: TallyProcess::spawn(&config, "counter"), config }
    }

    fn ownership(&self) -> Ownership {
        let metric = |name| self.process.metric(name).unwrap_or(f64::NAN);
        Ownership {
            owned: metric("tally_counter_owned_partitions"),
            assigned: metric("tally_counter_partitions_assigned_total"),
            revoked: metric("tally_counter_partitions_revoked_total"),
        }
    }
}

/// The test's world: load, pipeline configuration and the running counters.
struct Run {
    kafka: KafkaConfig,
    dir: tempfile::TempDir,
    protocol: Protocol,
    producer: ViewsProducer,
    load: Load,
    counters: Vec<Counter>,
}

impl Run {
    /// The configuration of counter `index` (its own file: a static member has its own id).
    fn counter_config(&self, index: usize) -> PathBuf {
        let dir = self.dir.path().join(format!("counter-{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut counter = "[counter]\nadmin-listen = \"127.0.0.1:0\"\nflush-interval = \"200ms\"\n".to_owned();
        if self.protocol.static_members {
            counter.push_str(&format!("group-instance-id = \"counter-{index}\"\n"));
        }
        write_config_with_groups(&dir, &self.kafka, &self.protocol.kafka, &counter)
    }

    /// Feeds load until every running counter owns a share of the partitions
    /// and together they own them all.
    async fn settle(&mut self, what: &str) {
        let counters = &self.counters;
        let settled = || {
            let owned: Vec<f64> = counters.iter().map(|c| c.ownership().owned).collect();
            owned.iter().all(|o| *o >= 1.0) && owned.iter().sum::<f64>() == f64::from(PARTITIONS)
        };
        let took = feed_until(&mut self.producer, &mut self.load, FEED, SETTLE, what, settled).await;
        eprintln!("{what}: settled in {took:?}");
        // Each arrangement counts a while before the next rebalance.
        let until = Instant::now() + HOLD;
        feed_until(&mut self.producer, &mut self.load, FEED, HOLD * 2, "holding", || Instant::now() >= until).await;
    }

    /// Adds a counter and checks what the rebalance revoked from the others.
    async fn scale_up(&mut self) {
        let before: Vec<Ownership> = self.counters.iter().map(Counter::ownership).collect();
        let index = self.counters.len();
        let config = self.counter_config(index);
        self.counters.push(Counter::spawn(config));
        self.settle(&format!("{} counters share the partitions", index + 1)).await;
        for (counter, before) in self.counters.iter().zip(&before) {
            let after = counter.ownership();
            let revoked = after.revoked - before.revoked;
            match self.protocol.revokes {
                Revokes::Everything => {
                    assert!(revoked >= before.owned, "an eager rebalance revokes everything: {before:?} -> {after:?}")
                }
                Revokes::OnlyMoved => assert_eq!(
                    revoked,
                    before.owned - after.owned,
                    "an incremental rebalance revokes only the partitions that move: {before:?} -> {after:?}"
                ),
            }
        }
    }

    /// Stops counter `index` and starts it again with the same identity:
    /// a static member gets its partitions back and the others see no rebalance.
    async fn restart_static_member(&mut self, index: usize) {
        let others = |counters: &[Counter]| -> Vec<Ownership> {
            counters.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, c)| c.ownership()).collect()
        };
        let before = others(&self.counters);
        let owned_before = self.counters[index].ownership().owned;
        // Stopped first: a second live member with the same id would be fenced.
        let stopping = self.counters.remove(index);
        let status = stopping.process.terminate(Duration::from_secs(30));
        assert!(status.success(), "the restarted member drained cleanly: {status:?}");
        self.counters.insert(index, Counter::spawn(stopping.config));
        self.settle("the restarted static member is back").await;
        assert_eq!(self.counters[index].ownership().owned, owned_before, "it got its partitions back");
        assert_eq!(others(&self.counters), before, "the other members saw no rebalance");
    }

    /// Stops every counter but the first; it ends up owning every partition.
    async fn scale_down_to_one(&mut self) {
        for counter in self.counters.drain(1..).rev() {
            let status = counter.process.terminate(Duration::from_secs(30));
            assert!(status.success(), "a leaving counter drained cleanly: {status:?}");
        }
        self.settle("one counter owns every partition again").await;
    }
}

async fn scale_under_load(protocol: Protocol) {
    bounded(Duration::from_secs(240), async {
        let broker = Broker::shared();
        let mut kafka = tally_testkit::kafka_config(&broker);
        kafka.topics.views_partitions = PARTITIONS;
        kafka.topics.counts_partitions = PARTITIONS;
        tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka))
            .await
            .expect("creating Tally's topics");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("counts.db");
        let writer_dir = dir.path().join("writer");
        std::fs::create_dir_all(&writer_dir).unwrap();
        let writer_sections =
            format!("[writer]\nadmin-listen = \"127.0.0.1:0\"\n\n[store]\nsqlite-path = \"{}\"\n", db.display());
        let writer_config = write_config_with_groups(&writer_dir, &kafka, &protocol.kafka, &writer_sections);
        let writer = TallyProcess::spawn(&writer_config, "writer");
        let static_members = protocol.static_members;
        let mut run = Run {
            producer: ViewsProducer::new(&kafka, &["video-1"]),
            load: Load::new(0x5ca1_e0f3),
            kafka,
            dir,
            protocol,
            counters: Vec::new(),
        };
        let first = run.counter_config(0);
        run.counters.push(Counter::spawn(first));
        run.settle("the first counter owns every partition").await;
        run.scale_up().await;
        run.scale_up().await;
        if static_members {
            run.restart_static_member(1).await;
        }
        run.scale_down_to_one().await;
        run.producer.send(&run.load.batch(500, tally_model::timestamp::now_ms(), 10)).await;

        let expected = run.producer.expected.clone();
        assert!(expected.values().sum::<i64>() >= 2_000, "a meaningful load: {expected:?}");
        store_totals_become(&db, &expected, Duration::from_secs(90), "after the rebalances").await;
        let kafka = &run.kafka;
        let counter_group = format!("tally-counter-{}", kafka.topics.views);
        let writer_group = format!("tally-writer-{}", kafka.topics.views);
        let groups = [
            (counter_group.as_str(), kafka.topics.views.as_str()),
            (writer_group.as_str(), kafka.topics.counts.as_str()),
        ];
        let quiet = tally_testkit::topic::wait_quiet(kafka, &groups, Duration::from_secs(60));
        assert!(quiet, "the pipeline went quiet");
        store_totals_become(&db, &expected, Duration::ZERO, "once the pipeline is quiet").await;
        for counter in run.counters.drain(..) {
            assert!(counter.process.terminate(Duration::from_secs(30)).success());
        }
        assert!(writer.terminate(Duration::from_secs(30)).success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_fenced_by_a_duplicate_static_id_stops() {
    duplicate_instance_id_stops_a_counter(CLASSIC_SHORT_SESSIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_refused_a_duplicate_static_id_under_the_consumer_protocol_stops() {
    duplicate_instance_id_stops_a_counter("group-protocol = \"consumer\"").await;
}

/// Two counters given the same `group-instance-id`: the broker fences one
/// (classic: the one already in the group; consumer protocol: the one
/// joining), which must exit with an error while the other keeps counting.
async fn duplicate_instance_id_stops_a_counter(group_settings: &str) {
    bounded(Duration::from_secs(120), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let sections = "[counter]\nadmin-listen = \"127.0.0.1:0\"\ngroup-instance-id = \"counter-twin\"\n";
        let config = write_config_with_groups(dir.path(), &kafka, group_settings, sections);
        let first = TallyProcess::spawn(&config, "counter");
        assert!(first.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(60)));
        let mut twins = [first, TallyProcess::spawn(&config, "counter")];
        let deadline = Instant::now() + Duration::from_secs(60);
        let fenced = loop {
            if let Some(fenced) = twins.iter_mut().position(TallyProcess::exited) {
                break fenced;
            }
            assert!(Instant::now() < deadline, "both twins kept running; one of them is fenced out of the group");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let status = twins[fenced].wait(Duration::ZERO);
        assert!(!status.success(), "the fenced twin stopped with an error: {status:?}");
        let survivor = &twins[1 - fenced];
        assert!(
            survivor.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(30)),
            "the other twin counts every partition"
        );
    })
    .await;
}

#[test]
fn conflicting_group_settings_fail_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[kafka]\ngroup-protocol = \"consumer\"\nconsumer-properties = { \"heartbeat.interval.ms\" = \"1000\" }\n",
            "group.consumer.heartbeat.interval.ms",
        ),
        ("[kafka]\ngroup-protocol = \"consumer\"\nassignment-strategy = \"range\"\n", "kafka.assignment-strategy"),
        ("[kafka]\nconsumer-properties = { \"group.protocol\" = \"consumer\" }\n", "kafka.group-protocol"),
        ("[counter]\ngroup-instance-id = \"\"\n", "counter.group-instance-id"),
    ];
    for (text, named) in cases {
        let config = dir.path().join("tally.toml");
        std::fs::write(&config, text).unwrap();
        // No broker anywhere: the check comes before any client is made.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("--config")
            .arg(&config)
            .arg("counter")
            .env("TALLY_KAFKA__BROKERS", "127.0.0.1:1")
            .output()
            .expect("run tally");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains("invalid configuration") && stderr.contains(named), "{text}: {stderr}");
    }
}
