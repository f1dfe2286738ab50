//! Batch truth wins: the reconciler recounts a closed hour from the Parquet
//! archive, reports the exact drift of the real-time path, and reads return
//! the batch-correct counts afterwards; reconciling again changes nothing.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_cache::{CacheBackend, MemoryCache};
use tally_counter::{CounterConfig, CounterService};
use tally_kafka::KafkaConfig;
use tally_model::counts::{Delta, FlushChunk, FlushHeader};
use tally_model::Salt;
use tally_reconciler::archive::layout;
use tally_reconciler::coverage::ViewsLog;
use tally_reconciler::reconcile::{reconcile, ReconcileOptions};
use tally_reconciler::{ArchiverConfig, ArchiverService};
use tally_service::Readiness;
use tally_store::{CountStore, SqliteStore};
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker};
use tally_writer::{WriterConfig, WriterService};
use tokio_util::sync::CancellationToken;

fn archived(root: &Path) -> i64 {
    layout::list(root).unwrap().iter().map(|(_, (_, start, end))| end - start).sum()
}

/// A broker with Tally's topics, and a directory for the store and the archive.
async fn broker_with_topics() -> (Broker, KafkaConfig, tempfile::TempDir) {
    let broker = Broker::shared();
    let kafka = tally_testkit::kafka_with_topics(&broker).await;
    (broker, kafka, tempfile::tempdir().unwrap())
}

/// Hours close one hour after their end; files up to two hours later are read.
fn options(kafka: &KafkaConfig, archive_dir: &Path) -> ReconcileOptions {
    ReconcileOptions {
        archive: tally_reconciler::archive::storage::ArchiveStorage::Local(archive_dir.to_owned()),
        counting: CounterConfig { dedup_window: Duration::from_secs(60), ..CounterConfig::default() }.counting_rule(),
        lookback: Duration::from_secs(900),
        late_lookahead: Duration::from_secs(2 * 3600),
        views: ViewsLog::Kafka(Box::new(kafka.clone())),
        in_flight: Duration::from_secs(30),
    }
}

