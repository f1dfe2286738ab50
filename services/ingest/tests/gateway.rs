//! The gateway against a real Apache Kafka broker.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Gateway;
use tally_config::Secret;
use tally_ingest::ApiKeyConfig;
use tally_model::{wire, PartitionKey, Salt};
use tally_testkit::topic::{read_records, record_count};
use tally_testkit::{bounded, Broker};

const LIMIT: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    tally_model::timestamp::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_land_in_the_views_topic_once_with_keys_and_payloads() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let key = "gateway-test-key";
        let gateway =
            Gateway::start(&broker, |config| config.viewer_id_key = Some(tally_config::Secret::new(key))).await;
        let ts = now_ms() - 60_000;
        let array = json!([
            {"video_id": "alpha", "event_id": "a-1", "ts": ts, "viewer_id": "u1"},
            {"video_id": "beta", "event_id": "b-1", "ts": tally_model::timestamp::format_rfc3339_ms(ts)},
            {"video_id": "alpha", "event_id": "a-2", "attributes": {"country": "NL"}},
        ]);
        let response = gateway.post("application/json", array.to_string()).await;
        assert_eq!(response.status(), 202);
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"accepted": 3}));
        let ndjson = "{\"video_id\":\"gamma\",\"event_id\":\"g-1\"}\n{\"video_id\":\"gamma\",\"event_id\":\"g-2\"}\n";
        assert_eq!(gateway.post("application/x-ndjson", ndjson).await.status(), 202);
        let single = json!({"video_id": "delta"});
        assert_eq!(gateway.post("application/json; charset=utf-8", single.to_string()).await.status(), 202);

        let records = read_records(&gateway.kafka, &gateway.kafka.topics.views, 6, Duration::from_secs(20));
        assert_eq!(records.len(), 6);
        assert_eq!(record_count(&gateway.kafka, &gateway.kafka.topics.views), 6, "exactly once: no extra records");
        let mut by_id = HashMap::new();
        for record in &records {
            let view = wire::decode(&record.payload).expect("valid v1 record");
            assert_eq!(view.salt, Salt::NONE, "cold videos are not salted");
            assert_eq!(record.key, view.video_id.as_bytes(), "key is the video id");
            by_id.insert(
                view.event_id.to_owned(),
                (
                    view.video_id.to_owned(),
                    view.ts_ms,
                    view.viewer_id.map(str::to_owned),
                    view.attributes.map(str::to_owned),
                ),
            );
        }
        // The viewer id travels only as its keyed pseudonym.
        let pseudonym = tally_model::viewer::Pseudonymizer::new(key.as_bytes()).pseudonym("u1");
        assert_eq!(by_id["a-1"], ("alpha".into(), ts, Some(pseudonym), None));
        assert_eq!(by_id["b-1"].1, ts, "RFC 3339 and epoch ms give the same time");
        assert_eq!(by_id["a-2"].3.as_deref(), Some(r#"{"country":"NL"}"#));
        assert!(by_id.contains_key("g-1") && by_id.contains_key("g-2"));
        let assigned: Vec<_> = by_id.keys().filter(|id| id.len() == 26).collect();
        assert_eq!(assigned.len(), 1, "the event without an id got a ULID");
        let alpha_partitions: BTreeSet<i32> =
            records.iter().filter(|r| r.key == b"alpha").map(|r| r.partition).collect();
        assert_eq!(alpha_partitions.len(), 1, "one cold video, one partition");

        let metrics = gateway.metrics().await;
        assert!(metrics.contains("tally_ingest_events_accepted_total 6"), "{metrics}");
        assert!(
            metrics.contains(
                "tally_http_requests_total{method=\"POST\",route=\"/v1/events\",service=\"ingest\",status=\"202\"} 3"
            ),
            "{metrics}"
        );
        gateway.stop().await;
    })
    .await;
}

struct Case {
    name: &'static str,
    content_type: &'static str,
    body: String,
    status: u16,
    kind: &'static str,
}

