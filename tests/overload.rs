//! Overload, as a user meets it: gateway, counter, writer and query as
//! separate processes on the real broker are offered a burst far above what
//! the machine sustains, by open-loop clients that retry refusals the way
//! `tally-loadgen` does (same event ids, never before `Retry-After`, capped
//! exponential backoff with full jitter, bounded). The gateway must shed with
//! 503/429 + `Retry-After` during the burst, accept again within seconds
//! after it, and every acknowledged view must be counted exactly once, also
//! once the pipeline has gone quiet.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{process_sections, write_config, TallyProcess};
use serde_json::{json, Value};
use tally_loadgen::deliver::{deliver, Answer, Delivery, Request};
use tally_loadgen::ingest::{body, BodyShape, Generator, IngestTally};
use tally_loadgen::retry::{RetryAfter, RetryPolicy};
use tally_loadgen::Rng;
use tally_testkit::{bounded, Broker, RedisServer};

/// Events per request.
const BATCH: usize = 100;
/// Requests per second offered during the burst (open loop).
const RATE: u32 = 400;
/// Requests offered in the burst: 3 s at `RATE`, 120,000 events.
const REQUESTS: u32 = 1_200;
/// The gateway's admission bound: two requests' worth of events.
const MAX_IN_FLIGHT: usize = 2 * BATCH;
/// How soon after the burst a single event must be accepted again.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
        max_attempts: 40,
        give_up_after: Duration::from_secs(90),
    }
}

