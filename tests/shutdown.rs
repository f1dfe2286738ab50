//! Services asked to stop while their broker is gone still exit within their
//! drain budget (`shutdown.drain-timeout`, 10 s in the test configuration),
//! instead of waiting out a group session for a coordinator that is not there.

mod common;

use std::time::{Duration, Instant};

use common::{counter_writer_sections, write_config, Load, TallyProcess, ViewsProducer};
use tally_testkit::{bounded, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_and_writer_whose_broker_is_gone_exit_within_their_drain_budget() {
    bounded(Duration::from_secs(150), async {
        let mut broker = Broker::start();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let sections = counter_writer_sections(&dir.path().join("counts.db"), "");
        let config = write_config(dir.path(), &kafka, &sections);
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let mut producer = ViewsProducer::new(&kafka, &[]);
        producer.send(&Load::new(11).batch(500, tally_model::timestamp::now_ms(), 10)).await;
        assert!(writer.wait_for_metric("tally_writer_batches_total", 1.0, Duration::from_secs(60)), "the writer wrote");
        drop(producer);
        broker.kill();
        let stopping = Instant::now();
        let (counter_exit, writer_exit) = tokio::join!(
            tokio::task::spawn_blocking(move || counter.terminate(Duration::from_secs(60))),
            tokio::task::spawn_blocking(move || writer.terminate(Duration::from_secs(60))),
        );
        let (counter_exit, writer_exit) = (counter_exit.unwrap(), writer_exit.unwrap());
        let took = stopping.elapsed();
        eprintln!("counter {counter_exit}, writer {writer_exit}, both gone after {took:?}");
        // Everything fits the 10 s drain, and the process exits at most 2 s
        // after it; a group session (45 s by default) waited out would not.
        assert!(took < Duration::from_secs(20), "stopped after {took:?}");
        // Within the budget, not cut off by it (exit code 5 says the drain timed out).
        assert!(counter_exit.success() && writer_exit.success(), "counter {counter_exit}, writer {writer_exit}");
    })
    .await;
}
