//! A well-behaved client under faults: it posts batches of new events and
//! resends each batch with the same event ids until the gateway answers 202.
//! What it was acknowledged is the exactness oracle: it shares no code with
//! the pipeline it checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tally_testkit::views::Load;

/// What the client was acknowledged.
#[derive(Default, Debug, Clone)]
pub struct Acknowledged {
    /// Acknowledged views per video (every event id is new, so they add up).
    pub views: BTreeMap<String, i64>,
    /// Batches acknowledged.
    pub batches: u64,
    /// Sends that got no 202 (refused, reset, gateway down) and were repeated.
    pub retries: u64,
}

/// Posts batches of `batch_size` new events to `gateway` (`host:port`)
/// until `stop`, each resent every 200 ms until acknowledged, then pauses
/// 50 ms; records what was acknowledged in `acknowledged`.
pub async fn post_until_stopped(
    gateway: String,
    batch_size: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let mut load = Load::new(seed);
    while !stop.load(Ordering::SeqCst) {
        let batch = load.batch(batch_size, tally_model::timestamp::now_ms(), 0);
        let body: Vec<Value> = batch.iter().map(|(v, id, ..)| json!({"video_id": v, "event_id": id})).collect();
        loop {
            let outcome = http.post(format!("http://{gateway}/v1/events")).json(&body).send().await;
            if matches!(&outcome, Ok(r) if r.status() == 202) {
                break;
            }
            acknowledged.lock().expect("oracle lock").retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        {
            let mut oracle = acknowledged.lock().expect("oracle lock");
            oracle.batches += 1;
            for (video, ..) in &batch {
                *oracle.views.entry(video.clone()).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Views counted beyond the acknowledged (`duplicated`) and short of them
/// (`lost`), summed over videos.
pub fn lost_and_duplicated(expected: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>) -> (i64, i64) {
    let lost = expected.iter().map(|(v, n)| (n - got.get(v).copied().unwrap_or(0)).max(0)).sum();
    let duplicated = expected.iter().map(|(v, n)| (got.get(v).copied().unwrap_or(0) - n).max(0)).sum();
    (lost, duplicated)
}
