//! Unit tests of the shared state, driven without a broker: the consumer is
//! assigned its partitions by hand, so offsets can be stored but nothing
//! is fetched or committed.

use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, TopicPartitionList};
use tally_kafka::KafkaConfig;
use tally_model::{EventId, Salt, VideoId, ViewEvent};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::dlq::DlqLimits;
use crate::partition::{Input, Rules};
use tally_model::counting::{CountingRule, Dedup};
use tokio_util::sync::CancellationToken;

const VIEWS: &str = "views";

fn rules() -> Rules {
    Rules {
        counting: CountingRule {
            allowed_lateness_ms: 3_600_000,
            dedup_window_ms: 600_000,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: 60_000,
        },
        dlq: DlqLimits { max_ratio: 0.5, min_records: 10, max_consecutive: 3 },
        max_rows_per_flush: 1_000,
        max_buffered_rows: 1_000,
        flush_interval: Duration::from_secs(1),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
    }
}

/// Shared state, a consumer assigned partition 0 of the views topic (no
/// broker behind it), and both ends of the emitter's channels.
struct Harness {
    shared: Arc<Shared>,
    consumer: BaseConsumer<CounterContext>,
    /// Kept open: the shared state sends sealed flushes on it.
    _jobs: UnboundedReceiver<FlushJob>,
    completions: Sender<Completion>,
}

fn harness() -> Harness {
    // Nothing listens here: clients are created, never connected.
    let kafka = KafkaConfig { brokers: "127.0.0.1:1".into(), ..KafkaConfig::default() };
    let recovery = RecoveryContext {
        kafka: kafka.clone(),
        views_topic: VIEWS.into(),
        counts_topic: "counts".into(),
        counts_partitions: 1,
        views_epoch: 0,
        rules: rules(),
        read_timeout: Duration::from_secs(1),
        stop: CancellationToken::new(),
    };
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let claimer =
        Claimer::new(producer, "counts".into(), 1, "test".into(), Duration::from_secs(1), CancellationToken::new());
    let metrics = CounterMetrics::register(&Registry::new()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(recovery, claimer, metrics, done_rx, jobs_tx));
    let consumer: BaseConsumer<CounterContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "tally-counter-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(CounterContext { shared: shared.clone() })
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition(VIEWS, 0);
    consumer.assign(&assignment).unwrap();
    Harness { shared, consumer, _jobs: jobs_rx, completions: done_tx }
}

fn record(id: &str) -> Vec<u8> {
    let t = 1_795_341_600_000;
    let event = ViewEvent {
        video_id: VideoId::parse("v").unwrap(),
        ts_ms: t,
        event_id: EventId::parse(id).unwrap(),
        viewer_id: None,
        attributes: None,
        received_ms: t,
    };
    let mut out = Vec::new();
    tally_model::wire::encode(&event, Salt::NONE, &mut out);
    out
}

/// What the emitter reports once every record of `job` is acknowledged.
fn acknowledged(job: &FlushJob) -> Completion {
    Completion {
        partition: job.partition,
        owner: job.owner(),
        end: job.header.end,
        rows: job.rows.len(),
        sealed_at: job.sealed_at,
    }
}

/// Counts offsets `range` into the state of partition 0 and seals them as
/// the processing thread does.
fn count_and_seal(h: &Harness, range: std::ops::Range<i64>) -> FlushJob {
    let mut inner = h.shared.lock();
    let state = inner.partitions.owned_mut(0).expect("partition 0 is owned");
    for offset in range {
        state
            .process(Input { offset, log_ms: None, key: b"", payload: &record(&format!("e{offset}")) }, &rules())
            .unwrap();
    }
    let job = state.seal(Instant::now(), &rules());
    drop(inner);
    job
}

fn own(h: &Harness, owner: u64) {
    let state = PartitionState::new(0, 0, owner, 0, Dedup::new(600_000, 1_000), vec![]);
    h.shared.lock().partitions.own(state).unwrap();
}

/// The end partition 0 waits to commit, and the end of its flush in flight.
fn ends(h: &Harness) -> (Option<i64>, Option<i64>) {
    let inner = h.shared.lock();
    let state = inner.partitions.held(0).expect("partition 0 is held");
    (state.acknowledged(), state.in_flight())
}

/// The sequence of issue 15, item 3: a revoke gives up on an unacknowledged
/// flush, the same member claims the partition again (a new owner, resuming
/// at the last committed end), and only then is the old flush acknowledged
/// (the writer fences it: its chunks landed after the new claim). Its end
/// must not be committed for the new owner, who has not counted that range.
#[test]
fn a_completion_of_a_previous_owner_is_not_committed_for_the_next() {
    let h = harness();
    own(&h, 0xA);
    let old_flush = count_and_seal(&h, 0..10);
    assert_eq!(old_flush.owner(), 0xA);

    // The revoke gave up waiting: the partition is released, its flush still unacknowledged.
    {
        let mut inner = h.shared.lock();
        inner.partitions.drain(|p| p == 0);
        h.shared.forget(&mut inner, |p| p == 0);
    }
    // Assigned again: claimed as a new owner, resuming at the committed offset (none: 0).
    own(&h, 0xB);
    let new_flush = count_and_seal(&h, 0..4);

    h.completions.send(acknowledged(&old_flush)).unwrap();
    h.shared.complete_ready(&mut h.shared.lock(), &h.consumer).unwrap();
    assert_eq!(ends(&h), (None, Some(4)), "the previous owner's end must not be committed");
    assert_eq!(h.shared.metrics.stale_completions.get(), 1);

    h.completions.send(acknowledged(&new_flush)).unwrap();
    h.shared.complete_ready(&mut h.shared.lock(), &h.consumer).unwrap();
    assert_eq!(ends(&h), (Some(4), None), "the new owner's own end is committed");
}
