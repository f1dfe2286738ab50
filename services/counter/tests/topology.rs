//! The recorded topology (`tally_kafka::topology`) against a real broker: a
//! counter restarted over a recreated or resized counts topic, or a counts
//! topic kept for less time than the views topic, refuses to start; a views
//! topic recreated and accepted with `tally topology reset` is counted
//! exactly in a new epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use tally_counter::verify::fold_counts;
use tally_counter::{CounterConfig, CounterError, CounterService};
use tally_kafka::topology::{self, Change, Role, TopologyError};
use tally_kafka::KafkaConfig;
use tally_service::Readiness;
use tally_testkit::counts::settled_views;
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(150);

fn config(kafka: &KafkaConfig) -> CounterConfig {
    CounterConfig {
        flush_interval: Duration::from_millis(200),
        group_id: format!("tally-counter-{}", kafka.topics.views),
        ..CounterConfig::default()
    }
}

async fn build(kafka: &KafkaConfig) -> Result<CounterService, CounterError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    CounterService::build(&config(kafka), kafka, &Registry::new(), &Readiness::default()).await
}

/// Counts `events` with a counter started now, until the counts topic holds
/// `prior` plus `producer.expected` and the counter has committed the whole
/// views topic; then stops it. Returns what the counts topic holds.
async fn count(
    kafka: &KafkaConfig,
    prior: &BTreeMap<String, i64>,
    producer: &mut ViewsProducer,
    events: usize,
    tag: &str,
) -> BTreeMap<String, i64> {
    let counter = build(kafka).await.expect("the counter starts");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(counter.run(shutdown.clone(), Duration::from_secs(10)));
    let now = tally_model::timestamp::now_ms();
    let batch: Vec<_> =
        (0..events).map(|i| (format!("video-{}", i % 5), format!("{tag}-{i}"), now, now, true)).collect();
    producer.send(&batch).await;
    let mut expected = prior.clone();
    for (video, views) in &producer.expected {
        *expected.entry(video.clone()).or_default() += views;
    }
    let group = config(kafka).group_id;
    let settled = settled_views(kafka, &group, &expected, Duration::from_secs(60)).await;
    assert_eq!(settled, expected, "exact, and still exact once the counter committed everything");
    shutdown.cancel();
    task.await.unwrap().expect("the counter stops cleanly");
    settled
}

fn admin(kafka: &KafkaConfig) -> AdminClient<DefaultClientContext> {
    tally_kafka::clients::base_config(kafka, "test-admin").create().expect("admin client")
}

