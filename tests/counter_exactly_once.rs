//! The counter against a real broker, as real processes: kill -9 at random
//! moments and rebalances must neither lose nor repeat a view.

mod common;

use std::time::{Duration, Instant};

use common::{write_config, write_config_with_groups, Load, TallyProcess, ViewsProducer, CLASSIC_SHORT_SESSIONS};
use tally_counter::verify::{fold_counts, Folded};
use tally_kafka::KafkaConfig;
use tally_testkit::counts::settled_views;
use tally_testkit::{bounded, Broker};

const COUNTER: &str = r#"
[counter]
admin-listen = "127.0.0.1:0"
flush-interval = "200ms"
max-rows-per-flush = 500
chunk-rows = 50
"#;

fn seed() -> u64 {
    let seed = std::env::var("TALLY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand_seed);
    eprintln!("seed: {seed} (set TALLY_TEST_SEED to replay)");
    seed
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
}

async fn setup() -> (Broker, KafkaConfig, tempfile::TempDir) {
    let broker = Broker::shared();
    let kafka = tally_testkit::kafka_with_topics(&broker).await;
    (broker, kafka, tempfile::tempdir().expect("tempdir"))
}

/// Waits until the counts topic holds `expected` by an oracle independent of
/// the writer's fold (`tally_testkit::counts`), and still does once the
/// counters have committed the whole views topic; then folds it as the
/// writer would, for the statistics and the overlap check.
async fn wait_for_totals(
    kafka: &KafkaConfig,
    expected: &std::collections::BTreeMap<String, i64>,
    limit: Duration,
) -> Folded {
    let settled = settled_views(kafka, &format!("tally-counter-{}", kafka.topics.views), expected, limit).await;
    assert_eq!(&settled, expected, "exact, and still exact once the counters went quiet");
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || fold_counts(&k, &k.topics.counts, Duration::from_secs(60)))
        .await
        .expect("fold task")
        .expect("fold counts")
}

