//! End-to-end counter throughput on a pre-filled topic: a real tansu broker
//! (in-memory engine, the fastest this machine can run), 4 partitions filled
//! with 1,000,000 views records, then one counter process-equivalent
//! (in-process `CounterService`) counts them from offset 0.
//!
//! `cargo bench -p tally-counter --bench pipeline` (needs tansu: scripts/setup).
//! Reports events/s from the moment the counter owns all partitions until
//! every record is counted, with the broker on the same 2 cores.

use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_counter::{CounterConfig, CounterService};
use tally_service::Readiness;
use tally_testkit::views::{Load, ViewsProducer};
use tally_testkit::Broker;
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 1_000_000;

fn counted(registry: &Registry) -> (f64, f64) {
    let value = tally_testkit::metrics::value;
    (value(registry, "tally_counter_events_total", None), value(registry, "tally_counter_owned_partitions", None))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start_in_memory();
    let kafka = tally_testkit::kafka_config(&broker);
    tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await.expect("topics");
    let mut producer = ViewsProducer::new(&kafka, &[]);
    let mut load = Load::new(42);
    let fill = Instant::now();
    for _ in 0..(RECORDS / 10_000) {
        producer.send(&load.batch(10_000, tally_model::timestamp::now_ms(), 10)).await;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    let registry = Registry::new();
    let service = CounterService::build(&CounterConfig::default(), &kafka, &registry, &Readiness::default())
        .await
        .expect("counter");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(service.run(shutdown.clone(), Duration::from_secs(10)));
    let mut owned_at = None;
    loop {
        let (events, owned) = counted(&registry);
        if owned_at.is_none() && owned >= 4.0 {
            owned_at = Some(Instant::now());
        }
        if events >= RECORDS as f64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "counter did not finish: {events} of {RECORDS}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    let owned_at = owned_at.unwrap_or(started);
    let secs = done.duration_since(owned_at).as_secs_f64();
    println!(
        "counter end-to-end on a pre-filled topic (tansu memory engine, 4 partitions, same 2 cores): \
         {RECORDS} records in {secs:.2} s = {:.0} events/s after taking over; {:.2} s including group join; fill {:.0} records/s",
        RECORDS as f64 / secs,
        done.duration_since(started).as_secs_f64(),
        RECORDS as f64 / fill_secs
    );
    shutdown.cancel();
    let _ = task.await;
}