/// Deletes `topic` and creates it again under the same name with
/// `partitions` (asking again while the broker still holds the old one).
async fn recreate(kafka: &KafkaConfig, topic: &str, partitions: i32) {
    let admin = admin(kafka);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin.delete_topics(&[topic], &options).await.expect("delete_topics");
    assert!(deleted.iter().all(Result::is_ok), "deleting {topic}: {deleted:?}");
    let retention = kafka.topics.retention.as_millis().to_string();
    for _ in 0..100 {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("retention.ms", &retention)
            .set("cleanup.policy", "delete");
        let created = admin.create_topics([&new], &options).await.expect("create_topics");
        if created.iter().all(Result::is_ok) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{topic} could not be created again");
}

fn refused_for(outcome: Result<CounterService, CounterError>) -> TopologyError {
    match outcome {
        Err(CounterError::Topology(e)) => {
            assert!(e.is_refusal(), "a refusal, not a failure to check: {e}");
            e
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("the counter started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_restarted_after_the_counts_topic_was_recreated_refuses_to_start() {
    bounded(LIMIT, async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        count(&kafka, &BTreeMap::new(), &mut producer, 40, "a").await;
        recreate(&kafka, &kafka.topics.counts, kafka.topics.counts_partitions).await;
        let refused = refused_for(build(&kafka).await);
        let TopologyError::Changed { changes, .. } = &refused else { panic!("{refused}") };
        assert!(
            matches!(changes.as_slice(), [Change::Recreated { role: Role::Counts, recorded, now, .. }] if recorded != now),
            "{changes:?}"
        );
        let message = format!("{refused}");
        assert!(message.contains("deleted and created again") && message.contains("tally topology reset"), "{message}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_restarted_after_the_counts_partitions_were_increased_refuses_to_start_until_reset() {
    bounded(LIMIT, async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        count(&kafka, &BTreeMap::new(), &mut producer, 40, "a").await;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let added = admin(&kafka)
            .create_partitions([&NewPartitions::new(&kafka.topics.counts, 6)], &options)
            .await
            .expect("create_partitions");
        assert!(added.iter().all(Result::is_ok), "{added:?}");
        let refused = refused_for(build(&kafka).await);
        let TopologyError::Changed { changes, .. } = &refused else { panic!("{refused}") };
        assert_eq!(
            changes,
            &[Change::Partitions { role: Role::Counts, topic: kafka.topics.counts.clone(), recorded: 4, now: 6 }],
        );
        // The operator accepts the change deliberately.
        let reset = topology::reset(&kafka, false).await.expect("tally topology reset");
        assert_eq!(reset.after.counts.partitions, 6);
        assert_eq!(reset.after.views_epoch, 0, "the views topic is the same one: the same epoch");
        assert!(build(&kafka).await.is_ok(), "after the reset the counter starts");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_refuses_a_counts_topic_kept_for_less_time_than_the_views_topic() {
    bounded(LIMIT, async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let shorter = AlterConfig::new(ResourceSpecifier::Topic(&kafka.topics.counts)).set("retention.ms", "3600000");
        let altered = admin(&kafka).alter_configs([&shorter], &options).await.expect("alter_configs");
        assert!(altered.iter().all(Result::is_ok), "{altered:?}");
        let refused = refused_for(build(&kafka).await);
        let message = format!("{refused}");
        let views_ms = kafka.topics.retention.as_millis().to_string();
        assert!(
            matches!(refused, TopologyError::RetentionTooShort { .. })
                && message.contains("retention.ms=3600000")
                && message.contains(&format!("retention.ms={views_ms}")),
            "names both values: {message}"
        );
    })
    .await;
}

/// A views topic deleted and created again: its offsets start at 0 again,
/// and once the new topic holds more records than the old one did, nothing
/// in the offsets tells it from the old one. The counter refuses it; once
/// the operator accepts it (`tally topology reset`), a new views epoch
/// starts and the new topic's views are counted exactly, on top of the old
/// ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_views_topic_is_refused_then_counted_exactly_in_a_new_epoch_after_a_reset() {
    bounded(LIMIT, async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let before = count(&kafka, &BTreeMap::new(), &mut producer, 40, "old").await;
        recreate(&kafka, &kafka.topics.views, kafka.topics.views_partitions).await;
        let refused = refused_for(build(&kafka).await);
        assert!(format!("{refused}").contains(&format!("{} was deleted and created again", kafka.topics.views)));
        let reset = topology::reset(&kafka, false).await.expect("tally topology reset");
        assert_eq!(reset.after.views_epoch, 1, "a new views topic: a new epoch");
        // More records than the old topic held, so its offsets pass the old ends.
        let mut fresh = ViewsProducer::new(&kafka, &[]);
        let expected = count(&kafka, &before, &mut fresh, 120, "new").await;
        let k = kafka.clone();
        let folded = tokio::task::spawn_blocking(move || fold_counts(&k, &k.topics.counts, Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(folded.totals, expected, "the old topic's views and the new one's, each once");
    })
    .await;
}

/// A views partition whose log ends before what the counter group already
/// committed of it (records lost in an unclean leader election look like
/// this) stops the counter with an error naming the partition, instead of
/// counting new records under offsets, and versions, already counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_views_log_that_ends_before_the_committed_offset_stops_the_counter_with_a_clear_error() {
    bounded(LIMIT, async {
        let kafka = tally_testkit::kafka_with_topics(&Broker::shared()).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let batch: Vec<_> = (0..20).map(|i| (format!("v{i}"), format!("e{i}"), now, now, true)).collect();
        producer.send(&batch).await;
        // The group committed up to offset 1,000 of partition 0, which holds far fewer records.
        let (k, group) = (kafka.clone(), config(&kafka).group_id);
        tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = tally_kafka::clients::base_config(&k, "test-commit")
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut offsets = rdkafka::TopicPartitionList::new();
            offsets.add_partition_offset(&k.topics.views, 0, rdkafka::Offset::Offset(1_000)).unwrap();
            rdkafka::consumer::Consumer::commit(&consumer, &offsets, rdkafka::consumer::CommitMode::Sync)
                .expect("commit");
        })
        .await
        .unwrap();
        let counter = build(&kafka).await.expect("the topics themselves are unchanged");
        let shutdown = CancellationToken::new();
        let mut task = tokio::spawn(counter.run(shutdown.clone(), Duration::from_secs(10)));
        let Ok(stopped) = tokio::time::timeout(Duration::from_secs(60), &mut task).await else {
            shutdown.cancel();
            let _ = task.await;
            panic!("the counter kept running, from offset 1,000 of a partition whose log ends before it");
        };
        let error = stopped.unwrap().expect_err("the counter stops with an error");
        let message = format!("{error}");
        assert!(
            matches!(
                &error,
                CounterError::Worker(tally_counter::worker::WorkerError::Recovery(
                    tally_counter::recovery::RecoveryError::ViewsLogBehind { partition: 0, reached: 1_000, .. }
                ))
            ),
            "{message}"
        );
        assert!(message.contains("ends at offset") && message.contains("--new-views-epoch"), "{message}");
    })
    .await;
}
