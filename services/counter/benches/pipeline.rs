//! End-to-end counter throughput on a pre-filled topic: a real Apache Kafka
//! broker of its own (one KRaft node, 512 MB heap), 4 partitions filled
//! with 1,000,000 views records, then one counter process-equivalent
//! (in-process `CounterService`) counts them from offset 0.
//!
//! `cargo bench -p tally-counter --bench pipeline` (needs Kafka: scripts/setup).
//! Reports events/s from the moment the counter owns all partitions until
//! every record is counted, with the broker on the same 2 cores, and the CPU
//! time the counter process (all its threads, librdkafka's included) and the
//! broker spent meanwhile: events per CPU-second is the per-core figure, and
//! it holds when other work shares the machine.
//!
//! Knobs: `TALLY_BENCH_FLUSH_MS` (flush interval, default 100 ms: the events
//! metric moves when a range is sealed, so the finish time is rounded up to a
//! flush tick) and `TALLY_BENCH_CONSUMER_PROPS="key=value,..."` (librdkafka
//! consumer properties to try).

use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_counter::{CounterConfig, CounterService};
use tally_service::Readiness;
use tally_testkit::views::{Load, ViewsProducer};
use tally_testkit::Broker;
use tokio_util::sync::CancellationToken;

/// The allocator the `tally` binary runs with (malloc overridden for librdkafka too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 1_000_000;

/// CPU seconds (user + system, all threads) of process `pid` so far, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn counted(registry: &Registry) -> (f64, f64) {
    let value = tally_testkit::metrics::value;
    (value(registry, "tally_counter_events_total", None), value(registry, "tally_counter_owned_partitions", None))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start();
    let mut kafka = tally_testkit::kafka_config(&broker);
    for pair in std::env::var("TALLY_BENCH_CONSUMER_PROPS").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').expect("key=value");
        kafka.consumer_properties.insert(key.to_owned(), value.to_owned());
    }
    tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await.expect("topics");
    let mut producer = ViewsProducer::new(&kafka, &[]);
    let mut load = Load::new(42);
    let fill = Instant::now();
    for _ in 0..(RECORDS / 10_000) {
        producer.send(&load.batch(10_000, tally_model::timestamp::now_ms(), 10)).await;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    let registry = Registry::new();
    // The events metric moves when a range is sealed: with the default 1 s
    // flush interval the finish time would be rounded up to a whole second of
    // the run. 100 ms bounds that error to a few percent.
    let flush_ms = std::env::var("TALLY_BENCH_FLUSH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let config = CounterConfig { flush_interval: Duration::from_millis(flush_ms), ..CounterConfig::default() };
    let service = CounterService::build(&config, &kafka, &registry, &Readiness::default()).await.expect("counter");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(service.run(shutdown.clone(), Duration::from_secs(10)));
    let (own_pid, broker_pid) = (std::process::id(), broker.pid().expect("broker runs"));
    let mut owned_at = None;
    let mut cpu_at_owned = (0.0, 0.0);
    loop {
        let (events, owned) = counted(&registry);
        if owned_at.is_none() && owned >= 4.0 {
            owned_at = Some(Instant::now());
            cpu_at_owned = (cpu_seconds(own_pid), cpu_seconds(broker_pid));
        }
        if events >= RECORDS as f64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "counter did not finish: {events} of {RECORDS}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    let (counter_cpu, broker_cpu) = (cpu_seconds(own_pid) - cpu_at_owned.0, cpu_seconds(broker_pid) - cpu_at_owned.1);
    let owned_at = owned_at.unwrap_or(started);
    let secs = done.duration_since(owned_at).as_secs_f64();
    println!(
        "counter end-to-end on a pre-filled topic (Apache Kafka, 4 partitions, same 2 cores, flush every {flush_ms} ms): \
         {RECORDS} records in {secs:.2} s = {:.0} events/s after taking over; {:.2} s including group join; fill {:.0} records/s; \
         CPU meanwhile: counter process {counter_cpu:.2} s = {:.0} events per CPU-second, broker {broker_cpu:.2} s",
        RECORDS as f64 / secs,
        done.duration_since(started).as_secs_f64(),
        RECORDS as f64 / fill_secs,
        RECORDS as f64 / counter_cpu.max(0.01),
    );
    shutdown.cancel();
    let _ = task.await;
}