fn case(
    name: &'static str,
    content_type: &'static str,
    body: impl Into<String>,
    status: u16,
    kind: &'static str,
) -> Case {
    Case { name, content_type, body: body.into(), status, kind }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_problems_and_produce_nothing() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let gateway = Gateway::start(&broker, |c| {
            c.max_events = 5;
            c.max_body_bytes = 64 * 1024;
        })
        .await;
        let json = "application/json";
        let future = now_ms() + 3_600_000;
        let too_many = json!((0..6).map(|i| json!({"video_id": format!("v{i}")})).collect::<Vec<_>>());
        let cases = vec![
            case("not JSON", json, "hello", 400, "malformed-json"),
            case("truncated JSON", json, r#"{"video_id":"v""#, 400, "malformed-json"),
            case("empty body", json, "", 400, "empty-body"),
            case("empty array", json, "[]", 400, "empty-body"),
            case("blank NDJSON", "application/x-ndjson", "\n\n", 400, "empty-body"),
            case("scalar instead of object", json, "[42]", 400, "invalid-events"),
            case("missing video_id", json, r#"{"ts":1795341600000}"#, 400, "invalid-events"),
            case("empty video_id", json, r#"{"video_id":""}"#, 400, "invalid-events"),
            case("oversized video_id", json, format!(r#"{{"video_id":"{}"}}"#, "v".repeat(129)), 400, "invalid-events"),
            case("video_id with a space", json, r#"{"video_id":"a b"}"#, 400, "invalid-events"),
            case("video_id as a number", json, r#"{"video_id":7}"#, 400, "invalid-events"),
            case("ts not a date", json, r#"{"video_id":"v","ts":"yesterday"}"#, 400, "invalid-events"),
            case("ts as a float", json, r#"{"video_id":"v","ts":1795341600000.5}"#, 400, "invalid-events"),
            case("ts in seconds", json, r#"{"video_id":"v","ts":1795341600}"#, 400, "invalid-events"),
            case("ts far in the future", json, format!(r#"{{"video_id":"v","ts":{future}}}"#), 400, "invalid-events"),
            case(
                "oversized event_id",
                json,
                format!(r#"{{"video_id":"v","event_id":"{}"}}"#, "e".repeat(65)),
                400,
                "invalid-events",
            ),
            case("unknown field", json, r#"{"video_id":"v","vidoe":"x"}"#, 400, "invalid-events"),
            case("attributes not an object", json, r#"{"video_id":"v","attributes":"x"}"#, 400, "invalid-events"),
            case(
                "one bad event spoils the batch",
                json,
                r#"[{"video_id":"ok"},{"video_id":"no good"}]"#,
                400,
                "invalid-events",
            ),
            case("too many events", json, too_many.to_string(), 413, "too-many-events"),
            case(
                "body too large",
                json,
                format!(r#"{{"video_id":"v","attributes":{{"x":"{}"}}}}"#, "x".repeat(70_000)),
                413,
                "too-large",
            ),
            case("wrong content type", "text/plain", r#"{"video_id":"v"}"#, 415, "unsupported-media-type"),
            case("form content type", "application/x-www-form-urlencoded", "video_id=v", 415, "unsupported-media-type"),
        ];
        assert!(cases.len() >= 15);
        for case in &cases {
            let response = gateway.post(case.content_type, case.body.clone()).await;
            assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
            assert_eq!(response.headers()["content-type"], "application/problem+json", "{}", case.name);
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["type"], format!("urn:tally:problem:{}", case.kind), "{}: {problem}", case.name);
            assert_eq!(problem["status"], case.status, "{}", case.name);
            assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", case.name);
        }
        let response = gateway.post(json, r#"[{"video_id":"ok"},{"video_id":""},{"video_id":"v","ts":"x"}]"#).await;
        let problem: Value = response.json().await.unwrap();
        let indexes: Vec<(u64, &str)> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap()))
            .collect();
        assert_eq!(indexes, vec![(1, "video_id"), (2, "ts")], "{problem}");

        // Nothing above may have produced a record; a valid post afterwards is the only one.
        assert_eq!(gateway.post(json, r#"{"video_id":"after"}"#).await.status(), 202);
        let records = read_records(&gateway.kafka, &gateway.kafka.topics.views, 2, Duration::from_secs(5));
        assert_eq!(records.len(), 1, "rejected requests produced records");
        assert_eq!(record_count(&gateway.kafka, &gateway.kafka.topics.views), 1);
        gateway.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gets_503_with_retry_after_never_2xx() {
    bounded(LIMIT, async {
        let mut broker = Broker::start();
        let gateway = Gateway::start(&broker, |c| {
            c.ack_timeout = Duration::from_secs(1);
            c.delivery_timeout = Duration::from_secs(3);
        })
        .await;
        // A fresh broker's first produce (producer id, topic metadata) can outlast the 1 s ack bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        while gateway.post("application/json", r#"{"video_id":"before","event_id":"b-1"}"#).await.status() != 202 {
            assert!(Instant::now() < deadline, "the gateway never accepted while the broker ran");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        broker.stop();
        for attempt in 0..3 {
            let started = Instant::now();
            let response =
                gateway.post("application/json", format!(r#"{{"video_id":"during","event_id":"d-{attempt}"}}"#)).await;
            let waited = started.elapsed();
            assert_eq!(response.status(), 503, "attempt {attempt}");
            assert!(response.headers().contains_key("retry-after"));
            assert!(waited < Duration::from_secs(3), "answered within the ack bound, took {waited:?}");
        }
        broker.restart();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status =
                gateway.post("application/json", r#"{"video_id":"after","event_id":"after-1"}"#).await.status();
            if status == 202 {
                break;
            }
            assert_eq!(status, 503, "only 503 while reconnecting");
            assert!(Instant::now() < deadline, "gateway did not recover after the broker restarted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let metrics = gateway.metrics().await;
        assert!(metrics.contains("tally_ingest_events_rejected_total{reason=\"broker_timeout\"}"), "{metrics}");
        // Read everything: a 503'd retry may still have landed (at least once), so count first.
        let total = record_count(&gateway.kafka, &gateway.kafka.topics.views) as usize;
        let records = read_records(&gateway.kafka, &gateway.kafka.topics.views, total, Duration::from_secs(20));
        assert_eq!(records.len(), total);
        let videos: BTreeSet<String> =
            records.iter().map(|r| wire::decode(&r.payload).unwrap().video_id.to_owned()).collect();
        assert!(
            videos.contains("before") && videos.contains("after"),
            "acknowledged events survived the restart: {videos:?}"
        );
        gateway.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_a_client_over_its_rate_gets_429() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let gateway = Gateway::start(&broker, |c| {
            c.api_keys = vec![
                ApiKeyConfig { name: "slow".into(), key: Secret::new("slow-key"), events_per_sec: 1.0, burst: 5.0 },
                ApiKeyConfig { name: "fast".into(), key: Secret::new("fast-key"), events_per_sec: 0.0, burst: 0.0 },
            ];
        })
        .await;
        let post = |key: Option<&'static str>, body: String| {
            let mut request = gateway
                .http
                .post(format!("http://{}/v1/events", gateway.addr))
                .header("content-type", "application/json")
                .body(body);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };
        let five = json!((0..5).map(|_| json!({"video_id": "v"})).collect::<Vec<_>>()).to_string();
        assert_eq!(post(None, five.clone()).await.unwrap().status(), 401);
        assert_eq!(post(Some("wrong"), five.clone()).await.unwrap().status(), 401);
        assert_eq!(post(Some("slow-key"), five.clone()).await.unwrap().status(), 202);
        let limited = post(Some("slow-key"), r#"{"video_id":"v"}"#.into()).await.unwrap();
        assert_eq!(limited.status(), 429);
        let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "retry after {retry_after}");
        let problem: Value = limited.json().await.unwrap();
        assert_eq!(problem["type"], "urn:tally:problem:rate-limited");
        assert!(!problem.to_string().contains("slow-key"), "the key itself never appears");
        assert_eq!(post(Some("fast-key"), five.clone()).await.unwrap().status(), 202, "other keys are unaffected");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(post(Some("slow-key"), r#"{"video_id":"v"}"#.into()).await.unwrap().status(), 202, "refilled");
        gateway.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_hot_video_spreads_over_partitions_while_a_retried_event_keeps_its_partition() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let gateway = Gateway::start(&broker, |c| {
            c.salting.hot_videos = vec!["launch".into()];
            c.salting.detect_threshold_per_sec = 100;
        })
        .await;
        let ts = now_ms() - 10 * 60_000;
        let configured: Vec<Value> = (0..400)
            .map(|i| json!({"video_id": "launch", "event_id": format!("l-{i}"), "ts": ts + (i % 8) * 60_000}))
            .collect();
        assert_eq!(gateway.post("application/json", Value::from(configured).to_string()).await.status(), 202);
        let trending: Vec<Value> =
            (0..400).map(|i| json!({"video_id": "trending", "event_id": format!("t-{i}"), "ts": ts})).collect();
        assert_eq!(gateway.post("application/json", Value::from(trending).to_string()).await.status(), 202);
        let cold: Vec<Value> =
            (0..50).map(|i| json!({"video_id": "quiet", "event_id": format!("q-{i}"), "ts": ts})).collect();
        assert_eq!(gateway.post("application/json", Value::from(cold).to_string()).await.status(), 202);
        // A client retry of one event, twice: same id, same ts.
        let retry = json!({"video_id": "launch", "event_id": "l-7", "ts": ts + 7 * 60_000}).to_string();
        assert_eq!(gateway.post("application/json", retry.clone()).await.status(), 202);
        assert_eq!(gateway.post("application/json", retry).await.status(), 202);

        let records = read_records(&gateway.kafka, &gateway.kafka.topics.views, 852, Duration::from_secs(30));
        assert_eq!(records.len(), 852);
        let mut partitions: HashMap<&str, BTreeSet<i32>> = HashMap::new();
        let mut retried = Vec::new();
        for record in &records {
            let view = wire::decode(&record.payload).unwrap();
            let key = std::str::from_utf8(&record.key).unwrap();
            assert_eq!(PartitionKey::split(key), Some((view.video_id, view.salt)), "key and payload agree");
            partitions.entry(view.video_id).or_default().insert(record.partition);
            if view.event_id == "l-7" {
                retried.push((record.partition, view.salt));
            }
        }
        assert!(partitions["launch"].len() >= 3, "configured hot video spread: {:?}", partitions["launch"]);
        // Detected at run time by this gateway only: reported, never salted
        // (a retry through another gateway must land on the same partition).
        assert_eq!(partitions["trending"].len(), 1, "a detected video keeps its key: {:?}", partitions["trending"]);
        assert_eq!(partitions["quiet"].len(), 1, "a cold video stays on one partition");
        assert_eq!(retried.len(), 3);
        assert!(retried.windows(2).all(|w| w[0] == w[1]), "a retried event keeps partition and salt: {retried:?}");
        let metrics = gateway.metrics().await;
        // Both videos crossed the detector threshold; only "launch" is salted, by configuration.
        assert!(metrics.contains("tally_ingest_hot_videos 2"), "{metrics}");
        gateway.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_problem_fallbacks_are_served() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let gateway = Gateway::start(&broker, |_| {}).await;
        let doc: Value = gateway
            .http
            .get(format!("http://{}/openapi.json", gateway.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["paths"]["/v1/events"]["post"].is_object());
        let missing = gateway.http.get(format!("http://{}/v1/nope", gateway.addr)).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()["content-type"], "application/problem+json");
        let wrong_method = gateway.http.get(format!("http://{}/v1/events", gateway.addr)).send().await.unwrap();
        assert_eq!(wrong_method.status(), 405);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = gateway.http.get(format!("http://{}/readyz", gateway.admin)).send().await.unwrap();
            if ready.status() == 200 {
                let body: Value = ready.json().await.unwrap();
                assert_eq!(body["checks"]["ingest.kafka"], "ok");
                break;
            }
            assert_eq!(ready.status(), 503);
            assert!(Instant::now() < deadline, "gateway never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        gateway.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resent_after_their_video_turned_hot_keep_their_partitions() {
    bounded(LIMIT, async {
        let broker = Broker::shared();
        let gateway = Gateway::start(&broker, |c| c.salting.detect_threshold_per_sec = 100).await;
        // A fixed event time: the salts, hence the partitions, are the same in every run.
        let ts = 1_795_341_600_000_i64;
        let early: Vec<Value> =
            (0..20).map(|i| json!({"video_id": "rising", "event_id": format!("early-{i}"), "ts": ts})).collect();
        let early = Value::from(early).to_string();
        assert_eq!(gateway.post("application/json", early.clone()).await.status(), 202);
        assert!(gateway.metrics().await.contains("tally_ingest_hot_videos 0"), "cold at first");
        let crowd: Vec<Value> =
            (0..400).map(|i| json!({"video_id": "rising", "event_id": format!("crowd-{i}"), "ts": ts})).collect();
        assert_eq!(gateway.post("application/json", Value::from(crowd).to_string()).await.status(), 202);
        assert!(gateway.metrics().await.contains("tally_ingest_hot_videos 1"), "the video turned hot");
        // The client never heard the first 202 and sends the same events again.
        assert_eq!(gateway.post("application/json", early).await.status(), 202);

        let records = read_records(&gateway.kafka, &gateway.kafka.topics.views, 440, Duration::from_secs(30));
        assert_eq!(records.len(), 440);
        let mut partitions: HashMap<String, Vec<i32>> = HashMap::new();
        for record in &records {
            let view = wire::decode(&record.payload).unwrap();
            if view.event_id.starts_with("early-") {
                partitions.entry(view.event_id.to_owned()).or_default().push(record.partition);
            }
        }
        let moved: Vec<_> = partitions.iter().filter(|(_, p)| p.len() != 2 || p[0] != p[1]).collect();
        assert!(
            moved.is_empty(),
            "resends on another partition than their first send (dedup cannot meet them): {moved:?}"
        );
        gateway.stop().await;
    })
    .await;
}
