//! The counter in-process against a real broker: dedup rule, poison records,
//! the dead-letter limit and lag reporting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_counter::verify::{fold_counts, Folded};
use tally_counter::{CounterConfig, CounterError, CounterService};
use tally_kafka::KafkaConfig;
use tally_service::Readiness;
use tally_testkit::counts::settled_views;
use tally_testkit::topic::read_records;
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), CounterError>>,
    registry: Registry,
}

async fn start(kafka: &KafkaConfig, tweak: impl FnOnce(&mut CounterConfig)) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = CounterConfig {
        flush_interval: Duration::from_millis(200),
        group_id: group_of(kafka),
        ..CounterConfig::default()
    };
    tweak(&mut config);
    let registry = Registry::new();
    let service = CounterService::build(&config, kafka, &registry, &Readiness::default()).await.expect("build counter");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone(), Duration::from_secs(10)));
    Running { shutdown, task, registry }
}

/// Waits until the counts topic holds `expected` by an oracle independent of
/// the writer's fold (`tally_testkit::counts`), and still does once the
/// counter has committed the whole views topic; then folds it as the writer
/// would, for its statistics, which must agree.
async fn fold_until(kafka: &KafkaConfig, expected: &BTreeMap<String, i64>, limit: Duration) -> Folded {
    let settled = settled_views(kafka, &group_of(kafka), expected, limit).await;
    assert_eq!(&settled, expected, "exact, and still exact once the counter went quiet");
    let k = kafka.clone();
    let folded = tokio::task::spawn_blocking(move || fold_counts(&k, &k.topics.counts, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&folded.totals, expected, "the writer's fold agrees with the oracle");
    folded
}

/// The counter's consumer group in this test (the broker may be shared by tests running at once).
fn group_of(kafka: &KafkaConfig) -> String {
    format!("tally-counter-{}", kafka.topics.views)
}

/// The run's shared broker with this test's topics.
async fn setup() -> (Broker, KafkaConfig) {
    with_topics(Broker::shared()).await
}

async fn with_topics(broker: Broker) -> (Broker, KafkaConfig) {
    let kafka = tally_testkit::kafka_with_topics(&broker).await;
    (broker, kafka)
}

fn event(video: &str, id: &str, ts: i64, received: i64, new_view: bool) -> (String, String, i64, i64, bool) {
    (video.to_owned(), id.to_owned(), ts, received, new_view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_events_are_counted_once_within_the_window_and_again_after_it() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let counter = start(&kafka, |c| c.dedup_window = Duration::from_secs(60)).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let t0 = tally_model::timestamp::now_ms() - 600_000;
        producer
            .send(&[
                event("clip", "e1", t0 - 1_000, t0, true),
                event("clip", "e2", t0 - 1_000, t0, true),
                event("clip", "e1", t0 - 1_000, t0 + 30_000, false),
                // Documented rule: a resend received after the window counts again.
                event("clip", "e1", t0 - 1_000, t0 + 200_000, true),
                event("other", "e1", t0 - 1_000, t0 + 200_000, true),
            ])
            .await;
        let folded = fold_until(&kafka, &producer.expected, Duration::from_secs(30)).await;
        assert_eq!(folded.totals, BTreeMap::from([("clip".to_owned(), 3), ("other".to_owned(), 1)]));
        assert_eq!(folded.stats.duplicates, 1);
        counter.shutdown.cancel();
        counter.task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_with_provenance_and_counting_goes_on() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let counter = start(&kafka, |_| {}).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let before: Vec<_> = (0..10).map(|i| event("ok", &format!("a{i}"), now, now, true)).collect();
        producer.send(&before).await;
        producer.send_raw("ok", b"this is not a view").await;
        producer.send(&[event("ok", "late-1", now - 3 * 3_600_000, now, false)]).await;
        let after: Vec<_> = (0..10).map(|i| event("ok", &format!("b{i}"), now, now, true)).collect();
        producer.send(&after).await;
        let folded = fold_until(&kafka, &producer.expected, Duration::from_secs(30)).await;
        assert_eq!(folded.totals.get("ok"), Some(&20), "the valid events around the poison were counted");
        assert_eq!(folded.stats.dead_lettered, 2);

        let dead = read_records(&kafka, &kafka.topics.views_dlq, 2, Duration::from_secs(20));
        assert_eq!(dead.len(), 2, "both dead letters arrived");
        let header = |record: &tally_testkit::topic::ReadRecord, key: &str| {
            record.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let mut kinds: Vec<String> = dead.iter().map(|r| header(r, "tally.error.kind")).collect();
        kinds.sort();
        assert_eq!(kinds, vec!["late", "malformed"]);
        let poison = dead.iter().find(|r| header(r, "tally.error.kind") == "malformed").unwrap();
        assert_eq!(poison.payload, b"this is not a view", "the original payload is kept");
        assert_eq!(poison.key, b"ok");
        assert_eq!(header(poison, "tally.source.topic"), kafka.topics.views);
        assert_eq!(header(poison, "tally.source.offset"), "10", "provenance points at the record");
        assert!(!header(poison, "tally.source.partition").is_empty());
        assert_eq!(header(poison, "tally.service"), "tally-counter");
        assert!(header(poison, "tally.error.message").contains("unsupported wire format version"));
        counter.shutdown.cancel();
        counter.task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_dlq_limit_the_counter_halts_with_a_clear_error() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let counter = start(&kafka, |c| c.dlq_max_consecutive = 20).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        for i in 0..30 {
            producer.send_raw("same-key", format!("garbage {i}").as_bytes()).await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(60), counter.task).await.expect("the counter halted");
        let error = outcome.unwrap().expect_err("halting is an error");
        let text = error.to_string();
        assert!(text.contains("dead-letter limit exceeded"), "{text}");
        assert!(text.contains("20 in a row"), "{text}");
        assert!(counter.shutdown.is_cancelled(), "a halted counter stops the process");
        let folded = fold_counts(&kafka, &kafka.topics.counts, Duration::from_secs(30)).unwrap();
        // Earlier ranges may have dead-lettered a few (under the limit); the
        // range that crossed the limit was neither emitted nor committed.
        assert!(folded.stats.dead_lettered < 20, "the halting range was not emitted: {:?}", folded.stats);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_per_partition_by_the_monitor_thread_and_returns_to_zero() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let events: Vec<_> =
            (0..400).map(|i| event(&format!("v{}", i % 37), &format!("e{i}"), now, now, true)).collect();
        producer.send(&events).await;
        let counter = start(&kafka, |c| c.lag_interval = Duration::from_millis(100)).await;
        let folded = fold_until(&kafka, &producer.expected, Duration::from_secs(60)).await;
        assert_eq!(folded.totals, producer.expected);

        let value =
            |name: &str, partition: Option<&str>| tally_testkit::metrics::value(&counter.registry, name, partition);
        let series = |name: &str| {
            counter.registry.gather().iter().filter(|f| f.name() == name).map(|f| f.get_metric().len()).sum::<usize>()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while series("tally_counter_consumer_lag_records") < 4 || value("tally_counter_owned_lag_records", None) != 0.0
        {
            assert!(
                Instant::now() < deadline,
                "lag series: {}, sum {}",
                series("tally_counter_consumer_lag_records"),
                value("tally_counter_owned_lag_records", None)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(series("tally_counter_consumer_lag_records"), 4, "one series per owned partition");
        assert_eq!(series("tally_counter_consumer_lag_seconds"), 4);
        assert_eq!(value("tally_counter_owned_lag_seconds", None), 0.0, "caught up: no lag in seconds");
        for partition in ["0", "1", "2", "3"] {
            assert_eq!(value("tally_counter_consumer_lag_records", Some(partition)), 0.0, "partition {partition}");
        }

        // New records while running: measured again and caught up again.
        let more: Vec<_> = (0..200).map(|i| event("late-comer", &format!("m{i}"), now, now, true)).collect();
        producer.send(&more).await;
        let folded = fold_until(&kafka, &producer.expected, Duration::from_secs(60)).await;
        assert_eq!(folded.totals, producer.expected);
        let deadline = Instant::now() + Duration::from_secs(20);
        while value("tally_counter_owned_lag_records", None) != 0.0 {
            assert!(Instant::now() < deadline, "lag did not return to 0");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        counter.shutdown.cancel();
        counter.task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_for_backpressure_resume_where_they_stopped_and_count_exactly() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        // One buffered row while a flush is in flight blocks a partition: it
        // is paused and resumed (sought back) over and over.
        let counter = start(&kafka, |c| {
            c.flush_interval = Duration::from_millis(10);
            c.max_rows_per_flush = 10;
            c.max_buffered_rows = 1;
        })
        .await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        for round in 0..2 {
            let events: Vec<_> = (0..100)
                .map(|i| {
                    // Every 10th event resends the one before it: counted once.
                    let n = if i % 10 == 9 { i - 1 } else { i };
                    event(&format!("v{}", n % 97), &format!("r{round}-{n}"), now, now, i % 10 != 9)
                })
                .collect();
            producer.send(&events).await;
        }
        let folded = fold_until(&kafka, &producer.expected, Duration::from_secs(90)).await;
        assert_eq!(folded.totals, producer.expected);
        assert_eq!(folded.stats.duplicates, 20, "one resend in ten");
        let flushes = tally_testkit::metrics::value(&counter.registry, "tally_counter_flushes_total", None);
        assert!(flushes > 10.0, "small flushes, constantly in flight: {flushes}");
        let pauses = tally_testkit::metrics::value(&counter.registry, "tally_counter_partition_pauses_total", None);
        assert!(pauses > 0.0, "backpressure paused partitions");
        counter.shutdown.cancel();
        counter.task.await.unwrap().unwrap();
    })
    .await;
}

/// Sum over the views partitions of the offsets group `group` committed.
fn committed_sum(kafka: &KafkaConfig, group: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = &kafka.topics.views;
    let partitions = tally_kafka::topics::partition_count(kafka, topic, Duration::from_secs(10)).unwrap();
    let member = tally_kafka::GroupMember { group_id: group, instance_id: None };
    let probe: BaseConsumer = tally_kafka::clients::group_consumer_config(kafka, "probe", &member).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, i32::try_from(p).unwrap());
    }
    let committed = probe.committed_offsets(list, Duration::from_secs(10)).unwrap();
    committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_flush_ends_are_committed_in_the_background_while_counting() {
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let counter = start(&kafka, |_| {}).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let events: Vec<_> =
            (0..200).map(|i| event(&format!("v{}", i % 13), &format!("e{i}"), now, now, true)).collect();
        producer.send(&events).await;
        let group = group_of(&kafka);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut committed = 0;
        while committed < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (k, g) = (kafka.clone(), group.clone());
            committed = tokio::task::spawn_blocking(move || committed_sum(&k, &g)).await.unwrap();
        }
        // Still running: only the background commit can have moved the offsets.
        assert!(!counter.task.is_finished(), "the counter is still counting");
        assert_eq!(committed, 200, "every record's flush end is committed without a shutdown");
        let failures = tally_testkit::metrics::value(&counter.registry, "tally_counter_commit_failures_total", None);
        assert_eq!(failures, 0.0);
        counter.shutdown.cancel();
        counter.task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_whose_broker_is_gone_still_stops_within_its_drain_budget() {
    bounded(LIMIT, async {
        let (mut broker, mut kafka) = with_topics(Broker::start()).await;
        // No background commit during the test: the acknowledged ends are
        // left for the final commit, which finds no broker.
        kafka.consumer_properties.insert("auto.commit.interval.ms".into(), "3600000".into());
        // Flushes in flight fail after 2 s (the emitter's own wait is not under test).
        let counter = start(&kafka, |c| c.delivery_timeout = Duration::from_secs(2)).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let events: Vec<_> = (0..50).map(|i| event("clip", &format!("e{i}"), now, now, true)).collect();
        producer.send(&events).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tally_testkit::metrics::value(&counter.registry, "tally_counter_flushes_total", None) < 1.0 {
            assert!(Instant::now() < deadline, "no flush acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker.kill();
        let stopping = Instant::now();
        counter.shutdown.cancel();
        let _ = counter.task.await.unwrap();
        // Acknowledgements, final commit and close share the 10 s drain
        // budget; waiting out the group session (45 s) for a coordinator, on
        // commit or on close, would pass 45 s.
        assert!(stopping.elapsed() < Duration::from_secs(15), "stopped after {:?}", stopping.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_probe_reads_the_timestamp_of_the_record_at_an_offset_from_the_broker() {
    use rdkafka::producer::FutureRecord;
    use tally_counter::lag::{BrokerLagSource, LagSource};
    bounded(LIMIT, async {
        let (_broker, kafka) = setup().await;
        let settings = tally_kafka::clients::ProducerSettings {
            delivery_timeout: Duration::from_secs(10),
            linger: Duration::ZERO,
            queue_capacity: 16,
        };
        let producer = tally_kafka::clients::idempotent_producer(&kafka, "lag-probe-test", &settings).unwrap();
        // The views topic is stamped by the broker (LogAppendTime): each
        // record's time is known to lie between its send and its acknowledgement.
        let mut windows = Vec::new();
        for i in 0..3 {
            if i == 1 {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            let sent = tally_model::timestamp::now_ms();
            let record = FutureRecord::to(&kafka.topics.views).partition(2).key("k").payload("p");
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
            windows.push(sent..=tally_model::timestamp::now_ms());
        }
        let topic = kafka.topics.views.clone();
        let (high, at_one, at_end) = tokio::task::spawn_blocking(move || {
            let mut source = BrokerLagSource::new(&kafka, &topic).unwrap();
            (source.high(2).unwrap(), source.timestamp_at(2, 1).unwrap(), source.timestamp_at(2, 3).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(high, 3);
        let at_one = at_one.expect("the record at offset 1 was read");
        assert!(
            windows[1].contains(&at_one),
            "the record at offset 1 was stamped at {at_one}, sent in {:?}",
            windows[1]
        );
        assert!(!windows[0].contains(&at_one), "offset 0's time, 1.5 s earlier, was read instead");
        assert_eq!(at_end, None, "nothing at the high watermark yet");
    })
    .await;
}
