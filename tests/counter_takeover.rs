//! A counter that dies without leaving the group (kill -9) while another
//! counter stays: its partitions must be taken over once the dead member's
//! session (6 s in the test configuration) expires, and counting stays exact.

mod common;

use std::time::{Duration, Instant};

use common::{feed_until, process_sections, write_config, Load, TallyProcess, ViewsProducer};
use tally_testkit::{bounded, Broker, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_killed_without_leaving_has_its_partitions_taken_over() {
    bounded(Duration::from_secs(200), async {
        let broker = Broker::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let sections = process_sections(dir.path(), &redis.url(), 0, 0, "");
        let config = write_config(dir.path(), &kafka, &sections);
        let owned = |p: &TallyProcess| p.metric("tally_counter_owned_partitions");

        let survivor = TallyProcess::spawn(&config, "counter");
        assert!(survivor.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(30)));
        let doomed = TallyProcess::spawn(&config, "counter");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(owned(&survivor) == Some(2.0) && owned(&doomed) == Some(2.0)) {
            assert!(Instant::now() < deadline, "the two counters never split the partitions");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        doomed.kill9();
        // Records keep arriving on every partition, the dead member's too.
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut load = Load::new(7);
        let feed = (20, Duration::from_millis(500));
        let what = "the dead counter's partitions were taken over";
        let took =
            feed_until(&mut producer, &mut load, feed, Duration::from_secs(90), what, || owned(&survivor) == Some(4.0))
                .await;
        eprintln!("partitions taken over {took:?} after the kill");
        survivor.kill9();
    })
    .await;
}
