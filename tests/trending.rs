//! Trending videos end to end, as separate processes: gateway, counter
//! (emitting per-minute frequent-items sketches), writer (embedded store)
//! and query over a real broker and redis-server. 40,000 views drawn from a
//! zipf 1.1 law over 100,000 videos within the last hour: the top 100 of
//! `GET /v1/trending?window=1h&limit=100` holds the exact top 100 (issue 17's
//! acceptance: recall at least 0.99) and every listed count is the video's
//! true views and what its minute series sums to over the window; and
//! replaying `tally.counts` from offset 0 (the writer's group reset, the
//! writer restarted) changes nothing in the answer, its error bound included
//! (sketches are added to their rows once per flush version).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{process_sections, rewind_writer_group, write_config, TallyProcess};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tally_testkit::{bounded, Broker, RedisServer};

const VIDEOS: usize = 100_000;
const VIEWS: usize = 40_000;
const TOP: usize = 100;

/// `cumulative[k]`: the probability of ranks 0..=k under zipf `s`.
fn zipf(s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=VIDEOS).map(|k| (k as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// The listed `(video, views)` of a trending answer.
fn listed(answer: &Value) -> Vec<(String, i64)> {
    answer["videos"]
        .as_array()
        .map(|videos| {
            videos.iter().filter_map(|v| Some((v["video_id"].as_str()?.to_owned(), v["views"].as_i64()?))).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_lists_the_exact_top_100_of_a_zipf_hour_with_series_sums_and_a_replay_changes_nothing() {
    bounded(Duration::from_secs(280), async {
        let broker = Broker::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config(&broker);
        let dir = tempfile::tempdir().unwrap();
        let sections = process_sections(dir.path(), &redis.url(), 0, 0, "")
            .replace("fresh-for = \"100ms\"", "fresh-for = \"100ms\"\ntrending-fresh-for = \"100ms\"");
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let (gateway, api) = (ingest.address_of("public API"), query.address_of("public API"));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        // Views spread over the 30 minutes before now: inside the window
        // whatever minute the answer is computed in.
        let now = tally_model::timestamp::now_ms();
        let cumulative = zipf(1.1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut truth: HashMap<String, i64> = HashMap::new();
        let events: Vec<Value> = (0..VIEWS)
            .map(|i| {
                let u: f64 = rng.gen();
                let rank = cumulative.partition_point(|c| *c < u).min(VIDEOS - 1);
                let video = format!("z{rank}");
                *truth.entry(video.clone()).or_default() += 1;
                let ts = now - 30 * 60_000 + rng.gen_range(0..30 * 60_000);
                json!({"video_id": video, "event_id": format!("e{i}"), "ts": ts})
            })
            .collect();
        for batch in events.chunks(1_000) {
            let response = http.post(format!("http://{gateway}/v1/events")).json(&batch).send().await.unwrap();
            assert_eq!(response.status(), 202);
        }
        let mut ranked: Vec<(String, i64)> = truth.clone().into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let cut = ranked[TOP - 1].1;

        let url = format!("http://{api}/v1/trending?window=1h&limit={TOP}");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut converged = false;
        while Instant::now() < deadline && !converged {
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.unwrap();
            let top = listed(&answer);
            converged = top.len() == TOP && top.iter().all(|(video, views)| truth[video] == *views);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(converged, "the listed counts did not reach the true counts");
        assert!(common::pipeline_quiet(&kafka, Duration::from_secs(60)).await, "the pipeline did not go quiet");
        tokio::time::sleep(Duration::from_millis(200)).await; // past trending-fresh-for
        let answer: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let top = listed(&answer);
        assert_eq!(top.len(), TOP, "{answer}");

        // Recall of the exact top 100, ties at the cut counted as equals.
        let in_exact_top = top.iter().filter(|(video, _)| truth[video] >= cut).count();
        let recall = in_exact_top as f64 / TOP as f64;
        let above_cut_missing: Vec<&(String, i64)> =
            ranked.iter().filter(|(v, n)| *n > cut && !top.iter().any(|(l, _)| l == v)).collect();
        eprintln!(
            "trending e2e: recall {recall}, error bound {}, complete {}, cut {cut}",
            answer["error_bound"], answer["complete"]
        );
        assert!(recall >= 0.99, "recall {recall}: {answer}");
        assert!(above_cut_missing.is_empty(), "videos above the cut not listed: {above_cut_missing:?}");

        // Every listed count is the true count and the minute series' sum.
        let (from, to) = (answer["from"].as_str().unwrap().to_owned(), answer["to"].as_str().unwrap().to_owned());
        for (video, views) in &top {
            assert_eq!(*views, truth[video], "{video}");
            let series: Value = http
                .get(format!("http://{api}/v1/videos/{video}/views/series?from={from}&to={to}&step=minute"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let sum: i64 = series["points"].as_array().unwrap().iter().map(|p| p["views"].as_i64().unwrap()).sum();
            assert_eq!(*views, sum, "{video}: listed views and the series sum differ");
        }

        // Replay the counts topic from offset 0 into the same store.
        assert!(writer.terminate(Duration::from_secs(30)).success());
        let partitions =
            tally_kafka::topics::partition_count(&kafka, &kafka.topics.counts, Duration::from_secs(10)).unwrap();
        rewind_writer_group(&kafka, i32::try_from(partitions).unwrap());
        let replaying = TallyProcess::spawn(&config, "writer");
        assert!(common::pipeline_quiet(&kafka, Duration::from_secs(90)).await, "the replay did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await; // past trending-fresh-for
        let mut replayed: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let mut before = answer.clone();
        // The window moves with the clock; what it holds must not.
        for body in [&mut replayed, &mut before] {
            let object = body.as_object_mut().unwrap();
            object.remove("from");
            object.remove("to");
        }
        assert_eq!(replayed, before, "the replay changed the trending answer");
        for process in [query, replaying, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
