//! The pipeline as separate processes on Apache Cassandra: gateway, counter,
//! writer (ScyllaDB/Cassandra store), query and reconciler over a real
//! broker, a real redis-server and a real Cassandra node. Events posted to
//! the gateway (resends included) become visible through the query API with
//! exactly the acknowledged count, and stay so once the pipeline is quiet. A
//! closed hour is archived and recounted by the reconciler into Cassandra's
//! batch layer with zero drift, and reads then say it is exact.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{cassandra_store_sections, process_sections_with_store, run_to_exit, write_config, TallyProcess};
use serde_json::{json, Value};
use tally_testkit::views::ViewsProducer;
use tally_testkit::{bounded, Broker, Cassandra, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_to_the_gateway_are_counted_exactly_in_cassandra() {
    bounded(Duration::from_secs(300), async {
        let broker = Broker::shared();
        let cassandra = Cassandra::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config(&broker);
        let dir = tempfile::tempdir().unwrap();
        let keyspace = tally_testkit::unique("tally_e2e").replace('-', "_");
        let store = cassandra_store_sections(&cassandra.contact_point(), &keyspace);
        let sections = process_sections_with_store(&redis.url(), 0, 0, "", &store);
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let (gateway, api) = (ingest.address_of("public API"), query.address_of("public API"));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        // The oracle: what the gateway acknowledged, distinct ids per video.
        let mut acknowledged: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for round in 0..6 {
            let events: Vec<(String, String)> = (0..300)
                .map(|i| {
                    // Odd rounds resend the previous round's ids: counted once.
                    let id = format!("r{}-{i}", if round % 2 == 1 { round - 1 } else { round });
                    (format!("clip-{}", i % 11), id)
                })
                .collect();
            let body: Vec<Value> = events.iter().map(|(v, id)| json!({"video_id": v, "event_id": id})).collect();
            let response = http.post(format!("http://{gateway}/v1/events")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 202);
            for (video, id) in events {
                acknowledged.entry(video).or_default().insert(id);
            }
        }
        let expected: BTreeMap<String, i64> =
            acknowledged.iter().map(|(v, ids)| (v.clone(), ids.len() as i64)).collect();
        let ids: Vec<String> = expected.keys().cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = common::query::views(&http, &api, &ids).await.unwrap_or_default();
            if got == expected {
                break;
            }
            assert!(Instant::now() < deadline, "not converged: got {got:?}, want {expected:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Quiet: the counter has committed every view and the writer every
        // count record; the totals must still hold (a late double count fails here).
        let quiet = common::pipeline_quiet(&kafka, Duration::from_secs(60)).await;
        assert!(quiet, "the pipeline did not go quiet");
        assert_eq!(
            common::query::views(&http, &api, &ids).await,
            Ok(expected),
            "totals changed after the pipeline went quiet"
        );
        assert!(writer.metric("tally_writer_batches_total").is_some_and(|b| b > 0.0), "the writer wrote batches");
        for process in [query, writer, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_hour_is_reconciled_into_cassandra_with_zero_drift_and_reads_say_exact() {
    bounded(Duration::from_secs(300), async {
        let broker = Broker::shared();
        let cassandra = Cassandra::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let keyspace = tally_testkit::unique("tally_batch").replace('-', "_");
        let store = cassandra_store_sections(&cassandra.contact_point(), &keyspace);
        let archive = dir.path().join("archive");
        let batch_layer = format!(
            "[archiver]\ndir = \"{}\"\nrecords-per-file = 100\nseal-grace = \"1ms\"\n\n\
             [reconciler]\nadmin-listen = \"127.0.0.1:0\"\ninterval = \"1s\"\nfirst-lookback = \"6h\"\n",
            archive.display()
        );
        let sections = process_sections_with_store(&redis.url(), 0, 0, "", &format!("{store}\n{batch_layer}"));
        let config = write_config(dir.path(), &kafka, &sections);
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let api = query.address_of("public API");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        // An hour closed long ago (allowed lateness 1 h), its views received
        // as it happened: 90 views, 6 resends inside the dedup window, 4
        // views received 40 minutes late (within the allowed lateness).
        let hour = (tally_model::timestamp::now_ms() / 3_600_000 - 3) * 3_600_000;
        let mut events = Vec::new();
        for i in 0..90 {
            let t = hour + i * 30_000;
            events.push((format!("film-{}", i % 3), format!("e{i}"), t, t + 100, true));
        }
        for i in 0..6 {
            let t = hour + i * 30_000;
            events.push((format!("film-{}", i % 3), format!("e{i}"), t, t + 20_000, false));
        }
        for i in 0..4 {
            let t = hour + 600_000 + i * 1_000;
            events.push((format!("film-{}", i % 3), format!("late{i}"), t, t + 2_400_000, true));
        }
        events.sort_by_key(|e| e.3);
        let mut producer = ViewsProducer::new(&kafka, &[]);
        producer.send(&events).await;
        let expected = producer.expected.clone();
        assert_eq!(expected.values().sum::<i64>(), 94);
        let ids: Vec<String> = expected.keys().cloned().collect();
        // Started only now: the archive counts as complete up to the views
        // log's end, and an event in the log is received by then. Views
        // appended after the reconciler looked at an empty log, stamped as
        // received hours ago, are something no gateway produces (it delivers
        // what it received within its delivery timeout); the recount of the
        // hour would rightly have found nothing.
        let reconciler = TallyProcess::spawn(&config, "reconciler");

        // The scheduled recount finds the hour closed and archived.
        let hour_end = tally_model::timestamp::format_rfc3339_ms(hour + 3_600_000);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answers = video_answers(&http, &api, &ids).await;
            let settled = answers.iter().all(|(video, a)| {
                a["views"].as_i64() == expected.get(video).copied()
                    && a["batch_verified_views"] == a["views"]
                    // Later hours are closed too and recounted (with no views):
                    // exact through the hour's end or later.
                    && a["exact_through"].as_str().is_some_and(|through| through >= hour_end.as_str())
            });
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "the hour was not reconciled: {answers:?}, want {expected:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // Recounting it again by hand reports zero drift and changes nothing.
        let report = dir.path().join("report.json");
        let (status, printed) = run_to_exit(
            &config,
            &[
                "reconcile",
                "--from",
                &(hour).to_string(),
                "--to",
                &(hour + 3_600_000).to_string(),
                "--report",
                report.to_str().unwrap(),
            ],
            Duration::from_secs(120),
        );
        assert!(status.success(), "tally reconcile: {printed}");
        let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let period = &report[0];
        assert_eq!(
            (period["batch_views"].as_i64(), period["realtime_views"].as_i64(), period["drift"].as_i64()),
            (Some(94), Some(94), Some(0)),
            "{report}"
        );
        assert_eq!(common::query::views(&http, &api, &ids).await, Ok(expected), "reconciling again changed counts");
        for process in [reconciler, query, writer, counter] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}

/// `GET /v1/videos/{id}/views` of each video, as answered.
async fn video_answers(http: &reqwest::Client, api: &str, ids: &[String]) -> BTreeMap<String, Value> {
    let mut answers = BTreeMap::new();
    for id in ids {
        let answer = match http.get(format!("http://{api}/v1/videos/{id}/views")).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(e) => Value::String(e.to_string()),
        };
        answers.insert(id.clone(), answer);
    }
    answers
}
