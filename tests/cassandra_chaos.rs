//! Chaos on the Cassandra store: gateway, counter, writer and query as
//! processes, writing to a real Apache Cassandra node of the test's own,
//! under a bounded load of retrying clients, while the writer is killed
//! (-9), the node is killed (-9) or stopped (drained) and started again,
//! and the counter and query are killed. Every view the clients were
//! acknowledged must be counted exactly once, and still so once the
//! pipeline has gone quiet.
//!
//! Each kind of fault is injected once, in a seeded random order
//! (`TALLY_CHAOS_SEED` replays an order); `TALLY_CHAOS_FAULTS=N` (N > 5)
//! draws more at random for a longer run; `TALLY_CHAOS_KINDS` (a comma list
//! of `writer`, `counter`, `query`, `cassandra-kill`, `cassandra-stop`)
//! narrows the kinds drawn.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{lost_and_duplicated, post_until_stopped, Acknowledged};
use common::supervisor::Supervised;
use common::{cassandra_store_sections, process_sections_with_store, write_config, Load};
use tally_store::{CountStore, ScyllaConfig, ScyllaStore};
use tally_testkit::process::free_port;
use tally_testkit::{bounded, Broker, Cassandra, RedisServer};

/// The faults, each injected once before any is repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillWriter,
    KillCounter,
    KillQuery,
    KillCassandra,
    StopCassandra,
}

impl Fault {
    /// Its name in `TALLY_CHAOS_KINDS`.
    fn kind(self) -> &'static str {
        match self {
            Self::KillWriter => "writer",
            Self::KillCounter => "counter",
            Self::KillQuery => "query",
            Self::KillCassandra => "cassandra-kill",
            Self::StopCassandra => "cassandra-stop",
        }
    }
}

