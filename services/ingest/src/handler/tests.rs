//! Partition keys as two gateways choose them, without a broker: a retried
//! event must get the key of its first attempt whatever the clock or the
//! gateway's hot-key detector says.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::ClientConfig;
use tally_model::hot::HotKeyDetector;
use tally_model::{parse_events, BodyFormat, Limits, SaltPolicy, SaltingConfig};
use tally_service::api_keys::ApiKeys;

use super::*;
use crate::acks::{GatewayProducer, RequestAcks};
use crate::metrics::IngestMetrics;
use crate::publish::Publisher;
use crate::rate_limit::RateLimiter;

/// 2026-11-22T10:00:59.5Z: half a second before a minute (and salt slot) boundary.
const T: i64 = 1_795_341_659_500;

/// A gateway's state (its producer never connects: nothing is published)
/// with `salting` and a detector that salts videos above `threshold` events a second.
fn gateway(salting: &SaltingConfig) -> AppState {
    let producer: GatewayProducer =
        ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create_with_context(RequestAcks).unwrap();
    let metrics = IngestMetrics::register(&Registry::new()).unwrap();
    AppState {
        publisher: Publisher::new(producer, "views", 1_000, Duration::from_secs(1), metrics.clone()),
        keys: ApiKeys::new(std::iter::empty()),
        limiter: RateLimiter::default(),
        limits: Limits::default(),
        max_body_bytes: 1 << 20,
        body_read_timeout: Duration::from_secs(1),
        retry_after_secs: 1,
        salt_policy: SaltPolicy::new(salting).unwrap(),
        detector: Mutex::new(HotKeyDetector::new(
            salting.detect_threshold_per_sec,
            i64::try_from(salting.hold.as_millis()).unwrap(),
            salting.detector_capacity,
        )),
        metrics,
        viewers: Some(tally_model::viewer::Pseudonymizer::new(b"test-key")),
    }
}

/// The partition keys `gateway` gives the events of `body` received at `now_ms`.
fn keys(gateway: &AppState, body: &str, now_ms: i64) -> Vec<String> {
    let events = parse_events(body.as_bytes(), BodyFormat::Ndjson, &gateway.limits, now_ms).unwrap();
    encode(gateway, &events, now_ms).into_iter().map(|record| String::from_utf8(record.key).unwrap()).collect()
}

/// Events without `ts`, with the client's own ids (so that a retry is one).
fn body(video: &str, n: usize) -> String {
    (0..n).map(|i| format!("{{\"video_id\":\"{video}\",\"event_id\":\"{video}-{i}\"}}\n")).collect()
}

/// Issue 15, item 1: a hot video's events without `ts`, each retried after
/// a slot boundary, then through a second gateway whose detector never saw
/// the video, keep the partition key of their first attempt.
#[test]
fn a_retry_keeps_its_partition_key_across_slot_boundaries_and_gateways() {
    let salting =
        SaltingConfig { hot_videos: vec!["launch".into()], detect_threshold_per_sec: 100, ..SaltingConfig::default() };
    let first = gateway(&salting);
    // The first gateway sees a burst of "viral"; the second one never does.
    let burst = body("viral", 500);
    keys(&first, &burst, T - 400);
    let second = gateway(&salting);

    for video in ["launch", "viral"] {
        let requests = body(video, 200);
        let attempt = keys(&first, &requests, T);
        let after_boundary = keys(&first, &requests, T + 1_000);
        let elsewhere = keys(&second, &requests, T + 2_000);
        for (i, key) in attempt.iter().enumerate() {
            assert_eq!(&after_boundary[i], key, "{video} event {i} retried after a slot boundary");
            assert_eq!(&elsewhere[i], key, "{video} event {i} retried through another gateway");
        }
    }
}

/// A configured hot video still spreads over several partition keys.
#[test]
fn a_configured_hot_video_spreads_over_salted_keys() {
    let salting = SaltingConfig { hot_videos: vec!["launch".into()], ..SaltingConfig::default() };
    let spread: HashSet<String> = keys(&gateway(&salting), &body("launch", 200), T).into_iter().collect();
    assert!(spread.len() >= 4, "{spread:?}");
    assert!(spread.iter().all(|k| k.starts_with("launch~")), "{spread:?}");
    let cold: HashSet<String> = keys(&gateway(&salting), &body("cold", 200), T).into_iter().collect();
    assert_eq!(cold, HashSet::from(["cold".to_owned()]));
}

#[test]
fn viewer_ids_leave_the_gateway_only_as_keyed_pseudonyms() {
    let body = r#"{"video_id":"v","event_id":"e1","viewer_id":"alice@example.com"}
{"video_id":"v","event_id":"e2","viewer_id":"alice@example.com"}
{"video_id":"v","event_id":"e3"}"#;
    let viewers = |gateway: &AppState| -> Vec<Option<String>> {
        let events = parse_events(body.as_bytes(), BodyFormat::Ndjson, &gateway.limits, T).unwrap();
        encode(gateway, &events, T)
            .iter()
            .map(|Record { payload, .. }| {
                assert!(!String::from_utf8_lossy(payload).contains("alice"), "raw viewer id on the wire");
                tally_model::wire::decode(payload).unwrap().viewer_id.map(str::to_owned)
            })
            .collect()
    };
    let keyed = gateway(&SaltingConfig::default());
    let expected = tally_model::viewer::Pseudonymizer::new(b"test-key").pseudonym("alice@example.com");
    assert_eq!(viewers(&keyed), vec![Some(expected.clone()), Some(expected), None]);
    let unkeyed = AppState { viewers: None, ..gateway(&SaltingConfig::default()) };
    assert_eq!(viewers(&unkeyed), vec![None, None, None], "without a key viewer ids are dropped");
}
