//! A zombie counter: frozen (SIGSTOP) past its session while another counter
//! takes its partitions over, then thawed with a range still buffered. It
//! emits that range under its old claim; the fence must drop it (the
//! successor has recounted it), so the totals stay exact. The thawed counter
//! then rejoins its group and counts again.

mod common;

use std::time::{Duration, Instant};

use common::{feed_until, write_config, Load, TallyProcess, ViewsProducer};
use tally_counter::verify::{fold_counts, Folded};
use tally_kafka::KafkaConfig;
use tally_testkit::counts::settled_views;
use tally_testkit::{bounded, Broker};

/// The survivor flushes often.
const SURVIVOR: &str = r#"
[counter]
admin-listen = "127.0.0.1:0"
flush-interval = "200ms"
chunk-rows = 50
"#;

/// The future zombie flushes rarely, so it is frozen with a range buffered.
const ZOMBIE: &str = r#"
[counter]
admin-listen = "127.0.0.1:0"
flush-interval = "3s"
chunk-rows = 50
"#;

async fn fold(kafka: &KafkaConfig) -> Folded {
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || fold_counts(&k, &k.topics.counts, Duration::from_secs(60)))
        .await
        .expect("fold task")
        .expect("fold counts")
}

fn owned(process: &TallyProcess) -> Option<f64> {
    process.metric("tally_counter_owned_partitions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_zombie_counters_range_is_fenced_and_counted_once() {
    bounded(Duration::from_secs(400), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let survivor_dir = tempfile::tempdir().unwrap();
        let zombie_dir = tempfile::tempdir().unwrap();
        let survivor_config = write_config(survivor_dir.path(), &kafka, SURVIVOR);
        let zombie_config = write_config(zombie_dir.path(), &kafka, ZOMBIE);
        let mut load = Load::new(0x2011_b1e5);
        let mut producer = ViewsProducer::new(&kafka, &[]);

        let survivor = TallyProcess::spawn(&survivor_config, "counter");
        assert!(survivor.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(30)));
        // Whether the thawed zombie emits before it notices it was fenced
        // out of the group is a race; try a few zombies until one did.
        let mut fenced = 0;
        for attempt in 1..=3 {
            let mut zombie = TallyProcess::spawn(&zombie_config, "counter");
            let split = || owned(&survivor) == Some(2.0) && owned(&zombie) == Some(2.0);
            let feed = (50, Duration::from_millis(200));
            feed_until(
                &mut producer,
                &mut load,
                feed,
                Duration::from_secs(60),
                "the two counters split the partitions",
                split,
            )
            .await;
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            zombie.freeze();
            let feed = (100, Duration::from_millis(500));
            let what = "the frozen counter's partitions were taken over";
            let frozen_for = feed_until(&mut producer, &mut load, feed, Duration::from_secs(90), what, || {
                owned(&survivor) == Some(4.0)
            })
            .await;
            // Let the survivor count past the zombie's buffered range.
            producer.send(&load.batch(500, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            zombie.thaw();
            eprintln!("attempt {attempt}: taken over after {frozen_for:?} frozen; thawed");
            // The zombie emits what it had, finds the group moved on without
            // it, and rejoins: it counts again beside the survivor.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !(owned(&zombie) == Some(2.0) && owned(&survivor) == Some(2.0)) {
                assert!(!zombie.exited(), "the thawed counter stopped instead of rejoining its group");
                assert!(Instant::now() < deadline, "the thawed counter did not rejoin its group");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(zombie.terminate(Duration::from_secs(30)).success(), "the rejoined counter drained and stopped");
            fenced = fold(&kafka).await.fenced_chunks;
            eprintln!("attempt {attempt}: fenced chunks so far: {fenced}");
            if fenced > 0 {
                break;
            }
            // Back to one member before the next zombie joins.
            let deadline = Instant::now() + Duration::from_secs(60);
            while owned(&survivor) != Some(4.0) {
                assert!(Instant::now() < deadline, "the survivor never owned every partition again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(fenced > 0, "no thawed zombie emitted a range in three attempts: the fence was never exercised");

        producer.send(&load.batch(500, tally_model::timestamp::now_ms(), 10)).await;
        // Exact by an oracle independent of the writer's fold (and of its
        // fences), also once the survivor has committed the whole views topic.
        let group = format!("tally-counter-{}", kafka.topics.views);
        let settled = settled_views(&kafka, &group, &producer.expected, Duration::from_secs(90)).await;
        assert_eq!(settled, producer.expected, "exact after a zombie, and once the counter went quiet");
        let folded = fold(&kafka).await;
        assert!(folded.overlaps.is_empty(), "admitted ranges overlap: {:?}", folded.overlaps);
        let wrong: Vec<String> = producer
            .expected
            .iter()
            .filter(|(video, want)| folded.totals.get(*video) != Some(want))
            .map(|(video, want)| format!("{video}: counted {:?}, sent {want}", folded.totals.get(video)))
            .collect();
        assert!(wrong.is_empty(), "not exact after a zombie: {wrong:?}");
        assert_eq!(folded.totals.len(), producer.expected.len(), "no video counted that was not sent");
        eprintln!(
            "views: {}, claims: {}, fenced chunks: {}, stale deltas: {}",
            producer.expected.values().sum::<i64>(),
            folded.claims,
            folded.fenced_chunks,
            folded.stale_deltas
        );
        assert!(survivor.terminate(Duration::from_secs(30)).success());
    })
    .await;
}
