//! The counter in-process through rebalances: partitions that move while
//! they are paused for backpressure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_counter::verify::fold_counts;
use tally_counter::{CounterConfig, CounterError, CounterService};
use tally_kafka::{AssignmentStrategy, KafkaConfig};
use tally_service::Readiness;
use tally_testkit::views::{Load, ViewsProducer};
use tally_testkit::{bounded, Broker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), CounterError>>,
    registry: Registry,
}

impl Running {
    fn metric(&self, name: &str) -> f64 {
        tally_testkit::metrics::value(&self.registry, name, None)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("counter task").expect("counter stopped cleanly");
    }
}

/// A counter whose partitions are paused for backpressure over and over:
/// one buffered row while a flush is in flight blocks a partition.
async fn start_constantly_paused(kafka: &KafkaConfig) -> Running {
    let config = CounterConfig {
        group_id: format!("tally-counter-{}", kafka.topics.views),
        flush_interval: Duration::from_millis(10),
        max_rows_per_flush: 10,
        max_buffered_rows: 1,
        ..CounterConfig::default()
    };
    let registry = Registry::new();
    let service = CounterService::build(&config, kafka, &registry, &Readiness::default()).await.expect("build counter");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone(), Duration::from_secs(10)));
    Running { shutdown, task, registry }
}

/// Folds the counts topic until it holds `expected` or `limit` passes;
/// returns what is still missing per video (negative: counted too often).
async fn wait_for_totals(
    kafka: &KafkaConfig,
    expected: &BTreeMap<String, i64>,
    limit: Duration,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + limit;
    loop {
        let k = kafka.clone();
        let folded = tokio::task::spawn_blocking(move || fold_counts(&k, &k.topics.counts, Duration::from_secs(30)))
            .await
            .expect("fold task")
            .expect("fold counts");
        let missing: BTreeMap<String, i64> = expected
            .keys()
            .chain(folded.totals.keys())
            .map(|video| {
                let count = |totals: &BTreeMap<String, i64>| totals.get(video).copied().unwrap_or(0);
                (video.clone(), count(expected) - count(&folded.totals))
            })
            .filter(|(_, missing)| *missing != 0)
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sends views in small batches until `done()` holds; fails after `limit`.
async fn feed_until(producer: &mut ViewsProducer, load: &mut Load, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for: {what}");
        // Little: a partition paused and sought back after every record or two counts slowly.
        producer.send(&load.batch(2, tally_model::timestamp::now_ms(), 10)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_for_backpressure_when_revoked_are_fetched_again_when_assigned_back() {
    bounded(Duration::from_secs(180), async {
        let broker = Broker::shared();
        let mut kafka = tally_testkit::kafka_config(&broker);
        // Eager: every rebalance revokes every partition and assigns most of
        // them back to the same member, paused or not.
        kafka.assignment_strategy = Some(AssignmentStrategy::Range);
        tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await.unwrap();
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut load = Load::new(0xbac6_9e55);
        let started = Instant::now();
        let first = start_constantly_paused(&kafka).await;
        for round in 0..3 {
            let second = start_constantly_paused(&kafka).await;
            let owned = |r: &Running| r.metric("tally_counter_owned_partitions");
            feed_until(&mut producer, &mut load, "the two counters split the partitions", || {
                owned(&first) >= 1.0 && owned(&second) >= 1.0 && owned(&first) + owned(&second) == 4.0
            })
            .await;
            second.stop().await;
            feed_until(&mut producer, &mut load, "the first counter owns every partition again", || {
                owned(&first) == 4.0
            })
            .await;
            let pauses = first.metric("tally_counter_partition_pauses_total");
            eprintln!("round {round} done after {:?}: pauses so far {pauses}", started.elapsed());
        }
        assert!(first.metric("tally_counter_partition_pauses_total") > 0.0, "backpressure paused partitions");
        let missing = wait_for_totals(&kafka, &producer.expected, Duration::from_secs(60)).await;
        let lag = first.metric("tally_counter_owned_lag_records");
        eprintln!("counted after {:?}", started.elapsed());
        // Stopped before asserting: a counter left running would hold the test's runtime.
        first.stop().await;
        assert!(missing.is_empty(), "every view counted once the partitions are back (lag {lag}): missing {missing:?}");
    })
    .await;
}
