//! Services asked to stop while their broker is gone, or while a counter is
//! still taking over its partitions, exit within their drain budget
//! (`shutdown.drain-timeout`, 10 s in the test configuration) instead of
//! waiting out a group session or a claim for a broker that does not answer.

mod common;

use std::time::{Duration, Instant};

use common::{counter_writer_sections, write_config, Load, TallyProcess, ViewsProducer};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tally_kafka::topics::{ensure_topics, tally_topics, TopicSpec};
use tally_testkit::{bounded, Broker};

/// Everything fits the 10 s drain and the process exits at most 2 s after
/// it; a group session (45 s by default) or a claim retried for the
/// counter's delivery timeout (30 s) waited out would not.
const STOPPED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_and_writer_whose_broker_is_gone_exit_within_their_drain_budget() {
    bounded(Duration::from_secs(150), async {
        let mut broker = Broker::start();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let sections = counter_writer_sections(&dir.path().join("counts.db"), "");
        let config = write_config(dir.path(), &kafka, &sections);
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let mut producer = ViewsProducer::new(&kafka, &[]);
        producer.send(&Load::new(11).batch(500, tally_model::timestamp::now_ms(), 10)).await;
        let partitions = f64::from(kafka.topics.views_partitions);
        assert!(
            counter.wait_for_metric("tally_counter_owned_partitions", partitions, Duration::from_secs(60)),
            "the counter took over every partition"
        );
        assert!(
            counter.wait_for_metric("tally_counter_flushes_total", 1.0, Duration::from_secs(60)),
            "the counter flushed"
        );
        assert!(writer.wait_for_metric("tally_writer_batches_total", 1.0, Duration::from_secs(60)), "the writer wrote");
        drop(producer);
        broker.kill();
        let stopping = Instant::now();
        let (counter_exit, writer_exit) = tokio::join!(
            tokio::task::spawn_blocking(move || counter.terminate(Duration::from_secs(60))),
            tokio::task::spawn_blocking(move || writer.terminate(Duration::from_secs(60))),
        );
        let (counter_exit, writer_exit) = (counter_exit.unwrap(), writer_exit.unwrap());
        let took = stopping.elapsed();
        eprintln!("counter {counter_exit}, writer {writer_exit}, both gone after {took:?}");
        assert!(took < STOPPED_WITHIN, "stopped after {took:?}");
        // Within the budget, not cut off by it (exit code 5 says the drain timed out).
        assert!(counter_exit.success() && writer_exit.success(), "counter {counter_exit}, writer {writer_exit}");
    })
    .await;
}

/// The claim of a take-over runs inside librdkafka's rebalance callback,
/// where the drain cannot reach it. Here it can never be acknowledged: the
/// counts topic takes no record of more than 1 byte, so every claim is
/// refused (`MESSAGE_TOO_LARGE`) and retried for the counter's delivery
/// timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_stopped_while_its_claims_go_unacknowledged_exits_within_its_drain_budget() {
    bounded(Duration::from_secs(150), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_config(&broker);
        let (counts, others): (Vec<TopicSpec>, Vec<TopicSpec>) =
            tally_topics(&kafka).into_iter().partition(|t| t.name == kafka.topics.counts);
        ensure_topics(&kafka, &others).await.expect("creating the views topics");
        create_unwritable_topic(&kafka, &counts[0]).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &kafka, "[counter]\nadmin-listen = \"127.0.0.1:0\"\n");
        let mut counter = TallyProcess::spawn(&config, "counter");
        let partitions = f64::from(kafka.topics.views_partitions);
        assert!(
            counter.wait_for_metric("tally_counter_partitions_assigned_total", partitions, Duration::from_secs(60)),
            "the counter was assigned every partition"
        );
        assert_eq!(counter.metric("tally_counter_owned_partitions"), Some(0.0), "no claim can be acknowledged");
        assert!(!counter.exited(), "the counter waits for its claims");
        let stopping = Instant::now();
        let exit = tokio::task::spawn_blocking(move || counter.terminate(Duration::from_secs(60))).await.unwrap();
        let took = stopping.elapsed();
        eprintln!("counter {exit} after {took:?}");
        assert!(took < STOPPED_WITHIN, "stopped after {took:?}");
        assert!(exit.success(), "counter {exit}: a shutdown during a take-over is a clean stop");
    })
    .await;
}

/// Creates `topic` with `max.message.bytes = 1`: every produce is refused.
async fn create_unwritable_topic(kafka: &tally_kafka::KafkaConfig, topic: &TopicSpec) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().expect("admin client");
    let new_topic =
        NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(1)).set("max.message.bytes", "1");
    let created = admin.create_topics([&new_topic], &AdminOptions::new()).await.expect("create_topics");
    assert!(created.iter().all(Result::is_ok), "creating {}: {created:?}", topic.name);
}