const FAULTS: [Fault; 5] =
    [Fault::KillWriter, Fault::KillCounter, Fault::KillQuery, Fault::KillCassandra, Fault::StopCassandra];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_and_cassandra_faults_lose_and_duplicate_no_acknowledged_view() {
    let faults: usize = std::env::var("TALLY_CHAOS_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(FAULTS.len());
    bounded(Duration::from_secs(300 + 60 * faults as u64), async {
        let broker = Broker::shared();
        // Not the run's shared node (its system keyspaces skip fsyncs, so a
        // kill -9 can lose the schema): one of its own, as an operator runs it.
        let mut cassandra = Cassandra::start_default();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let keyspace = tally_testkit::unique("tally_chaos").replace('-', "_");
        let store = cassandra_store_sections(&cassandra.contact_point(), &keyspace);
        let (ingest_port, query_port) = (free_port(), free_port());
        let sections = process_sections_with_store(
            &redis.url(),
            ingest_port,
            query_port,
            "ack-timeout = \"2s\"\ndelivery-timeout = \"10s\"",
            &store,
        );
        let config = write_config(dir.path(), &kafka, &sections);
        let mut services = Supervised::start(&config, &["ingest", "counter", "writer", "query"]);
        assert!(
            services.get("writer").wait_for_metric("tally_writer_owned_partitions", 1.0, Duration::from_secs(90)),
            "the writer connected to Cassandra and joined its group"
        );

        let seed = std::env::var("TALLY_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("cassandra chaos seed {seed}");
        let mut rng = Load::new(seed ^ 0xca55);
        // TALLY_CHAOS_KINDS=writer,counter,query,cassandra-kill,cassandra-stop narrows the faults.
        let kinds = std::env::var("TALLY_CHAOS_KINDS").unwrap_or_default();
        let mut order: Vec<Fault> =
            FAULTS.into_iter().filter(|f| kinds.is_empty() || kinds.split(',').any(|k| k.trim() == f.kind())).collect();
        assert!(!order.is_empty(), "TALLY_CHAOS_KINDS={kinds:?} selects no fault");
        let drawn = order.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.rand() % (i as u64 + 1)) as usize);
        }
        while order.len() < faults {
            order.push(drawn[(rng.rand() % drawn.len() as u64) as usize]);
        }
        order.truncate(faults);

        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
        let gateway = format!("127.0.0.1:{ingest_port}");
        let load = tokio::spawn(post_until_stopped(gateway, 50, seed, stop.clone(), acknowledged.clone()));
        let started = Instant::now();
        let mut injected = Vec::new();
        for fault in order {
            services.restart_exited();
            tokio::time::sleep(Duration::from_millis(1_000 + rng.rand() % 2_000)).await;
            let pause = Duration::from_millis(300 + rng.rand() % 1_200);
            let began = Instant::now();
            match fault {
                Fault::KillWriter => services.kill_and_restart("writer"),
                Fault::KillCounter => services.kill_and_restart("counter"),
                Fault::KillQuery => services.kill_and_restart("query"),
                Fault::KillCassandra | Fault::StopCassandra => {
                    if fault == Fault::KillCassandra {
                        cassandra.kill();
                    } else {
                        cassandra = tokio::task::spawn_blocking(move || {
                            cassandra.stop();
                            cassandra
                        })
                        .await
                        .unwrap();
                    }
                    tokio::time::sleep(pause).await;
                    cassandra = tokio::task::spawn_blocking(move || {
                        cassandra.restart();
                        cassandra
                    })
                    .await
                    .unwrap();
                }
            }
            injected.push(format!("{fault:?} ({} ms)", began.elapsed().as_millis()));
        }
        stop.store(true, Ordering::SeqCst);
        load.await.unwrap();
        let oracle = acknowledged.lock().unwrap().clone();
        let expected = oracle.views.clone();
        let ids: Vec<&String> = expected.keys().collect();

        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let api = format!("127.0.0.1:{query_port}");
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut got = Default::default();
        while Instant::now() < deadline {
            services.restart_exited();
            if let Ok(read) = common::query::views(&http, &api, &ids).await {
                got = read;
                if got == expected {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (lost, duplicated) = lost_and_duplicated(&expected, &got);
        let acknowledged_views: i64 = expected.values().sum();
        eprintln!(
            "cassandra chaos: {injected:?} in {:?}; restarted by the supervisor {:?}; batches {}, retries {}; acknowledged {acknowledged_views}, lost {lost}, duplicated {duplicated}; writer retries (current writer) {:?}",
            started.elapsed(),
            services.restarts,
            oracle.batches,
            oracle.retries,
            services.get("writer").metric("tally_writer_retries_total"),
        );
        if (lost, duplicated) != (0, 0) {
            let writer_deltas: Vec<String> = services
                .get("writer")
                .metrics()
                .lines()
                .filter(|l| l.starts_with("tally_writer_deltas_total") || l.starts_with("tally_writer_fenced_chunks_total"))
                .map(str::to_owned)
                .collect();
            eprintln!("cassandra chaos: current writer {writer_deltas:?}");
            diagnose(&kafka, &cassandra.contact_point(), &keyspace, &expected, &got).await;
        }
        assert_eq!((lost, duplicated), (0, 0), "acknowledged {expected:?}, counted {got:?}");
        assert!(acknowledged_views > 0, "the clients were acknowledged views");

        // Quiet: the counter has committed every view and the writer every
        // count record; a late double count would show now.
        let quiet = common::pipeline_quiet(&kafka, Duration::from_secs(90)).await;
        assert!(quiet, "the pipeline did not go quiet");
        assert_eq!(common::query::views(&http, &api, &ids).await, Ok(expected), "totals changed once the pipeline was quiet");
        for (_, process) in services.running {
            process.kill9();
        }
    })
    .await;
}

/// Where the difference is: in what the counters emitted (the counts topic,
/// folded independently), in the store, or between the store and the query
/// API; and whether the groups are still behind.
async fn diagnose(
    kafka: &tally_kafka::KafkaConfig,
    contact_point: &str,
    keyspace: &str,
    expected: &BTreeMap<String, i64>,
    queried: &BTreeMap<String, i64>,
) {
    let emitted = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || tally_testkit::counts::views_per_video(&kafka, Duration::from_secs(60)))
            .await
            .unwrap()
    };
    let config =
        ScyllaConfig { nodes: vec![contact_point.to_owned()], keyspace: keyspace.to_owned(), ..Default::default() };
    let stored: BTreeMap<String, i64> = match ScyllaStore::connect(config).await {
        Ok(store) => match store.totals(expected.keys().cloned().collect()).await {
            Ok(totals) => totals.into_iter().map(|t| (t.video_id, t.views)).collect(),
            Err(e) => {
                eprintln!("cassandra chaos: reading the store failed: {e}");
                BTreeMap::new()
            }
        },
        Err(e) => {
            eprintln!("cassandra chaos: connecting to the store failed: {e}");
            BTreeMap::new()
        }
    };
    for (video, want) in expected {
        let (e, s, q) = (emitted.get(video), stored.get(video), queried.get(video));
        if (e, s, q) != (Some(want), Some(want), Some(want)) {
            eprintln!("cassandra chaos: {video}: acknowledged {want}, emitted {e:?}, stored {s:?}, queried {q:?}");
        }
    }
    // Per minute: which flushes' minute rows are missing, and whether the
    // rollups (what totals read) agree with the minute rows.
    let per_minute = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            tally_testkit::counts::views_per_video_minute_partition(&kafka, Duration::from_secs(60))
        })
        .await
        .unwrap()
    };
    let mut emitted_minutes: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for ((video, minute, _partition), views) in &per_minute {
        *emitted_minutes.entry((video.clone(), *minute)).or_default() += views;
    }
    let config =
        ScyllaConfig { nodes: vec![contact_point.to_owned()], keyspace: keyspace.to_owned(), ..Default::default() };
    if let Ok(store) = ScyllaStore::connect(config).await {
        let now = tally_model::timestamp::now_ms();
        match store.realtime_minutes(now - 3_600_000, now + 3_600_000).await {
            Ok(rows) => {
                let stored_minutes: BTreeMap<(String, i64), i64> =
                    rows.into_iter().map(|(v, m, n)| ((v, m), n)).collect();
                let mut stored_sums: BTreeMap<&str, i64> = BTreeMap::new();
                for ((video, minute), views) in &stored_minutes {
                    *stored_sums.entry(video.as_str()).or_default() += views;
                    if emitted_minutes.get(&(video.clone(), *minute)) != Some(views) {
                        eprintln!(
                            "cassandra chaos: {video} minute {minute}: emitted {:?}, stored minute rows {views}",
                            emitted_minutes.get(&(video.clone(), *minute))
                        );
                    }
                }
                for ((video, minute), views) in &emitted_minutes {
                    if !stored_minutes.contains_key(&(video.clone(), *minute)) {
                        eprintln!("cassandra chaos: {video} minute {minute}: emitted {views}, no stored minute row");
                    }
                }
                for (video, sum) in stored_sums {
                    if stored.get(video) != Some(&sum) {
                        eprintln!(
                            "cassandra chaos: {video}: minute rows sum to {sum}, totals (rollups) say {:?}",
                            stored.get(video)
                        );
                    }
                }
            }
            Err(e) => eprintln!("cassandra chaos: reading minute rows failed: {e}"),
        }
    }
    let lags = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            let counter = common::group_id("counter", &kafka);
            let writer = common::group_id("writer", &kafka);
            (
                tally_testkit::topic::group_lag(&kafka, &counter, &kafka.topics.views),
                tally_testkit::topic::group_lag(&kafka, &writer, &kafka.topics.counts),
            )
        })
        .await
        .unwrap()
    };
    eprintln!("cassandra chaos: counter group lag {}, writer group lag {}", lags.0, lags.1);
}
