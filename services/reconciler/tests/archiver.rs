//! The archiver against a real broker: replays write the same files and never a duplicate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tally_reconciler::archive::layout;
use tally_reconciler::{ArchiverConfig, ArchiverService};
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker};
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
        group_id: group.into(),
        dir: dir.to_owned(),
        records_per_file: 50,
        seal_grace: Duration::from_millis(1),
        ..ArchiverConfig::default()
    };
    let service = ArchiverService::build(&config, kafka, &Registry::new()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(service.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while archived_records(dir) < expected {
        assert!(Instant::now() < deadline, "archived {} of {expected}", archived_records(dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give a duplicate a chance to appear, then stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_the_same_offsets_twice_yields_identical_files_and_no_duplicates() {
    bounded(Duration::from_secs(180), async {
        let broker = Broker::start();
        let kafka = tally_testkit::kafka_config(&broker);
        tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await.unwrap();
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
            rows += tally_reconciler::archive::parquet_io::read_views(&path, |_, _, _| {}).unwrap();
        }
        assert_eq!(rows, 450, "the malformed record is not archived as a view");
    })
    .await;
}
