//! Replication faults on a 3-broker Apache Kafka cluster under load: the
//! leader of busy partitions of the views topic, then of the counts topic,
//! killed (kill -9) and brought back; then two brokers down at once, so that
//! `acks=all` cannot be met (`min.insync.replicas=2`). While it cannot be
//! met the gateway answers 503, never 2xx; once the brokers return, the
//! clients' retries (same event ids) are accepted and every acknowledged
//! view is counted exactly once, also after the pipeline has gone quiet.
//! Topics are created by the services with the replication factor derived
//! from the cluster (3), not 1. The services run under a supervisor, as in
//! production: a service that stops with an error (a partition it cannot
//! recover while no broker leads it, say) is started again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::supervisor::{supervise, Supervised};
use common::{process_sections, write_config, Load, TallyProcess};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use tally_testkit::process::free_port;
use tally_testkit::{bounded, KafkaCluster, RedisServer};

/// What the clients were told.
#[derive(Default)]
struct Acknowledged {
    /// Distinct event ids per video the gateway answered 202 for (two
    /// clients may send the same id: it is one view).
    views: BTreeMap<String, BTreeSet<String>>,
    /// Requests refused (any non-202, or no answer), each retried later.
    refusals: u64,
}

/// The load: batches of 40 new views, each retried with the same ids until
/// it gets a 202 (as a well-behaved client does). A 202 for a request sent
/// while `outage` was set the whole time is counted in `accepted_in_outage`.
struct Clients {
    acknowledged: Mutex<Acknowledged>,
    stop: AtomicBool,
    outage: AtomicBool,
    accepted_in_outage: AtomicU64,
    refused_in_outage: AtomicU64,
}