fn assert_exact(folded: &Folded, expected: &std::collections::BTreeMap<String, i64>) {
    assert!(folded.overlaps.is_empty(), "overlapping ranges: {:?}", folded.overlaps);
    let mut wrong = Vec::new();
    for (video, want) in expected {
        let got = folded.totals.get(video).copied().unwrap_or(0);
        if got != *want {
            wrong.push(format!("{video}: counted {got}, sent {want}"));
        }
    }
    let extra: Vec<_> = folded.totals.keys().filter(|v| !expected.contains_key(*v)).collect();
    assert!(wrong.is_empty() && extra.is_empty(), "not exact: {wrong:?} extra: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_killed_at_random_moments_counts_every_view_exactly_once() {
    bounded(Duration::from_secs(280), async {
        let (_broker, kafka, dir) = setup().await;
        let config = write_config(dir.path(), &kafka, COUNTER);
        let mut load = Load::new(seed());
        let mut producer = ViewsProducer::new(&kafka, &["video-1"]);
        let mut kills = 0;
        let mut counter = TallyProcess::spawn(&config, "counter");
        let mut rng = Load::new(seed() ^ 0x5eed);
        while kills < 6 {
            // Load keeps arriving while the counter lives and dies; each life
            // is killed at a random moment after it started counting (a group
            // that never settles only measures the broker's rebalance).
            producer.send(&load.batch(1_500, tally_model::timestamp::now_ms(), 10)).await;
            let owns = counter.wait_for_metric("tally_counter_owned_partitions", 1.0, Duration::from_secs(60));
            assert!(owns, "restarted counter took over partitions");
            producer.send(&load.batch(500, tally_model::timestamp::now_ms(), 10)).await;
            let pause = rng.rand() % 1_500;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            counter.kill9();
            kills += 1;
            counter = TallyProcess::spawn(&config, "counter");
        }
        producer.send(&load.batch(2_000, tally_model::timestamp::now_ms(), 10)).await;
        let folded = wait_for_totals(&kafka, &producer.expected, Duration::from_secs(90)).await;
        assert_exact(&folded, &producer.expected);
        let sent: i64 = producer.expected.values().sum();
        assert!(sent >= 10_000, "a meaningful load: {sent}");
        assert!(folded.stats.duplicates > 0, "resends were deduplicated: {:?}", folded.stats);
        let metrics = counter.metrics();
        assert!(metrics.contains("tally_counter_flushes_total"), "{metrics}");
        let status = counter.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful stop: {status:?}");
        eprintln!(
            "kills: {kills}, views: {sent}, records: {}, repeated flushes: {}",
            producer.produced, folded.repeated_flushes
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_counters_in_one_group_one_leaving_and_rejoining_lose_and_repeat_nothing() {
    bounded(Duration::from_secs(280), async {
        let (_broker, kafka, dir) = setup().await;
        let config = write_config(dir.path(), &kafka, COUNTER);
        let mut load = Load::new(seed());
        let mut producer = ViewsProducer::new(&kafka, &["video-1", "video-2"]);
        let first = TallyProcess::spawn(&config, "counter");
        let second = TallyProcess::spawn(&config, "counter");
        for _ in 0..4 {
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let status = second.terminate(Duration::from_secs(30));
        assert!(status.success(), "the leaver drained cleanly: {status:?}");
        for _ in 0..4 {
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let second = TallyProcess::spawn(&config, "counter");
        for _ in 0..4 {
            producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 10)).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let folded = wait_for_totals(&kafka, &producer.expected, Duration::from_secs(90)).await;
        assert_exact(&folded, &producer.expected);
        assert!(first.terminate(Duration::from_secs(30)).success());
        assert!(second.terminate(Duration::from_secs(30)).success());
    })
    .await;
}

/// A counter that flushes on its timer only after a minute: whatever reaches
/// the counts topic sooner was flushed by a revoke (or a drain).
const SLOW_FLUSH: &str = r#"
[counter]
admin-listen = "127.0.0.1:0"
flush-interval = "60s"
lag-interval = "200ms"
"#;

/// The `[kafka]` group lines of an eager classic group.
fn eager() -> String {
    format!("{CLASSIC_SHORT_SESSIONS}\nassignment-strategy = \"range\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_revoked_in_a_rebalance_are_flushed_not_dropped() {
    // Eager: the join revokes every partition, so every counted range is
    // flushed by the revoke and the totals are exact long before the timer.
    bounded(Duration::from_secs(120), async {
        let (_broker, kafka, dir) = setup().await;
        let config = write_config_with_groups(dir.path(), &kafka, &eager(), SLOW_FLUSH);
        let mut load = Load::new(seed());
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let first = TallyProcess::spawn(&config, "counter");
        assert!(first.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(30)));
        producer.send(&load.batch(2_000, tally_model::timestamp::now_ms(), 10)).await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        while !(first.metric("tally_counter_owned_lag_records") == Some(0.0)
            && first.metric("tally_counter_buffered_rows").is_some_and(|rows| rows > 0.0))
        {
            assert!(Instant::now() < deadline, "the first counter never caught up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let second = TallyProcess::spawn(&config, "counter");
        let folded = wait_for_totals(&kafka, &producer.expected, Duration::from_secs(40)).await;
        assert!(started.elapsed() < Duration::from_secs(55), "the test outlived the flush interval");
        assert_exact(&folded, &producer.expected);
        assert!(first.metric("tally_counter_revoke_flushes_total").is_some_and(|n| n >= 1.0));
        assert!(first.terminate(Duration::from_secs(30)).success());
        assert!(second.terminate(Duration::from_secs(30)).success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooperative_rebalance_drains_only_the_revoked_partitions() {
    bounded(Duration::from_secs(120), async {
        let (_broker, kafka, dir) = setup().await;
        let config = write_config(dir.path(), &kafka, SLOW_FLUSH);
        let mut load = Load::new(seed());
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let first = TallyProcess::spawn(&config, "counter");
        assert!(first.wait_for_metric("tally_counter_owned_partitions", 4.0, Duration::from_secs(30)));
        producer.send(&load.batch(2_000, tally_model::timestamp::now_ms(), 10)).await;
        // Caught up: no lag, and the buffered rows no longer moving. A lag of
        // 0 alone is not enough: the lag monitor's last reading can predate
        // the batch (every 200 ms) while the first records are buffered.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last_buffered = -1.0;
        loop {
            let buffered = first.metric("tally_counter_buffered_rows").unwrap_or(0.0);
            let lag = first.metric("tally_counter_owned_lag_records");
            if lag == Some(0.0) && buffered > 0.0 && buffered == last_buffered {
                break;
            }
            last_buffered = buffered;
            assert!(Instant::now() < deadline, "the first counter never caught up: lag {lag:?}, {buffered} rows");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let buffered_alone = first.metric("tally_counter_buffered_rows").expect("buffered rows");
        let second = TallyProcess::spawn(&config, "counter");
        assert!(second.wait_for_metric("tally_counter_owned_partitions", 2.0, Duration::from_secs(30)));
        let metric = |name| first.metric(name).unwrap_or(f64::NAN);
        assert_eq!(metric("tally_counter_owned_partitions"), 2.0);
        assert_eq!(metric("tally_counter_partitions_revoked_total"), 2.0, "only the two moving partitions");
        assert_eq!(metric("tally_counter_revoke_flushes_total"), 2.0, "each revoked range flushed");
        let buffered_kept = metric("tally_counter_buffered_rows");
        assert!(
            buffered_kept > 0.0 && buffered_kept < buffered_alone,
            "the kept partitions still hold their open ranges: {buffered_alone} -> {buffered_kept}"
        );
        // Draining both flushes the rest: exact totals.
        assert!(first.terminate(Duration::from_secs(30)).success());
        assert!(second.terminate(Duration::from_secs(30)).success());
        let folded = wait_for_totals(&kafka, &producer.expected, Duration::from_secs(40)).await;
        assert_exact(&folded, &producer.expected);
    })
    .await;
}
