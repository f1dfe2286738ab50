//! The recorded topology through the `tally` binary: a counter and a writer
//! restarted over a recreated counts topic refuse to start with exit code 6
//! and say why; `tally topology show` reports the change and `tally
//! topology reset` accepts it.

mod common;

use std::time::Duration;

use common::{counter_writer_sections, run_to_exit, write_config, TallyProcess};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tally_testkit::{bounded, Broker};

const REFUSED: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_and_a_writer_refuse_a_recreated_counts_topic_with_exit_code_6_until_reset() {
    bounded(Duration::from_secs(180), async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &kafka, &counter_writer_sections(&dir.path().join("counts.db"), ""));
        for service in ["counter", "writer"] {
            let config = config.clone();
            let started = tokio::task::spawn_blocking(move || {
                TallyProcess::spawn(&config, service).terminate(Duration::from_secs(30))
            });
            assert!(started.await.unwrap().success(), "{service} started and stopped cleanly");
        }
        recreate(&kafka.brokers, &kafka.topics.counts, kafka.topics.counts_partitions).await;
        let run = |args: &'static [&'static str]| {
            let config = config.clone();
            tokio::task::spawn_blocking(move || run_to_exit(&config, args, Duration::from_secs(60)))
        };
        for service in ["counter", "writer"] {
            let args: &'static [&'static str] = if service == "counter" { &["counter"] } else { &["writer"] };
            let (status, printed) = run(args).await.unwrap();
            assert_eq!(status.code(), Some(REFUSED), "{service} refused with exit code 6: {printed}");
            assert!(
                printed.contains(&format!("{} was deleted and created again", kafka.topics.counts))
                    && printed.contains("tally topology reset"),
                "{service} says what changed and what to do: {printed}"
            );
        }
        let (status, printed) = run(&["topology", "show"]).await.unwrap();
        assert_eq!(status.code(), Some(REFUSED), "show reports a change: {printed}");
        assert!(printed.contains("deleted and created again"), "{printed}");
        let (status, printed) = run(&["topology", "reset"]).await.unwrap();
        assert!(status.success(), "reset: {printed}");
        assert!(printed.contains("start the writers on a fresh store"), "reset warns about the store: {printed}");
        let (status, printed) = run(&["topology", "show"]).await.unwrap();
        assert!(status.success() && printed.contains("unchanged"), "{printed}");
        let config = config.clone();
        let counter = tokio::task::spawn_blocking(move || {
            TallyProcess::spawn(&config, "counter").terminate(Duration::from_secs(30))
        });
        assert!(counter.await.unwrap().success(), "after the reset the counter starts");
    })
    .await;
}

/// Deletes `topic` and creates it again under the same name.
async fn recreate(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin.delete_topics(&[topic], &options).await.expect("delete_topics");
    assert!(deleted.iter().all(Result::is_ok), "deleting {topic}: {deleted:?}");
    for _ in 0..100 {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let created = admin.create_topics([&new], &options).await.expect("create_topics");
        if created.iter().all(Result::is_ok) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{topic} could not be created again");
}