async fn client(gateway: String, clients: Arc<Clients>, seed: u64) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(8)).build().unwrap();
    let mut load = Load::new(seed);
    while !clients.stop.load(Ordering::SeqCst) {
        let batch = load.batch(40, tally_model::timestamp::now_ms(), 0);
        let body: Vec<Value> = batch.iter().map(|(v, id, _, _, _)| json!({"video_id": v, "event_id": id})).collect();
        loop {
            let in_outage_before = clients.outage.load(Ordering::SeqCst);
            let outcome = http.post(format!("http://{gateway}/v1/events")).json(&body).send().await;
            let in_outage_after = clients.outage.load(Ordering::SeqCst);
            let accepted = matches!(&outcome, Ok(r) if r.status() == 202);
            if in_outage_before && in_outage_after {
                let counter = if accepted { &clients.accepted_in_outage } else { &clients.refused_in_outage };
                counter.fetch_add(1, Ordering::SeqCst);
            }
            if accepted {
                break;
            }
            if let Ok(response) = &outcome {
                assert!(
                    response.status() == 503 && response.headers().contains_key("retry-after"),
                    "a refusal is a 503 with Retry-After, got {}",
                    response.status()
                );
            }
            clients.acknowledged.lock().unwrap().refusals += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        {
            let mut acknowledged = clients.acknowledged.lock().unwrap();
            for (video, id, ..) in &batch {
                acknowledged.views.entry(video.clone()).or_default().insert(id.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replicas of each partition of `topic`.
fn replica_counts(bootstrap: &str, topic: &str) -> Vec<usize> {
    let client: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client");
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics()[0].partitions().iter().map(|p| p.replicas().len()).collect()
}

/// Keeps the load running for `span`.
async fn under_load(span: Duration) {
    tokio::time::sleep(span).await;
}

/// Waits until every partition of the views and counts topics has its three replicas in sync.
async fn fully_replicated(cluster: &Arc<Mutex<KafkaCluster>>, topics: &[String], partitions: i32) {
    for topic in topics {
        let (cluster, name) = (cluster.clone(), topic.clone());
        let synced = tokio::task::spawn_blocking(move || {
            cluster.lock().unwrap().wait_fully_replicated(&name, partitions, Duration::from_secs(90))
        })
        .await
        .unwrap();
        assert!(synced, "{topic} did not get all replicas back in sync");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_killed_and_a_lost_quorum_refuse_writes_and_lose_or_repeat_no_acknowledged_view() {
    bounded(Duration::from_secs(420), async {
        let cluster = Arc::new(Mutex::new(tokio::task::spawn_blocking(|| KafkaCluster::start(3)).await.unwrap()));
        let bootstrap = cluster.lock().unwrap().bootstrap();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config_for(&bootstrap);
        let dir = tempfile::tempdir().unwrap();
        let (ingest_port, query_port) = (free_port(), free_port());
        let ingest_timeouts = "ack-timeout = \"3s\"\ndelivery-timeout = \"20s\"";
        let sections = process_sections(dir.path(), &redis.url(), ingest_port, query_port, ingest_timeouts);
        let config = write_config(dir.path(), &kafka, &sections);
        // The gateway creates the topics: replication derived from the cluster.
        let ingest = TallyProcess::spawn(&config, "ingest");
        for topic in [&kafka.topics.views, &kafka.topics.counts] {
            let (b, t) = (bootstrap.clone(), topic.clone());
            let replicas = tokio::task::spawn_blocking(move || replica_counts(&b, &t)).await.unwrap();
            assert!(replicas.iter().all(|r| *r == 3), "{topic} was created with replicas {replicas:?}, not 3");
        }
        let running = ["counter", "writer", "query"].into_iter().map(|name| (name, TallyProcess::spawn(&config, name)));
        let services =
            Arc::new(Mutex::new(Supervised::adopt(&config, std::iter::once(("ingest", ingest)).chain(running).collect())));
        let supervisor_stop = Arc::new(AtomicBool::new(false));
        let supervisor = supervise(&services, supervisor_stop.clone());
        let topics = [kafka.topics.views.clone(), kafka.topics.counts.clone()];
        let partitions = kafka.topics.views_partitions;

        let clients = Arc::new(Clients {
            acknowledged: Mutex::new(Acknowledged::default()),
            stop: AtomicBool::new(false),
            outage: AtomicBool::new(false),
            accepted_in_outage: AtomicU64::new(0),
            refused_in_outage: AtomicU64::new(0),
        });
        let gateway = format!("127.0.0.1:{ingest_port}");
        let load: Vec<_> =
            (0..2).map(|seed| tokio::spawn(client(gateway.clone(), clients.clone(), 100 + 2 * seed))).collect();
        under_load(Duration::from_secs(3)).await;

        eprintln!("{:?} phase 1: views leader killed", std::time::SystemTime::now());
        // 1. The leader of a busy views partition dies; leadership moves, the load goes on.
        let leader = cluster.lock().unwrap().leader(&kafka.topics.views, 0).expect("views partition 0 has a leader");
        cluster.lock().unwrap().kill(leader);
        under_load(Duration::from_secs(8)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.lock().unwrap().restart(leader)).await.unwrap();
        fully_replicated(&cluster, &topics, partitions).await;

        eprintln!("{:?} phase 2: counts leader killed", std::time::SystemTime::now());
        // 2. The same for the counts topic: the counter's output and the writer's input.
        let leader = cluster.lock().unwrap().leader(&kafka.topics.counts, 0).expect("counts partition 0 has a leader");
        cluster.lock().unwrap().kill(leader);
        under_load(Duration::from_secs(8)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.lock().unwrap().restart(leader)).await.unwrap();
        fully_replicated(&cluster, &topics, partitions).await;
        let before_outage = clients.acknowledged.lock().unwrap().views.values().map(BTreeSet::len).sum::<usize>();
        assert!(before_outage > 0, "the load was acknowledged while at most one broker was down");

        eprintln!("{:?} phase 3: two brokers down", std::time::SystemTime::now());
        // 3. Two of three brokers down: acks=all with min.insync.replicas=2 cannot be met.
        let ids = cluster.lock().unwrap().node_ids();
        let (first, second) = (ids[0], ids[1]);
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.lock().unwrap().stop(first)).await.unwrap();
        cluster.lock().unwrap().kill(second);
        clients.outage.store(true, Ordering::SeqCst);
        let outage_started = Instant::now();
        while clients.refused_in_outage.load(Ordering::SeqCst) < 6 {
            assert!(outage_started.elapsed() < Duration::from_secs(90), "no refusals during the outage");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        clients.outage.store(false, Ordering::SeqCst);
        // A service starting now must not need the lost controller quorum
        // for topics that exist (before: "cannot create topic", exit 1).
        let topics_set_up = tally_kafka::topics::ensure_topics(&kafka, &tally_kafka::topics::tally_topics(&kafka)).await;
        assert!(topics_set_up.is_ok(), "setting up existing topics needed the lost quorum: {topics_set_up:?}");
        assert_eq!(
            clients.accepted_in_outage.load(Ordering::SeqCst),
            0,
            "the gateway acknowledged views while acks=all could not be met"
        );
        for id in [first, second] {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.lock().unwrap().restart(id)).await.unwrap();
        }
        eprintln!("{:?} phase 4: brokers back", std::time::SystemTime::now());
        let recovered = Instant::now();
        let accepted_then = clients.acknowledged.lock().unwrap().views.values().map(BTreeSet::len).sum::<usize>();
        while clients.acknowledged.lock().unwrap().views.values().map(BTreeSet::len).sum::<usize>() == accepted_then {
            assert!(recovered.elapsed() < Duration::from_secs(90), "the gateway did not accept again after recovery");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        under_load(Duration::from_secs(3)).await;
        clients.stop.store(true, Ordering::SeqCst);
        for task in load {
            task.await.unwrap();
        }

        let expected: BTreeMap<String, i64> =
            clients.acknowledged.lock().unwrap().views.iter().map(|(v, ids)| (v.clone(), ids.len() as i64)).collect();
        let refusals = clients.acknowledged.lock().unwrap().refusals;
        let ids: Vec<String> = expected.keys().cloned().collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let api = format!("127.0.0.1:{query_port}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = common::query::views(&http, &api, &ids).await.unwrap_or_default();
            if got == expected {
                break;
            }
            if Instant::now() > deadline {
                for (name, process) in &services.lock().unwrap().running {
                    let metrics: Vec<String> = process
                        .metrics()
                        .lines()
                        .filter(|l| l.starts_with("tally_") && (l.contains("owned") || l.contains("lag") || l.contains("batches") || l.contains("events_total") || l.contains("flushes")))
                        .map(str::to_owned)
                        .collect();
                    eprintln!("{name}: {metrics:?}");
                }
                panic!("not converged: got {got:?}, want {expected:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let quiet = common::pipeline_quiet(&kafka, Duration::from_secs(90)).await;
        assert!(quiet, "the pipeline did not go quiet");
        assert_eq!(common::query::views(&http, &api, &ids).await.as_ref(), Ok(&expected), "totals changed once the pipeline was quiet");
        supervisor_stop.store(true, Ordering::SeqCst);
        supervisor.join().unwrap();
        let Supervised { running, restarts, .. } =
            Arc::try_unwrap(services).unwrap_or_else(|_| panic!("supervisor gone")).into_inner().unwrap();
        eprintln!(
            "replication faults: {} views acknowledged, {refusals} refusals retried, {} refused while two brokers were down; services restarted: {restarts:?}",
            expected.values().sum::<i64>(),
            clients.refused_in_outage.load(Ordering::SeqCst)
        );
        for (_, process) in running.into_iter().rev() {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
