//! Writer throughput through Kafka into the embedded store: a real Apache
//! Kafka broker of its own whose counts topic is pre-filled with counter
//! chunks (4 source partitions, 1,000 distinct videos per flush, 500 deltas
//! per chunk as the counter emits them), then a `WriterService` over a fresh
//! on-disk SQLite store applies them from offset 0. Repeated `RUNS` times with
//! a new consumer group and a new store each; prints every run and the median.
//!
//! `cargo bench -p tally-writer --bench throughput` (needs Kafka: scripts/setup).
//! Rows are deltas applied (one minute row plus its three rollups each).

use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::producer::FutureRecord;
use tally_kafka::clients::{idempotent_producer, ProducerSettings};
use tally_model::counts::{self, FlushHeader};
use tally_model::Salt;
use tally_service::Readiness;
use tally_store::SqliteStore;
use tally_testkit::Broker;
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
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("counts.db")).expect("store");
        let registry = Registry::new();
        let config = WriterConfig { group_id: format!("writer-bench-{run}"), ..WriterConfig::default() };
        let writer =
            WriterService::build(&config, &kafka, store, None, &registry, &Readiness::default()).await.expect("writer");
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
            assert!(started.elapsed() < Duration::from_secs(300), "writer did not finish: {done} of {rows}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = first_at.unwrap_or(started).elapsed().as_secs_f64();
        let rate = rows / secs;
        println!("run {run}: {rows} rows applied in {secs:.2} s: {rate:.0} rows/s (from the first applied batch)");
        rates.push(rate);
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    rates.sort_by(f64::total_cmp);
    println!("writer through Kafka into SQLite: median {:.0} rows/s over {RUNS} runs", rates[RUNS / 2]);
}
