//! Dead letters are kept, not dropped: events dead-lettered as late are
//! counted once the lateness limit is raised and `tally dlq replay` re-injects them.

use std::time::{Duration, Instant};

use prometheus::Registry;
use tally::dlq_replay::{replay, ReplayOptions};
use tally_counter::{CounterConfig, CounterService};
use tally_service::Readiness;
use tally_testkit::counts::views_per_video;
use tally_testkit::topic::wait_quiet;
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker};
use tokio_util::sync::CancellationToken;

async fn run_counter(
    kafka: &tally_kafka::KafkaConfig,
    lateness: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = CounterConfig {
        flush_interval: Duration::from_millis(200),
        allowed_lateness: lateness,
        group_id: format!("tally-counter-{}", kafka.topics.views),
        ..CounterConfig::default()
    };
    let counter = CounterService::build(&config, kafka, &Registry::new(), &Readiness::default()).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { counter.run(stop, Duration::from_secs(5)).await.unwrap() }
    });
    (stop, task)
}

/// Views of `video` in the counts topic, by an oracle independent of the writer's fold.
async fn total(kafka: &tally_kafka::KafkaConfig, video: &str) -> i64 {
    let k = kafka.clone();
    let views = tokio::task::spawn_blocking(move || views_per_video(&k, Duration::from_secs(30))).await.unwrap();
    views.get(video).copied().unwrap_or(0)
}

async fn wait_total(kafka: &tally_kafka::KafkaConfig, video: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while total(kafka, video).await != want {
        assert!(Instant::now() < deadline, "{video} never reached {want}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_replayed_from_the_dlq_after_raising_the_limit_are_counted_once() {
    bounded(Duration::from_secs(180), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let now = tally_model::timestamp::now_ms();
        let two_hours = 2 * 3_600_000;
        let events: Vec<_> = (0..20)
            .map(|i| ("offline".to_owned(), format!("o{i}"), now - two_hours, now, false))
            .chain((0..5).map(|i| ("offline".to_owned(), format!("fresh{i}"), now, now, true)))
            .collect();
        producer.send(&events).await;
        producer.send_raw("offline", b"garbage").await;

        let (stop, task) = run_counter(&kafka, Duration::from_secs(3600)).await;
        wait_total(&kafka, "offline", 5).await;
        stop.cancel();
        task.await.unwrap();

        let dlq = kafka.topics.views_dlq.clone();
        let options =
            move |kind: &str, dry_run| ReplayOptions { dlq_topic: dlq.clone(), kind: Some(kind.into()), dry_run };
        let k = kafka.clone();
        let dry = {
            let o = options("late", true);
            tokio::task::spawn_blocking(move || replay(&k, &o))
        }
        .await
        .unwrap()
        .unwrap();
        assert_eq!(dry.replayed, 20);
        let (stop, task) = run_counter(&kafka, Duration::from_secs(3 * 3600)).await;
        let k = kafka.clone();
        let report = {
            let o = options("late", false);
            tokio::task::spawn_blocking(move || replay(&k, &o))
        }
        .await
        .unwrap()
        .unwrap();
        assert_eq!((report.replayed, report.filtered), (20, 1), "the malformed record stays for another run");
        wait_total(&kafka, "offline", 25).await;
        // A second replay finds nothing new: progress was committed.
        let k = kafka.clone();
        let again = {
            let o = options("late", false);
            tokio::task::spawn_blocking(move || replay(&k, &o))
        }
        .await
        .unwrap()
        .unwrap();
        assert_eq!(again.replayed, 0);
        // Once the counter has committed the whole views topic, every replayed
        // record is counted and nothing more will be: still 25.
        let (k, group) = (kafka.clone(), format!("tally-counter-{}", kafka.topics.views));
        let quiet =
            tokio::task::spawn_blocking(move || wait_quiet(&k, &[(&group, &k.topics.views)], Duration::from_secs(60)))
                .await
                .unwrap();
        assert!(quiet, "the counter committed the whole views topic");
        assert_eq!(total(&kafka, "offline").await, 25, "counted once");
        stop.cancel();
        task.await.unwrap();
    })
    .await;
}
