//! The writer against a real broker, with the real counter in front of it:
//! replays change nothing, and an unavailable store only delays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_cache::{CacheBackend, MemoryCache};
use tally_counter::{CounterConfig, CounterService};
use tally_kafka::KafkaConfig;
use tally_service::Readiness;
use tally_store::{CountStore, SqliteStore};
use tally_testkit::store::SwitchableStore;
use tally_testkit::views::{Load, ViewsProducer};
use tally_testkit::{bounded, Broker};
use tally_writer::{WriterConfig, WriterService};
use tokio_util::sync::CancellationToken;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn setup() -> (Broker, KafkaConfig) {
    init_logs();
    let broker = Broker::shared();
    let kafka = tally_testkit::kafka_with_topics(&broker).await;
    (broker, kafka)
}

fn start_counter(kafka: &KafkaConfig) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let kafka = kafka.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let config = CounterConfig {
            flush_interval: Duration::from_millis(200),
            group_id: format!("tally-counter-{}", kafka.topics.views),
            ..CounterConfig::default()
        };
        let counter = CounterService::build(&config, &kafka, &Registry::new(), &Readiness::default()).await.unwrap();
        counter.run(stop, Duration::from_secs(5)).await.unwrap();
    });
    shutdown
}

async fn start_writer<S: CountStore + Clone>(
    kafka: &KafkaConfig,
    store: S,
    group: &str,
    registry: &Registry,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = WriterConfig {
        // Unique to the test: the broker may be shared by tests running at once.
        group_id: format!("{group}-{}", kafka.topics.counts),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_millis(400),
        ..WriterConfig::default()
    };
    let cache = Some(CacheBackend::Memory(MemoryCache::default()));
    let writer = WriterService::build(&config, kafka, store, cache, registry, &Readiness::default()).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let stop = shutdown.clone();
        async move { writer.run(stop).await.unwrap() }
    });
    (shutdown, task)
}

async fn store_totals(store: &impl CountStore, videos: &[String]) -> BTreeMap<String, i64> {
    store
        .totals(videos.to_vec())
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.views > 0)
        .map(|t| (t.video_id, t.views))
        .collect()
}

async fn wait_for(store: &impl CountStore, expected: &BTreeMap<String, i64>, limit: Duration) -> BTreeMap<String, i64> {
    let videos: Vec<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + limit;
    loop {
        let totals = store_totals(store, &videos).await;
        if &totals == expected || Instant::now() > deadline {
            return totals;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(registry: &Registry, name: &str, label: Option<&str>) -> f64 {
    tally_testkit::metrics::value(registry, name, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_counts_topic_from_offset_zero_changes_no_total() {
    bounded(Duration::from_secs(180), async {
        let (_broker, kafka) = setup().await;
        let counter = start_counter(&kafka);
        let mut producer = ViewsProducer::new(&kafka, &["video-1"]);
        let mut load = Load::new(11);
        for _ in 0..5 {
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();
        let first = Registry::new();
        let (stop, task) = start_writer(&kafka, store.clone(), "writer-a", &first).await;
        let totals = wait_for(&store, &producer.expected, Duration::from_secs(60)).await;
        assert_eq!(totals, producer.expected, "the store holds the exact counts");
        let applied = metric(&first, "tally_writer_deltas_total", Some("applied"));
        assert!(applied > 0.0);
        stop.cancel();
        task.await.unwrap();

        // A new consumer group reads the whole counts topic again from offset 0.
        let second = Registry::new();
        let (stop, task) = start_writer(&kafka, store.clone(), "writer-replay", &second).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&second, "tally_writer_deltas_total", Some("stale")) < applied {
            assert!(Instant::now() < deadline, "replay did not finish");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(metric(&second, "tally_writer_deltas_total", Some("applied")), 0.0, "a replay applies nothing");
        let videos: Vec<String> = producer.expected.keys().cloned().collect();
        assert_eq!(store_totals(&store, &videos).await, producer.expected, "totals unchanged by the replay");
        stop.cancel();
        task.await.unwrap();
        counter.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_delays_writes_and_loses_nothing() {
    bounded(Duration::from_secs(180), async {
        let (_broker, kafka) = setup().await;
        let counter = start_counter(&kafka);
        let store = SwitchableStore::new(SqliteStore::in_memory().unwrap());
        store.set_down(true);
        let registry = Registry::new();
        let (stop, task) = start_writer(&kafka, store.clone(), "writer", &registry).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut load = Load::new(3);
        for _ in 0..3 {
            producer.send(&load.batch(500, tally_model::timestamp::now_ms(), 5)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&registry, "tally_writer_retries_total", None) < 3.0 {
            assert!(Instant::now() < deadline, "the writer never retried");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(metric(&registry, "tally_writer_breaker_state", None), 2.0, "breaker open while down");
        store.set_down(false);
        let totals = wait_for(&store, &producer.expected, Duration::from_secs(60)).await;
        assert_eq!(totals, producer.expected);
        assert_eq!(metric(&registry, "tally_writer_breaker_state", None), 0.0, "closed again");
        stop.cancel();
        task.await.unwrap();
        counter.cancel();
    })
    .await;
}
