//! Unique viewers end to end, as separate processes: gateway (pseudonymising
//! viewer ids), counter, writer (embedded store) and query over a real broker
//! and redis-server. Audiences of 1 to 6,000 viewers, each viewer watching
//! once or twice over two hours, resends included: the query API's estimates
//! are exact below 100 viewers and within 3.2 % above; no raw viewer id is in
//! `tally.views`; and replaying `tally.counts` from offset 0 (the writer's
//! group reset, the writer restarted) changes no estimate and merges nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{process_sections, rewind_writer_group, write_config, TallyProcess};
use serde_json::{json, Value};
use tally_testkit::{bounded, Broker, RedisServer};

const AUDIENCES: [u32; 12] = [1, 2, 5, 30, 99, 100, 150, 700, 1_600, 2_500, 4_000, 6_000];

/// The uniques answers of every video over `[from, to)`.
async fn uniques(http: &reqwest::Client, api: &str, from: i64, to: i64) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    for (video, _) in AUDIENCES.iter().enumerate() {
        let url = format!("http://{api}/v1/videos/clip-{video}/uniques?from={from}&to={to}");
        let response = http.get(url).send().await.map_err(|e| e.to_string())?;
        let mut body: Value = response.json().await.map_err(|e| e.to_string())?;
        // Whether it came from the cache is no part of the estimate.
        body.as_object_mut().ok_or("not an object")?.remove("stale");
        out.insert(format!("clip-{video}"), body);
    }
    Ok(out)
}

fn within_bounds(answers: &BTreeMap<String, Value>) -> Result<(), String> {
    for (video, audience) in AUDIENCES.iter().enumerate() {
        let answer = &answers[&format!("clip-{video}")];
        let got = answer["uniques"].as_u64().ok_or_else(|| format!("no estimate: {answer}"))?;
        let error = (got as f64 - f64::from(*audience)).abs() / f64::from(*audience);
        let exact_enough = if *audience < 100 { got == u64::from(*audience) && answer["exact"] == true } else { true };
        if error > 0.032 || !exact_enough {
            return Err(format!("clip-{video}: {audience} viewers, answered {answer}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_viewers_are_exact_when_small_within_bounds_when_large_and_unchanged_by_a_replay() {
    bounded(Duration::from_secs(280), async {
        let broker = Broker::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config(&broker);
        let dir = tempfile::tempdir().unwrap();
        let sections = process_sections(dir.path(), &redis.url(), 0, 0, r#"viewer-id-key = "e2e-secret""#);
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let (gateway, api) = (ingest.address_of("public API"), query.address_of("public API"));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        // Every viewer watches once; every third watches again 40 minutes
        // earlier (another hour, often). Event ids are stable: resends count once.
        let now = tally_model::timestamp::now_ms();
        let mut events = Vec::new();
        for (video, audience) in AUDIENCES.iter().enumerate() {
            for viewer in 0..*audience {
                let raw = format!("user-{viewer}@example.com");
                events.push(json!({"video_id": format!("clip-{video}"), "event_id": format!("{video}-{viewer}-a"),
                    "viewer_id": raw, "ts": now}));
                if viewer % 3 == 0 {
                    events.push(json!({"video_id": format!("clip-{video}"), "event_id": format!("{video}-{viewer}-b"),
                        "viewer_id": raw, "ts": now - 40 * 60_000}));
                }
            }
        }
        for (i, batch) in events.chunks(1_000).enumerate() {
            let response = http.post(format!("http://{gateway}/v1/events")).json(&batch).send().await.unwrap();
            assert_eq!(response.status(), 202);
            if i % 4 == 0 {
                // A client retry of an acknowledged batch.
                let again = http.post(format!("http://{gateway}/v1/events")).json(&batch).send().await.unwrap();
                assert_eq!(again.status(), 202);
            }
        }
        let (from, to) = (now - 2 * 3_600_000, now + 3_600_000);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = Err(String::from("no answer yet"));
        while Instant::now() < deadline {
            last = uniques(&http, &api, from, to).await.and_then(|a| within_bounds(&a));
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(last, Ok(()), "uniques did not converge within bounds");
        assert!(common::pipeline_quiet(&kafka, Duration::from_secs(60)).await, "the pipeline did not go quiet");
        let settled = uniques(&http, &api, from, to).await.unwrap();
        within_bounds(&settled).unwrap();

        // No raw viewer id reached Kafka.
        let views =
            tally_testkit::topic::read_records(&kafka, &kafka.topics.views, events.len(), Duration::from_secs(30));
        assert!(views.len() >= events.len());
        for record in &views {
            assert!(
                !String::from_utf8_lossy(&record.payload).contains("example.com"),
                "a raw viewer id in tally.views"
            );
        }

        // Replay the counts topic from offset 0 into the same store.
        assert!(writer.terminate(Duration::from_secs(30)).success());
        let partitions =
            tally_kafka::topics::partition_count(&kafka, &kafka.topics.counts, Duration::from_secs(10)).unwrap();
        rewind_writer_group(&kafka, i32::try_from(partitions).unwrap());
        let replaying = TallyProcess::spawn(&config, "writer");
        assert!(common::pipeline_quiet(&kafka, Duration::from_secs(90)).await, "the replay did not finish");
        let metrics = replaying.metrics();
        let sketches = |outcome: &str| {
            let line = format!("tally_writer_sketches_total{{outcome=\"{outcome}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.trim().parse::<f64>().ok())
        };
        assert_eq!(sketches("applied"), Some(0.0), "a replayed sketch was merged again");
        assert!(sketches("stale").is_some_and(|n| n > 0.0), "the replay read no sketch: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await; // past the query's fresh-for
        assert_eq!(uniques(&http, &api, from, to).await.unwrap(), settled, "the replay changed an estimate");
        for process in [query, replaying, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
