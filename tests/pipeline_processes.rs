//! The pipeline as separate processes, as in production: gateway, counter,
//! writer and query, over a real broker, a real redis-server and the
//! embedded store. Events posted to the gateway become visible through the
//! query API with the exact count.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{process_sections, write_config, TallyProcess};
use serde_json::{json, Value};
use tally_testkit::{bounded, Broker, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_to_the_gateway_are_queryable_with_the_exact_count() {
    bounded(Duration::from_secs(240), async {
        let broker = Broker::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config(&broker);
        let dir = tempfile::tempdir().unwrap();
        let sections = process_sections(dir.path(), &redis.url(), 0, 0, "");
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let (gateway, api) = (ingest.address_of("public API"), query.address_of("public API"));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for round in 0..5 {
            let events: Vec<Value> = (0..200)
                .map(|i| {
                    let video = format!("clip-{}", i % 7);
                    // Every other round resends the previous round's ids: counted once.
                    let id = format!("r{}-{i}", if round % 2 == 1 { round - 1 } else { round });
                    json!({"video_id": video, "event_id": id})
                })
                .collect();
            if round % 2 == 0 {
                for i in 0..200 {
                    *expected.entry(format!("clip-{}", i % 7)).or_default() += 1;
                }
            }
            let response = http.post(format!("http://{gateway}/v1/events")).json(&events).send().await.unwrap();
            assert_eq!(response.status(), 202);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids: Vec<&String> = expected.keys().collect();
            let got = common::query::views(&http, &api, &ids).await.unwrap_or_default();
            if got == expected {
                break;
            }
            assert!(Instant::now() < deadline, "not converged: got {got:?}, want {expected:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let one: Value =
            http.get(format!("http://{api}/v1/videos/clip-0/views")).send().await.unwrap().json().await.unwrap();
        assert_eq!(one["views"].as_i64(), expected.get("clip-0").copied());
        assert!(one["as_of"].is_string(), "as_of is reported: {one}");
        assert!(writer.metric("tally_writer_batches_total").is_some_and(|b| b > 0.0));
        for process in [query, writer, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