/// The whole pipeline in this process until `stop`: counter (dedup window
/// 1 minute), writer into `store`, archiver into `archive_dir`.
async fn start_pipeline(kafka: &KafkaConfig, store: &SqliteStore, archive_dir: &Path, stop: &CancellationToken) {
    let counter_config = CounterConfig {
        flush_interval: Duration::from_millis(200),
        dedup_window: Duration::from_secs(60),
        group_id: common::group_id("counter", kafka),
        ..CounterConfig::default()
    };
    let counter = CounterService::build(&counter_config, kafka, &Registry::new(), &Readiness::default()).await.unwrap();
    tokio::spawn(counter.run(stop.clone(), Duration::from_secs(5)));
    let cache = Some(CacheBackend::Memory(MemoryCache::default()));
    let writer = WriterService::build(
        &WriterConfig { group_id: common::group_id("writer", kafka), ..WriterConfig::default() },
        kafka,
        store.clone(),
        cache,
        &Registry::new(),
        &Readiness::default(),
    )
    .await
    .unwrap();
    tokio::spawn(writer.run(stop.clone()));
    let archiver_config = ArchiverConfig {
        dir: archive_dir.to_owned(),
        records_per_file: 100,
        seal_grace: Duration::from_millis(1),
        group_id: common::group_id("archiver", kafka),
        ..ArchiverConfig::default()
    };
    let archiver = ArchiverService::build(&archiver_config, kafka, &Registry::new()).unwrap();
    tokio::spawn(archiver.run(stop.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_reports_exact_drift_and_reads_become_batch_correct() {
    bounded(Duration::from_secs(180), async {
        let (_broker, kafka, dir) = broker_with_topics().await;
        let archive_dir = dir.path().join("archive");
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();
        let stop = CancellationToken::new();

        start_pipeline(&kafka, &store, &archive_dir, &stop).await;

        // An hour well in the past: closed for an allowed lateness of one hour.
        let hour = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut events = Vec::new();
        for i in 0..200 {
            let t = hour + i * 15_000;
            events.push((format!("v{}", i % 4), format!("e{i}"), t, t + 100, true));
        }
        // Seven client resends arriving 5 minutes later: outside the 1-minute
        // dedup window, so the real-time path counts them again, and so does
        // the recount (one rule for both).
        for i in 0..7 {
            let t = hour + i * 15_000;
            events.push((format!("v{}", i % 4), format!("e{i}"), t, t + 300_000, false));
        }
        producer.send(&events).await;
        let produced = events.len() as i64;
        let videos: Vec<String> = (0..4).map(|v| format!("v{v}")).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let realtime: i64 = store.totals(videos.clone()).await.unwrap().iter().map(|t| t.views).sum();
            if realtime == 207 && archived(&archive_dir) == produced {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline did not settle: realtime {realtime}, archived {}",
                archived(&archive_dir)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.cancel();

        // And a tampered real-time row: five views that never happened, on video v1.
        let tamper = FlushChunk {
            header: FlushHeader { source_partition: 99, end: 1, chunk_count: 1, ..FlushHeader::default() },
            deltas: vec![Delta { video_id: "v1".into(), salt: Salt(0), minute: hour + 600_000, count: 5 }],
            uniques: Vec::new(),
            trending: Vec::new(),
        };
        store.apply(vec![tally_store::CountsEntry::chunk(tamper)]).await.unwrap();

        let options = options(&kafka, &archive_dir);
        let reports = reconcile(&store, &options, hour, hour + 3_600_000, None, |_, _| {}).await.unwrap().reports;
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert_eq!((report.batch_views, report.realtime_views), (207, 212));
        assert_eq!(report.drift, -5, "the 5 tampered views, nothing else");
        assert_eq!(report.drifting_videos.len(), 1, "{:?}", report.drifting_videos);
        let v1 = &report.drifting_videos[0];
        assert_eq!(
            (v1.video_id.as_str(), v1.batch, v1.realtime),
            ("v1", 52, 57),
            "v1: 50 views, 2 resends counted again"
        );

        let totals = store.totals(videos.clone()).await.unwrap();
        let views: Vec<(i64, i64)> = totals.iter().map(|t| (t.views, t.batch_views)).collect();
        assert_eq!(views, vec![(52, 52), (52, 52), (52, 52), (51, 51)], "batch-correct reads: {totals:?}");
        assert_eq!(totals[0].exact_through_ms, Some(hour + 3_600_000));

        // Reconciling the same period again changes nothing.
        let again = reconcile(&store, &options, hour, hour + 3_600_000, None, |_, _| {}).await.unwrap().reports;
        assert_eq!(again[0].batch_views, 207);
        // (The batch generation moves: a rerun is a reconcile; counts do not.)
        let counts = |totals: &[tally_store::Total]| -> Vec<(i64, i64, Option<i64>)> {
            totals.iter().map(|t| (t.views, t.batch_views, t.exact_through_ms)).collect()
        };
        assert_eq!(counts(&store.totals(videos.clone()).await.unwrap()), counts(&totals));
        assert_eq!(store.periods().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_period_the_archive_does_not_cover_yet_waits_instead_of_being_corrected_down() {
    bounded(Duration::from_secs(120), async {
        let (_broker, kafka, dir) = broker_with_topics().await;
        let archive_dir = dir.path().join("archive");
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();

        // 40 views of one closed hour are in the log, and the real-time path counted them.
        let hour = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let events: Vec<_> = (0..40)
            .map(|i| ("w1".to_owned(), format!("e{i}"), hour + i * 60_000, hour + i * 60_000 + 50, true))
            .collect();
        ViewsProducer::new(&kafka, &[]).send(&events).await;
        let counted = FlushChunk {
            header: FlushHeader { source_partition: 0, end: 1, chunk_count: 1, ..FlushHeader::default() },
            deltas: vec![Delta { video_id: "w1".into(), salt: Salt(0), minute: hour, count: 40 }],
            uniques: Vec::new(),
            trending: Vec::new(),
        };
        store.apply(vec![tally_store::CountsEntry::chunk(counted)]).await.unwrap();
        let options = options(&kafka, &archive_dir);

        // No archiver has run: the hour is closed, but recounting it would find nothing.
        let early = reconcile(&store, &options, hour, hour + 3_600_000, None, |_, _| {}).await.unwrap();
        assert!(early.reports.is_empty(), "recounted an unarchived hour: {:?}", early.reports);
        assert_eq!(early.waiting_for_archive, vec![(hour, hour + 3_600_000)]);
        assert!(early.archive.behind_partition.is_some());
        assert!(store.periods().await.unwrap().is_empty(), "nothing written to the batch layer");
        let totals = store.totals(vec!["w1".into()]).await.unwrap();
        assert_eq!((totals[0].views, totals[0].exact_through_ms), (40, None), "reads keep the real-time count");

        // Once the archiver has caught up, the same run recounts the hour.
        let stop = CancellationToken::new();
        let archiver_config = ArchiverConfig {
            dir: archive_dir.clone(),
            seal_grace: Duration::from_millis(1),
            group_id: common::group_id("archiver", &kafka),
            ..ArchiverConfig::default()
        };
        let archiver = ArchiverService::build(&archiver_config, &kafka, &Registry::new()).unwrap();
        tokio::spawn(archiver.run(stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while archived(&archive_dir) < 40 {
            assert!(Instant::now() < deadline, "the archiver did not archive the hour");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.cancel();
        let later = reconcile(&store, &options, hour, hour + 3_600_000, None, |_, _| {}).await.unwrap();
        assert!(later.waiting_for_archive.is_empty());
        assert_eq!(later.archive.behind_partition, None);
        assert_eq!(later.reports.len(), 1);
        assert_eq!((later.reports[0].batch_views, later.reports[0].drift), (40, 0));
        let totals = store.totals(vec!["w1".into()]).await.unwrap();
        assert_eq!((totals[0].views, totals[0].exact_through_ms), (40, Some(hour + 3_600_000)));
    })
    .await;
}

/// Drift after a clean run is exactly 0, end to end: the real-time path
/// (counter, writer, store) and the batch layer (archiver, recount) count
/// resends inside the dedup window once, resends after it again, and late
/// events within the allowed lateness in their own minute, by one rule. The
/// expected totals come from the producer (which events are new views), not
/// from either path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_with_resends_and_late_events_reconciles_with_zero_drift() {
    bounded(Duration::from_secs(180), async {
        let (_broker, kafka, dir) = broker_with_topics().await;
        let archive_dir = dir.path().join("archive");
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();
        let stop = CancellationToken::new();
        start_pipeline(&kafka, &store, &archive_dir, &stop).await;

        let hour = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let mut events = Vec::new();
        for i in 0..120 {
            let t = hour + i * 25_000;
            events.push((format!("v{}", i % 3), format!("e{i}"), t, t + 100, true));
        }
        // Resent 20 s later, inside the 1-minute window: not a new view.
        for i in 0..10 {
            let t = hour + i * 25_000;
            events.push((format!("v{}", i % 3), format!("e{i}"), t, t + 20_000, false));
        }
        // Resent 5 minutes later, past the window: counted again, by both paths.
        for i in 10..17 {
            let t = hour + i * 25_000;
            events.push((format!("v{}", i % 3), format!("e{i}"), t, t + 300_000, true));
        }
        // 40 minutes late, within the allowed lateness (1 hour): counted in their minute.
        for i in 0..5 {
            let t = hour + 600_000 + i * 1_000;
            events.push((format!("v{}", i % 3), format!("late{i}"), t, t + 2_400_000, true));
        }
        // In receive order, as the gateways append them.
        events.sort_by_key(|e| e.3);
        producer.send(&events).await;
        let expected: i64 = producer.expected.values().sum();
        assert_eq!(expected, 132, "120 views, 7 resends counted again, 5 late views");
        let videos: Vec<String> = (0..3).map(|v| format!("v{v}")).collect();
        let realtime = || async { store.totals(videos.clone()).await.unwrap().iter().map(|t| t.views).sum::<i64>() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while realtime().await != expected || archived(&archive_dir) != events.len() as i64 {
            assert!(
                Instant::now() < deadline,
                "pipeline did not settle: realtime {}, archived {}",
                realtime().await,
                archived(&archive_dir)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let quiet = common::pipeline_quiet(&kafka, Duration::from_secs(60)).await;
        assert!(quiet, "counter and writer committed everything");
        assert_eq!(realtime().await, expected, "still exact once the pipeline went quiet");
        stop.cancel();

        let reports = reconcile(&store, &options(&kafka, &archive_dir), hour, hour + 3_600_000, None, |_, _| {})
            .await
            .unwrap()
            .reports;
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert_eq!((report.batch_views, report.realtime_views), (expected, expected));
        assert_eq!(report.drift, 0, "a clean run drifts by nothing: {:?}", report.drifting_videos);
        assert!(report.drifting_videos.is_empty());
    })
    .await;
}

/// Batch truth for unique viewers: a whole closed day of viewers, some
/// watching in two hours, resends, and one late view (dead-lettered by the
/// counter, so the real-time sketches miss its viewer). The reconciler's
/// exact distinct viewers per hour and per day equal what the test itself
/// sent (an oracle apart from both paths), reads of a reconciled hour or day
/// say `exact` with that count, the metric compares every audience with its
/// sketch, and reconciling again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciled_hours_and_days_answer_unique_viewers_exactly_with_the_batch_count() {
    use std::collections::{BTreeMap, BTreeSet};
    use tally_model::uniques::UniquesEstimate;
    use tally_reconciler::reconcile::ReconcileMetrics;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const AUDIENCES: [usize; 6] = [1, 40, 99, 300, 2_000, 5_000];
    bounded(Duration::from_secs(240), async {
        let (_broker, kafka, dir) = broker_with_topics().await;
        let archive_dir = dir.path().join("archive");
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();
        let stop = CancellationToken::new();
        start_pipeline(&kafka, &store, &archive_dir, &stop).await;

        // The day before yesterday: every hour of it is closed.
        let day = (tally_model::timestamp::now_ms() / DAY - 2) * DAY;
        let mut events = Vec::new();
        let mut viewers: Vec<Option<String>> = Vec::new();
        let mut exact_hours: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
        let mut exact_days: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut watch = |video: &str, event: String, ts: i64, received: i64, viewer: String, counted: bool| {
            if counted {
                exact_hours.entry((video.to_owned(), ts / HOUR * HOUR)).or_default().insert(viewer.clone());
                exact_days.entry(video.to_owned()).or_default().insert(viewer.clone());
            }
            events.push((video.to_owned(), event, ts, received, counted));
            viewers.push(Some(viewer));
        };
        for (k, audience) in AUDIENCES.iter().enumerate() {
            let video = format!("clip-{k}");
            for v in 0..*audience {
                let viewer = format!("{:032x}", (k as u128) << 64 | v as u128);
                let ts = day + (v as i64 % 24) * HOUR + (v as i64 * 7_919) % HOUR;
                watch(&video, format!("{k}-{v}-a"), ts, ts + 100, viewer.clone(), true);
                if v % 3 == 0 {
                    // The same viewer again five hours later, the day's last hours wrapping to its first.
                    let again = day + (ts - day + 5 * HOUR) % DAY;
                    watch(&video, format!("{k}-{v}-b"), again, again + 100, viewer.clone(), true);
                    // And a resend of the first view inside the dedup window: not a new view.
                    watch(&video, format!("{k}-{v}-a"), ts, ts + 10_000, viewer, false);
                }
            }
        }
        // A view received two hours after its event time: late for the
        // counter (allowed lateness 1 hour), a view for the batch layer.
        let late_ts = day + 3 * HOUR + 600_000;
        watch("clip-1", "late-1".into(), late_ts, late_ts + 2 * HOUR, "late-viewer".into(), true);
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|i| events[*i].3);
        let events: Vec<_> = order.iter().map(|i| events[*i].clone()).collect();
        let viewers: Vec<_> = order.iter().map(|i| viewers[*i].clone()).collect();
        let mut producer = ViewsProducer::new(&kafka, &[]);
        producer.send_with_viewers(&events, |i| viewers[i].clone()).await;

        let videos: Vec<String> = (0..AUDIENCES.len()).map(|k| format!("clip-{k}")).collect();
        let on_time = producer.expected.values().sum::<i64>() - 1;
        let realtime = || async { store.totals(videos.clone()).await.unwrap().iter().map(|t| t.views).sum::<i64>() };
        let deadline = Instant::now() + Duration::from_secs(90);
        while realtime().await != on_time || archived(&archive_dir) != events.len() as i64 {
            assert!(
                Instant::now() < deadline,
                "not settled: realtime {}, archived {}",
                realtime().await,
                archived(&archive_dir)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(common::pipeline_quiet(&kafka, Duration::from_secs(60)).await, "the pipeline did not go quiet");
        stop.cancel();

        // Before: the sketches alone. The late viewer is missing from them.
        let clip1_day = store.uniques("clip-1".into(), day, day + DAY).await.unwrap();
        assert_eq!((clip1_day.answer(), clip1_day.counted_parts.clone()), (UniquesEstimate::counted(40), None));

        let metrics = ReconcileMetrics::register(&Registry::new()).unwrap();
        let options = options(&kafka, &archive_dir);
        let reports = reconcile(&store, &options, day, day + DAY, Some(&metrics), |_, _| {}).await.unwrap().reports;
        assert_eq!(reports.len(), 24);
        assert!(reports[..23].iter().all(|r| r.day_uniques.is_none()), "only the last hour completes the day");
        let day_check = reports[23].day_uniques.clone().expect("the day's check");
        assert_eq!((day_check.videos, day_check.compared), (6, 6));
        assert!(day_check.outside_bounds >= 1, "clip-1's sketch says exactly 40, the truth is 41: {day_check:?}");

        let answers_match = |when: &str| {
            let (store, exact_hours, exact_days) = (&store, &exact_hours, &exact_days);
            let when = when.to_owned();
            async move {
                for ((video, hour), expected) in exact_hours {
                    let read = store.uniques(video.clone(), *hour, hour + HOUR).await.unwrap();
                    let want = UniquesEstimate::counted(expected.len() as u64);
                    assert_eq!(read.answer(), want, "{when}: {video} at {hour}");
                    assert_eq!(read.exact_through_ms, Some(day + DAY));
                }
                for (video, expected) in exact_days {
                    let read = store.uniques(video.clone(), day, day + DAY).await.unwrap();
                    assert_eq!(read.answer(), UniquesEstimate::counted(expected.len() as u64), "{when}: {video}'s day");
                }
            }
        };
        answers_match("reconciled").await;
        assert_eq!(exact_days["clip-1"].len(), 41);
        let big = store.uniques("clip-5".into(), day, day + DAY).await.unwrap();
        assert!(!big.estimate.exact, "5,000 viewers are past the sketch's exact range: {:?}", big.estimate);

        let compared =
            |granularity: &str| metrics.uniques_relative_error.with_label_values(&[granularity]).get_sample_count();
        assert_eq!(compared("hour"), exact_hours.len() as u64, "every (video, hour) compared");
        assert_eq!(compared("day"), 6);
        assert!(metrics.uniques_outside_bounds.with_label_values(&["day"]).get() >= 1);

        // Reconciling the day again changes no answer.
        let again = reconcile(&store, &options, day, day + DAY, None, |_, _| {}).await.unwrap().reports;
        assert_eq!(again.len(), 24);
        answers_match("reconciled again").await;
    })
    .await;
}
