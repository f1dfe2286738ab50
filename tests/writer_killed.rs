//! The writer killed with `kill -9` at random moments under load: the store
//! ends with the exact counts (replays are no-ops, nothing committed is lost).
//! And one of two writers in a group killed without leaving: the other takes
//! its partitions over once the dead member's session (6 s in the test
//! configuration) expires.

mod common;

use std::time::Duration;

use common::query::store_totals_become;
use common::{counter_writer_sections, feed_until, write_config, Load, TallyProcess, ViewsProducer};
use tally_testkit::{bounded, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_at_random_moments_leaves_exact_totals() {
    bounded(Duration::from_secs(280), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("counts.db");
        let config = write_config(dir.path(), &kafka, &counter_writer_sections(&db, "batch-max-records = 20"));
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("seed {seed}");
        let mut rng = Load::new(seed ^ 0xdead);
        let mut load = Load::new(seed);
        let mut producer = ViewsProducer::new(&kafka, &["video-1"]);
        let _counter = TallyProcess::spawn(&config, "counter");
        let mut writer = TallyProcess::spawn(&config, "writer");
        for _ in 0..6 {
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
            assert!(
                writer.wait_for_metric("tally_writer_batches_total", 1.0, Duration::from_secs(60)),
                "the writer came back and wrote"
            );
            producer.send(&load.batch(500, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_millis(rng.rand() % 1_200)).await;
            writer.kill9();
            writer = TallyProcess::spawn(&config, "writer");
        }
        store_totals_become(&db, &producer.expected, Duration::from_secs(90), "after the kills").await;
        assert!(writer.terminate(Duration::from_secs(30)).success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_without_leaving_has_its_partitions_taken_over() {
    bounded(Duration::from_secs(240), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("counts.db");
        let config = write_config(dir.path(), &kafka, &counter_writer_sections(&db, ""));
        let owned = |p: &TallyProcess| p.metric("tally_writer_owned_partitions");
        let mut load = Load::new(0x3717_e575);
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let _counter = TallyProcess::spawn(&config, "counter");
        let survivor = TallyProcess::spawn(&config, "writer");
        assert!(survivor.wait_for_metric("tally_writer_owned_partitions", 4.0, Duration::from_secs(30)));
        let doomed = TallyProcess::spawn(&config, "writer");
        let split = || owned(&survivor) == Some(2.0) && owned(&doomed) == Some(2.0);
        let feed = (50, Duration::from_millis(200));
        feed_until(
            &mut producer,
            &mut load,
            feed,
            Duration::from_secs(60),
            "the two writers split the partitions",
            split,
        )
        .await;
        doomed.kill9();
        // Counts keep arriving on every partition, the dead writer's too.
        let feed = (50, Duration::from_millis(500));
        let what = "the dead writer's partitions were taken over";
        let took =
            feed_until(&mut producer, &mut load, feed, Duration::from_secs(90), what, || owned(&survivor) == Some(4.0))
                .await;
        eprintln!("partitions taken over {took:?} after the kill");
        store_totals_become(&db, &producer.expected, Duration::from_secs(60), "after the takeover").await;
        assert!(survivor.terminate(Duration::from_secs(30)).success());
    })
    .await;
}