/// Posts one event, again every 50 ms while refused, and says how long it
/// took to be accepted. The probe measures; it is not a client to imitate.
async fn accepted_after(http: &reqwest::Client, url: &str, event: &Value, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let response = http.post(url).json(event).send().await;
        if response.is_ok_and(|r| r.status() == 202) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The value of the series `name{labels}` in a Prometheus exposition.
fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_retrying_clients_is_shed_then_served_and_counted_exactly_once() {
    bounded(Duration::from_secs(360), async {
        let broker = Broker::shared();
        let redis = RedisServer::start();
        let kafka = tally_testkit::kafka_config(&broker);
        let dir = tempfile::tempdir().unwrap();
        // Run-time hot-key detection stays on (the default): it only suggests,
        // it never changes a partition key, so resends keep their partitions.
        let ingest_extra = format!("max-in-flight-events = {MAX_IN_FLIGHT}");
        let sections = process_sections(dir.path(), &redis.url(), 0, 0, &ingest_extra);
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let query = TallyProcess::spawn(&config, "query");
        let (gateway, api) = (ingest.address_of("public API"), query.address_of("public API"));
        let url = format!("http://{gateway}/v1/events");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        // The first produce waits for the producer id and topic metadata.
        let warm_up = json!({"video_id": "warm-up", "event_id": "warm-up-1"});
        accepted_after(&http, &url, &warm_up, Duration::from_secs(60))
            .await
            .expect("the gateway accepts before the burst");

        // The burst: REQUESTS requests at RATE per second, each sent on
        // schedule whatever became of the earlier ones, each retried by
        // its own client.
        let run = 1;
        let mut generator = Generator::new(run, 200, 1.2, 0.05);
        let tally = Arc::new(Mutex::new(IngestTally::default()));
        let deliveries = Arc::new(Mutex::new(Vec::<Delivery>::new()));
        let mut clients = tokio::task::JoinSet::new();
        let interval = Duration::from_secs(1) / RATE;
        let started = Instant::now();
        for n in 0..REQUESTS {
            tokio::time::sleep_until((started + interval * n).into()).await;
            let events = generator.batch(BATCH);
            let request = Request {
                url: url.clone(),
                content_type: "application/json",
                body: body(BodyShape { run, viewers: 0 }, &events),
            };
            let (http, tally, deliveries) = (http.clone(), tally.clone(), deliveries.clone());
            clients.spawn(async move {
                let mut rng = Rng(u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let delivery = deliver(&http, &request, &policy(), &mut rng, || true).await;
                tally.lock().unwrap().add(&events, &delivery);
                deliveries.lock().unwrap().push(delivery);
            });
        }
        let burst_ended = Instant::now();

        // (b) Accepting again: one new event, while the burst's clients still retry.
        let probe = json!({"video_id": "probe", "event_id": "probe-1"});
        let recovery = accepted_after(&http, &url, &probe, Duration::from_secs(60)).await;
        let recovery = recovery.expect("a single event was accepted within 60 s of the burst's end");
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
        let all_served = burst_ended.elapsed();

        let tally = std::mem::take(&mut *tally.lock().unwrap());
        let deliveries = std::mem::take(&mut *deliveries.lock().unwrap());
        let first_sends_accepted = deliveries.iter().filter(|d| d.accepted() && d.attempts.len() == 1).count();
        let accepted_during_burst = deliveries
            .iter()
            .filter(|d| d.accepted() && d.attempts.last().is_some_and(|a| a.sent < burst_ended))
            .count();
        let refusals_during_burst: Vec<Answer> = deliveries
            .iter()
            .flat_map(|d| &d.attempts)
            .filter(|a| a.sent < burst_ended && a.answer.is_refusal())
            .map(|a| a.answer)
            .collect();
        let metrics = ingest.metrics();
        let shed = series(&metrics, "tally_ingest_events_rejected_total{reason=\"shed\"}").unwrap_or(0.0);
        println!(
            "overload: {REQUESTS} requests of {BATCH} events offered at {RATE}/s ({} events/s) in {:.2} s; \
             accepted during the burst: {accepted_during_burst} requests ({:.0} events/s), \
             {first_sends_accepted} on their first send; {} refusals during the burst; answers {:?}; \
             {} retries, {} transport errors; {shed} requests shed before their body was read; \
             a single event accepted {} ms after the burst; every request accepted {:.1} s after it",
            RATE as usize * BATCH,
            (burst_ended - started).as_secs_f64(),
            (accepted_during_burst * BATCH) as f64 / (burst_ended - started).as_secs_f64(),
            refusals_during_burst.len(),
            tally.statuses,
            tally.retries,
            tally.transport_errors,
            recovery.as_millis(),
            all_served.as_secs_f64(),
        );

        // (a) Shed during the burst, and every refusal says when to come back.
        assert!(
            refusals_during_burst.len() >= REQUESTS as usize / 10,
            "the burst was not over capacity: {} refusals during it",
            refusals_during_burst.len()
        );
        for answer in &refusals_during_burst {
            let Answer::Status { status, retry_after } = answer else { unreachable!("refusals are HTTP answers") };
            assert!(matches!(status, 503 | 429), "refused with {status}, not 503/429");
            assert!(
                matches!(retry_after, RetryAfter::Wait(_)),
                "a {status} without a valid Retry-After: {retry_after:?}"
            );
        }
        assert_eq!(tally.refusals_without_retry_after, 0);
        assert!(
            tally.statuses.keys().all(|s| matches!(s, 202 | 503 | 429)),
            "only 202, 503 and 429: {:?}",
            tally.statuses
        );
        assert!(shed >= 1.0, "refusals cost a body read and parse: no request was shed from its head");
        assert!(recovery <= RECOVERY_BOUND, "accepted again only {recovery:?} after the burst");
        assert_eq!(
            (tally.gave_up, tally.refused, tally.budget_spent),
            (0, 0, 0),
            "every request of the burst is eventually accepted"
        );

        // (c) Exactly once: the oracle is what the clients were acknowledged.
        let mut expected = tally.expected().at_least;
        assert_eq!(tally.expected().at_most, expected, "no view outside the acknowledged ones");
        expected.insert("warm-up".into(), 1);
        expected.insert("probe".into(), 1);
        let ids: Vec<&String> = expected.keys().collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = common::query::views(&http, &api, &ids).await.unwrap_or_default();
            if got == expected {
                break;
            }
            let off: Vec<_> = expected
                .iter()
                .filter(|(v, n)| got.get(*v) != Some(n))
                .map(|(v, n)| format!("{v}: want {n}, got {:?}", got.get(v)))
                .take(5)
                .collect();
            assert!(Instant::now() < deadline, "not converged; first differences: {off:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let quiet = common::pipeline_quiet(&kafka, Duration::from_secs(60)).await;
        assert!(quiet, "the pipeline did not go quiet");
        assert_eq!(
            common::query::views(&http, &api, &ids).await.as_ref(),
            Ok(&expected),
            "totals changed after the pipeline went quiet"
        );
        println!(
            "overload: {} distinct views acknowledged over {} videos, all counted once",
            expected.values().sum::<i64>(),
            expected.len()
        );
        for process in [query, writer, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
