//! The archiver against a real broker: replays write the same files and never a duplicate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_reconciler::archive::layout;
use tally_reconciler::archive::storage::ArchiveStorage;
use tally_reconciler::{ArchiverConfig, ArchiverService};
use tally_testkit::metrics::value;
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker, S3Server};
use tokio_util::sync::CancellationToken;

fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    layout::list(root)
        .unwrap()
        .into_iter()
        .map(|(path, _)| (path.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&path).unwrap()))
        .collect()
}

fn archived_records(root: &Path) -> i64 {
    layout::list(root).unwrap().iter().map(|(_, (_, start, end))| end - start).sum()
}

async fn archive(kafka: &tally_kafka::KafkaConfig, dir: &Path, group: &str, expected: i64) {
    let config = ArchiverConfig {
        group_id: format!("{group}-{}", kafka.topics.views),
        dir: dir.to_owned(),
        records_per_file: 50,
        seal_grace: Duration::from_millis(1),
        ..ArchiverConfig::default()
    };
    let storage = ArchiveStorage::Local(dir.to_owned());
    run_archiver(kafka, &config, &storage, expected).await;
}

async fn run_archiver(
    kafka: &tally_kafka::KafkaConfig,
    config: &ArchiverConfig,
    storage: &ArchiveStorage,
    expected: i64,
) {
    let registry = Registry::new();
    let service = ArchiverService::build(config, kafka, &registry).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(service.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let records =
        || async { storage.list().await.unwrap().iter().map(|(_, (_, start, end))| end - start).sum::<i64>() };
    while records().await < expected {
        assert!(Instant::now() < deadline, "archived {} of {expected}", records().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stopped only once it has taken every record of the topic (archived in a
    // sealed file, malformed, or found already archived): nothing is left
    // that could still be written a second time.
    let k = kafka.clone();
    let in_topic =
        tokio::task::spawn_blocking(move || tally_testkit::topic::record_count(&k, &k.topics.views)).await.unwrap();
    let taken = || {
        ["archived", "malformed", "already_archived"]
            .iter()
            .map(|outcome| value(&registry, "tally_archiver_records_total", Some(outcome)))
            .sum::<f64>()
    };
    while taken() < in_topic as f64 {
        assert!(Instant::now() < deadline, "the archiver took {} of {in_topic} records", taken());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_the_same_offsets_twice_yields_identical_files_and_no_duplicates() {
    bounded(Duration::from_secs(180), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        // Received over two past hours, so hour cuts and sealing are exercised.
        let base = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let events: Vec<_> = (0..450)
            .map(|i| (format!("v{}", i % 9), format!("e{i}"), base + i * 10_000, base + i * 10_000 + 500, true))
            .collect();
        producer.send(&events).await;
        producer.send_raw("v1", b"not a view").await;
        let total = 451;

        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        archive(&kafka, first.path(), "archiver-a", total).await;
        archive(&kafka, second.path(), "archiver-b", total).await;
        let a = snapshot(first.path());
        let b = snapshot(second.path());
        assert!(a.len() >= 10, "files were cut by size and by hour: {:?}", a.keys().collect::<Vec<_>>());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same file names");
        assert!(a == b, "byte-identical files");
        assert!(a.keys().any(|k| k.contains("hour=")), "Hive layout");

        // Replays into the same archive (fresh group: committed offsets gone) add nothing.
        archive(&kafka, first.path(), "archiver-replay", total).await;
        assert!(snapshot(first.path()) == a, "a replay wrote no new or changed file");
        assert_eq!(archived_records(first.path()), total, "every offset in exactly one file");
        let mut rows = 0;
        for (path, _) in layout::list(first.path()).unwrap() {
            let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
            rows += tally_reconciler::archive::parquet_io::read_views(bytes, "file", |_| {}).unwrap();
        }
        assert_eq!(rows, 450, "the malformed record is not archived as a view");
    })
    .await;
}

async fn object_snapshot(storage: &ArchiveStorage) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (path, _) in storage.list().await.unwrap() {
        let bytes = storage.get(&path).await.unwrap().to_vec();
        out.insert(path, bytes);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_in_object_storage_holds_the_same_files_and_a_replay_adds_none() {
    bounded(Duration::from_secs(180), async {
        let broker = Broker::shared();
        let s3 = S3Server::start("tally-archive");
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let base = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let events: Vec<_> = (0..200)
            .map(|i| (format!("v{}", i % 7), format!("e{i}"), base + i * 20_000, base + i * 20_000 + 500, true))
            .collect();
        producer.send(&events).await;
        let options: BTreeMap<String, tally_config::Secret> =
            s3.options().into_iter().map(|(k, v)| (k, tally_config::Secret::new(v))).collect();
        let config_for = |prefix: &str, group: &str| ArchiverConfig {
            group_id: format!("{group}-{}", kafka.topics.views),
            url: s3.url(prefix),
            object_store_options: options.clone(),
            records_per_file: 50,
            seal_grace: Duration::from_millis(1),
            ..ArchiverConfig::default()
        };
        let remote =
            |prefix: &str| ArchiveStorage::from_config(Path::new("unused"), &s3.url(prefix), &options).unwrap();

        // The same offsets archived locally and into the bucket: the same files, byte for byte.
        let local = tempfile::tempdir().unwrap();
        archive(&kafka, local.path(), "archiver-local", 200).await;
        let in_bucket = remote("views");
        run_archiver(&kafka, &config_for("views", "archiver-s3"), &in_bucket, 200).await;
        let expected = snapshot(local.path());
        let stored = object_snapshot(&in_bucket).await;
        assert!(stored.len() >= 5, "files cut by size and hour: {:?}", stored.keys().collect::<Vec<_>>());
        assert!(stored == expected, "object store and directory hold identical files");

        // A replay with a fresh group into the same prefix adds or changes nothing.
        run_archiver(&kafka, &config_for("views", "archiver-s3-replay"), &in_bucket, 200).await;
        assert!(object_snapshot(&in_bucket).await == expected, "the replay wrote no new or changed object");

        // And the batch recount reads it back.
        let scope = tally_reconciler::recount::Scope {
            from_ms: base,
            to_ms: base + 4 * 3_600_000,
            lookback_ms: 0,
            lookahead_ms: 0,
        };
        let rule = tally_model::counting::CountingRule {
            allowed_lateness_ms: 3_600_000,
            dedup_window_ms: 600_000,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: 60_000,
        };
        let counted = tally_reconciler::recount::recount(&in_bucket, &scope, &rule).await.unwrap();
        assert_eq!(counted.rows_read, 200);
        assert_eq!(counted.minutes.values().sum::<i64>(), 200);
    })
    .await;
}
