//! Background commit results reach the counter's consumer context: the
//! group coordinator of librdkafka's mock cluster rejects offset commits on
//! demand (the mock cluster serves only for error injection, as the design
//! asks). A consumer with the counter's commit settings and context stores
//! an offset; the results of librdkafka's background commits are judged in
//! `commit_callback`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tally_counter::claim::Claimer;
use tally_counter::commits;
use tally_counter::dlq::DlqLimits;
use tally_counter::metrics::CounterMetrics;
use tally_counter::partition::Rules;
use tally_counter::recovery::RecoveryContext;
use tally_counter::shared::{CounterContext, Shared};
use tally_kafka::KafkaConfig;
use tally_model::counting::CountingRule;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "tally.views";
const GROUP: &str = "tally-counter-commit-test";

struct Fixture {
    // Declared first: the consumer is dropped before the cluster it talks to.
    consumer: BaseConsumer<CounterContext>,
    shared: Arc<Shared>,
    registry: Registry,
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

/// A consumer with the counter's commit settings, assigned partition 0 by
/// hand (no rebalance, so no recovery), and `end` stored for commit.
fn fixture(end: i64) -> Fixture {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    let kafka = KafkaConfig { brokers: cluster.bootstrap_servers(), ..KafkaConfig::default() };
    let rules = Rules {
        counting: CountingRule {
            allowed_lateness_ms: 3_600_000,
            dedup_window_ms: 600_000,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: 60_000,
        },
        dlq: DlqLimits { max_ratio: 0.5, min_records: 100, max_consecutive: 1_000 },
        max_rows_per_flush: 1_000,
        max_buffered_rows: 1_000,
        flush_interval: Duration::from_secs(1),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
    };
    let recovery = RecoveryContext {
        kafka,
        views_topic: TOPIC.into(),
        counts_topic: "tally.counts".into(),
        counts_partitions: 1,
        views_epoch: 0,
        rules,
        read_timeout: Duration::from_secs(5),
        stop: CancellationToken::new(),
    };
    let registry = Registry::new();
    let metrics = CounterMetrics::register(&registry).expect("metrics");
    let (_done_tx, done_rx) = std::sync::mpsc::channel();
    let (jobs_tx, _jobs_rx) = tokio::sync::mpsc::unbounded_channel();
    // Never used: partitions are assigned by hand, not claimed.
    let producer: rdkafka::producer::FutureProducer =
        ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().expect("producer");
    let claimer = Claimer::new(
        producer,
        "tally.counts".into(),
        1,
        "commit-results-test".into(),
        Duration::from_secs(5),
        CancellationToken::new(),
    );
    let shared = Arc::new(Shared::new(recovery, claimer, metrics, done_rx, jobs_tx));
    let consumer: BaseConsumer<CounterContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", GROUP)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "50")
        .create_with_context(CounterContext { shared: shared.clone() })
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC, 0, Offset::Beginning).expect("partition");
    consumer.assign(&assignment).expect("assign");
    // The assignment is applied in the background: store once it is.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = commits::store(&consumer, TOPIC, 0, end) {
        assert!(Instant::now() < deadline, "storing the offset: {e}");
        let _ = consumer.poll(Duration::from_millis(20));
    }
    Fixture { consumer, shared, registry, cluster }
}

fn failures(registry: &Registry) -> f64 {
    tally_testkit::metrics::value(registry, "tally_counter_commit_failures_total", None)
}

/// Polls (commit results arrive inside `poll`) until `done` or 20 s.
fn poll_until(fixture: &Fixture, done: impl Fn(&Fixture) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let _ = fixture.consumer.poll(Duration::from_millis(20));
        if done(fixture) {
            return true;
        }
    }
    false
}

fn committed(fixture: &Fixture) -> Option<i64> {
    let mut list = TopicPartitionList::new();
    list.add_partition(TOPIC, 0);
    let committed = fixture.consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
    committed.elements().first().and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0)
}

#[test]
fn a_rejected_background_commit_is_counted_and_committed_on_a_later_tick() {
    let fixture = fixture(7);
    // The next commit fails with an error that does not fence the member.
    fixture
        .cluster
        .request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE]);
    assert!(poll_until(&fixture, |f| failures(&f.registry) >= 1.0), "the failure reached commit_callback");
    assert!(poll_until(&fixture, |f| committed(f) == Some(7)), "the stored offset is committed again");
    assert!(fixture.shared.lock().failure.is_none(), "a retried commit does not stop the counter");
}

#[test]
fn a_member_the_group_moved_on_without_counts_on_and_commits_later() {
    let fixture = fixture(3);
    fixture.cluster.request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID]);
    assert!(poll_until(&fixture, |f| failures(&f.registry) >= 1.0), "the rejection reached commit_callback");
    assert!(poll_until(&fixture, |f| committed(f) == Some(3)), "the stored offset is committed again");
    let failure = fixture.shared.lock().failure.take();
    assert!(failure.is_none(), "an expelled member rejoins rather than stops: {failure:?}");
}
