//! Writer throughput through Kafka into each store: a real Apache Kafka
//! broker of its own whose counts topic is pre-filled with counter chunks (4
//! source partitions, 1,000 distinct videos per flush, 500 deltas per chunk
//! as the counter emits them), then a `WriterService` applies them from
//! offset 0 into a fresh store: an on-disk SQLite file (the embedded store),
//! and a fresh keyspace on a real Apache Cassandra 5.0 node of its own (one
//! node, 1 GB heap, `commitlog_sync: batch` as a single replica needs;
//! consistency `one`, the only quorum of one replica). Repeated `RUNS` times
//! per store, the stores alternating, with a new consumer group each; prints
//! every run and the medians.
//!
//! `cargo bench -p tally-writer --bench throughput` (needs Kafka and
//! Cassandra: scripts/setup). `TALLY_BENCH_STORES` lists the stores measured:
//! `sqlite`, `cassandra` (the default: both), and `cassandra-periodic`, a
//! second node with Cassandra's default `commitlog_sync: periodic`, which
//! acknowledges before syncing (what durability costs). Rows are deltas
//! applied (one minute row plus its three rollups each).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::producer::FutureRecord;
use tally_kafka::clients::{idempotent_producer, ProducerSettings};
use tally_kafka::KafkaConfig;
use tally_model::counts::{self, FlushHeader};
use tally_model::Salt;
use tally_service::Readiness;
use tally_store::scylla::{ConsistencyLevel, ScyllaConfig, ScyllaStore};
use tally_store::{CountStore, SqliteStore};
use tally_testkit::{Broker, Cassandra, CommitLogSync};
use tally_writer::{WriterConfig, WriterService};
use tokio_util::sync::CancellationToken;

const SOURCE_PARTITIONS: u32 = 4;
const FLUSHES_PER_PARTITION: u32 = 100;
const VIDEOS_PER_FLUSH: u32 = 1_000;
const CHUNK_ROWS: u32 = 500;
const RUNS: usize = 3;

fn applied(registry: &Registry) -> f64 {
    tally_testkit::metrics::value(registry, "tally_writer_deltas_total", Some("applied"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start();
    let kafka = tally_testkit::kafka_with_topics(&broker).await;
    let settings = ProducerSettings {
        delivery_timeout: Duration::from_secs(60),
        linger: Duration::from_millis(5),
        queue_capacity: 100_000,
    };
    let producer = idempotent_producer(&kafka, "writer-bench-fill", &settings).expect("producer");
    let minute = tally_model::timestamp::now_ms() / 60_000 * 60_000;
    let mut deliveries = Vec::new();
    for partition in 0..SOURCE_PARTITIONS {
        for flush in 0..FLUSHES_PER_PARTITION {
            let (start, end) = (i64::from(flush) * 10_000, i64::from(flush + 1) * 10_000);
            let chunk_count = VIDEOS_PER_FLUSH.div_ceil(CHUNK_ROWS);
            for chunk in 0..chunk_count {
                let header = FlushHeader {
                    epoch: 0,
                    source_partition: partition,
                    owner: 1,
                    start,
                    end,
                    chunk_index: chunk,
                    chunk_count,
                    dedup_horizon: 0,
                    max_received_ms: minute,
                    stats: Default::default(),
                };
                // Videos repeat across flushes (hot videos get many rows), as under load.
                let videos: Vec<String> =
                    (chunk * CHUNK_ROWS..(chunk + 1) * CHUNK_ROWS).map(|v| format!("video-{partition}-{v}")).collect();
                let payload = counts::encode(&header, videos.iter().map(|v| (v.as_str(), Salt(0), minute, 10)));
                let key = partition.to_string();
                let record = FutureRecord::to(&kafka.topics.counts)
                    .partition(i32::try_from(partition % 4).unwrap())
                    .key(&key)
                    .payload(&payload);
                deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
            }
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivered").expect("acknowledged");
    }
    let rows = f64::from(SOURCE_PARTITIONS * FLUSHES_PER_PARTITION * VIDEOS_PER_FLUSH);
    let stores = std::env::var("TALLY_BENCH_STORES").unwrap_or_else(|_| "sqlite,cassandra".into());
    let wanted = |store: &str| stores.split(',').any(|s| s.trim() == store);
    let cassandra_nodes: Vec<(&str, &str, Cassandra)> = [
        ("Cassandra", "cassandra", CommitLogSync::Batch),
        ("Cassandra, periodic commit log", "cassandra-periodic", CommitLogSync::Periodic),
    ]
    .into_iter()
    .filter(|(_, key, _)| wanted(key))
    .map(|(name, key, sync)| (name, key, Cassandra::start_with_commitlog(sync)))
    .collect();
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        if wanted("sqlite") {
            let store = SqliteStore::open(&dir.path().join("counts.db")).expect("store");
            let rate = measure(&kafka, store, &format!("writer-bench-sqlite-{run}"), rows).await;
            println!(
                "run {run}, SQLite: {rows} rows in {:.2} s: {rate:.0} rows/s (from the first applied batch)",
                rows / rate
            );
            rates.entry("SQLite").or_default().push(rate);
        }
        for (name, key, cassandra) in &cassandra_nodes {
            let config = ScyllaConfig {
                nodes: vec![cassandra.contact_point()],
                keyspace: format!("writer_bench_{run}_{}", std::process::id()),
                consistency: ConsistencyLevel::One,
                create_schema: true,
                ..ScyllaConfig::default()
            };
            let store = ScyllaStore::connect(config).await.expect("Cassandra store");
            let rate = measure(&kafka, store, &format!("writer-bench-{key}-{run}"), rows).await;
            println!(
                "run {run}, {name}: {rows} rows in {:.2} s: {rate:.0} rows/s (from the first applied batch)",
                rows / rate
            );
            rates.entry(name).or_default().push(rate);
        }
    }
    for (store, mut runs) in rates {
        runs.sort_by(f64::total_cmp);
        println!(
            "writer through Kafka into {store}: median {:.0} rows/s over {} runs",
            runs[runs.len() / 2],
            runs.len()
        );
    }
}

/// Applies the whole counts topic into `store` with a writer of group
/// `group`; rows per second from its first applied batch to the last.
async fn measure<S: CountStore>(kafka: &KafkaConfig, store: S, group: &str, rows: f64) -> f64 {
    let registry = Registry::new();
    let config = WriterConfig { group_id: group.to_owned(), ..WriterConfig::default() };
    let writer =
        WriterService::build(&config, kafka, store, None, &registry, &Readiness::default()).await.expect("writer");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(writer.run(shutdown.clone()));
    let mut first_at = None;
    let started = Instant::now();
    loop {
        let done = applied(&registry);
        if first_at.is_none() && done > 0.0 {
            first_at = Some(Instant::now());
        }
        if done >= rows {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "writer did not finish: {done} of {rows}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = first_at.unwrap_or(started).elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    rows / secs
}
