//! The pipeline as separate processes on Apache Cassandra: gateway, counter,
//! writer (ScyllaDB/Cassandra store), query and reconciler over a real
//! broker, a real redis-server and a real Cassandra node. Events posted to
//! the gateway (resends included) become visible through the query API with
//! exactly the acknowledged count, and stay so once the pipeline is quiet.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{cassandra_store_sections, process_sections_with_store, write_config, TallyProcess};
use serde_json::{json, Value};
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
