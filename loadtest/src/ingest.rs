//! The ingest workload's parts: batches of events, posting one batch under
//! the retry policy, and the tally of what the gateway answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::deliver::{deliver, Answer, Delivery, Outcome, Request};
use crate::exactness::{Expected, View, Views};
use crate::retry::{RetryAfter, RetryPolicy};
use crate::{Rng, Zipf};

/// Makes batches of events: zipf videos, fresh ids and resends.
#[derive(Debug, Clone)]
pub struct Generator {
    /// The run's tag in video names and event ids.
    pub run: u128,
    rng: Rng,
    zipf: Zipf,
    next_id: u64,
    duplicates: f64,
}

impl Generator {
    /// Videos `0..videos` with zipf `exponent`; a share `duplicates` of the
    /// events resend an earlier id.
    pub fn new(run: u128, videos: u64, exponent: f64, duplicates: f64) -> Self {
        Self {
            run,
            rng: Rng(0x5eed_1234_abcd_0001 ^ run as u64),
            zipf: Zipf::new(videos, exponent),
            next_id: 0,
            duplicates,
        }
    }

    /// The next `n` events.
    pub fn batch(&mut self, n: usize) -> Vec<View> {
        (0..n)
            .map(|_| {
                let resend = self.next_id > 0 && self.rng.uniform() < self.duplicates;
                let id = if resend { self.rng.next_u64() % self.next_id } else { self.next_id };
                if !resend {
                    self.next_id += 1;
                }
                // The video is a function of the id, so a resend is the same view.
                let video = self.zipf.sample(Rng(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).uniform());
                (format!("r{}-video-{video}", self.run), id)
            })
            .collect()
    }
}

/// What the gateway answered over a run, and which views it acknowledged.
#[derive(Debug, Default)]
pub struct IngestTally {
    acknowledged: Views,
    unacknowledged: Views,
    /// Events in accepted requests, resends included.
    pub events_acknowledged: u64,
    /// Answers by HTTP status, every attempt.
    pub statuses: BTreeMap<u16, u64>,
    /// Attempts without an HTTP answer.
    pub transport_errors: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Temporary refusals (408, 429, 5xx) with a valid `Retry-After`.
    pub refusals_with_retry_after: u64,
    /// Temporary refusals without `Retry-After`, or with one that does not parse.
    pub refusals_without_retry_after: u64,
    /// Requests the retry policy gave up on.
    pub gave_up: u64,
    /// Requests refused for good (4xx other than 408 and 429).
    pub refused: u64,
    /// Requests cut short by the request budget.
    pub budget_spent: u64,
}

impl IngestTally {
    /// A tally with room for `events` acknowledged views. Growing a set of
    /// millions of views rehashes all of them at once, under the lock every
    /// delivery takes: the generator's own pause, which it would then record
    /// as the gateway's latency (stalls of hundreds of milliseconds at each
    /// doubling, in runs of 2-4 million events).
    pub fn with_capacity(events: usize) -> Self {
        Self { acknowledged: Views::with_capacity_and_hasher(events, Default::default()), ..Self::default() }
    }

    /// Adds one batch's delivery.
    pub fn add(&mut self, events: &[View], delivery: &Delivery) {
        for attempt in &delivery.attempts {
            match attempt.answer {
                Answer::Status { status, retry_after } => {
                    *self.statuses.entry(status).or_default() += 1;
                    if attempt.answer.is_refusal() {
                        match retry_after {
                            RetryAfter::Wait(_) => self.refusals_with_retry_after += 1,
                            RetryAfter::Absent | RetryAfter::Unparsable => self.refusals_without_retry_after += 1,
                        }
                    }
                }
                Answer::Transport => self.transport_errors += 1,
            }
        }
        self.retries += delivery.attempts.len().saturating_sub(1) as u64;
        match delivery.outcome {
            Outcome::Accepted => {
                self.events_acknowledged += events.len() as u64;
                self.acknowledged.extend(events.iter().cloned());
                return;
            }
            Outcome::GaveUp => self.gave_up += 1,
            Outcome::Refused { .. } => self.refused += 1,
            Outcome::BudgetSpent => self.budget_spent += 1,
        }
        if !delivery.attempts.is_empty() {
            self.unacknowledged.extend(events.iter().cloned());
        }
    }

    /// What a correct pipeline counts per video.
    pub fn expected(&self) -> Expected {
        Expected::new(&self.acknowledged, &self.unacknowledged)
    }

    /// The summary as JSON.
    pub fn summary(&self) -> Value {
        json!({
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "transport_errors": self.transport_errors,
            "retries": self.retries,
            "refusals_with_retry_after": self.refusals_with_retry_after,
            "refusals_without_retry_after": self.refusals_without_retry_after,
            "requests_given_up": self.gave_up,
            "requests_refused": self.refused,
            "requests_cut_by_budget": self.budget_spent,
        })
    }
}

/// What the events of a run look like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyShape {
    /// The run's tag in event ids.
    pub run: u128,
    /// Distinct viewers the events' `viewer_id`s are drawn from; 0: no viewer ids.
    pub viewers: u64,
}

impl BodyShape {
    /// The viewer of event `id` (a function of the id: a resend is the same
    /// viewer), as a 32-character id like a client's opaque user id.
    fn viewer(&self, id: u64) -> Option<String> {
        (self.viewers > 0).then(|| {
            let viewer = Rng(id.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1).next_u64() % self.viewers;
            format!("user-{viewer:027}")
        })
    }
}

/// The JSON body of `events`, with event ids tagged by the run and, when
/// the shape has viewers, a viewer id on every event.
pub fn body(shape: BodyShape, events: &[View]) -> Bytes {
    let run = shape.run;
    let body: Vec<Value> = events
        .iter()
        .map(|(v, id)| match shape.viewer(*id) {
            Some(viewer) => json!({"video_id": v, "event_id": format!("r{run}-{id}"), "viewer_id": viewer}),
            None => json!({"video_id": v, "event_id": format!("r{run}-{id}")}),
        })
        .collect();
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Posts `events` to `url` under `policy` (the same ids every attempt),
/// counting every send against `sent` up to `max`, and tallies the outcome
/// in `tally`; says whether they were acknowledged.
pub async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    shape: BodyShape,
    events: &[View],
    policy: &RetryPolicy,
    (sent, max): (&AtomicU64, u64),
    tally: &Mutex<IngestTally>,
) -> bool {
    let request = Request { url: url.to_owned(), content_type: "application/json", body: body(shape, events) };
    // Jitter seeded per batch: clients refused together draw different waits.
    let seed = events.first().map_or(0, |(_, id)| *id) ^ (shape.run as u64).rotate_left(17);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let delivery = deliver(http, &request, policy, &mut rng, || sent.fetch_add(1, Ordering::Relaxed) < max).await;
    tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(events, &delivery);
    delivery.accepted()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::deliver::Attempt;

    fn attempt(answer: Answer) -> Attempt {
        Attempt { sent: Instant::now(), answer }
    }

    fn refused(retry_after: RetryAfter) -> Answer {
        Answer::Status { status: 503, retry_after }
    }

    #[test]
    fn the_tally_counts_every_attempt_and_keeps_unacknowledged_views_apart() {
        let mut tally = IngestTally::default();
        let a: Vec<View> = vec![("v".into(), 1), ("v".into(), 2)];
        let b: Vec<View> = vec![("v".into(), 3)];
        let accepted = Answer::Status { status: 202, retry_after: RetryAfter::Absent };
        let wait = RetryAfter::Wait(Duration::from_secs(1));
        tally.add(
            &a,
            &Delivery {
                outcome: Outcome::Accepted,
                attempts: vec![attempt(refused(wait)), attempt(Answer::Transport), attempt(accepted)],
            },
        );
        tally.add(&b, &Delivery { outcome: Outcome::GaveUp, attempts: vec![attempt(refused(RetryAfter::Absent)); 2] });
        assert_eq!(tally.statuses, BTreeMap::from([(202, 1), (503, 3)]));
        assert_eq!((tally.transport_errors, tally.retries), (1, 3));
        assert_eq!((tally.refusals_with_retry_after, tally.refusals_without_retry_after), (1, 2));
        assert_eq!((tally.gave_up, tally.events_acknowledged), (1, 2));
        let expected = tally.expected();
        assert_eq!(expected.at_least, BTreeMap::from([("v".to_owned(), 2)]));
        assert_eq!(expected.at_most, BTreeMap::from([("v".to_owned(), 3)]), "id 3 may have been counted");
    }

    #[test]
    fn a_resent_id_is_the_same_view_of_the_same_video() {
        let mut generator = Generator::new(7, 100, 1.2, 0.5);
        let events: Vec<View> = (0..20).flat_map(|_| generator.batch(50)).collect();
        let mut video_of = BTreeMap::new();
        for (video, id) in &events {
            assert_eq!(video_of.entry(*id).or_insert(video), &video, "id {id}");
        }
        assert!(video_of.len() < events.len(), "some ids were resent");
    }

    #[test]
    fn viewer_ids_are_a_function_of_the_event_and_absent_without_viewers() {
        let events: Vec<View> = (0..2_000).map(|id| ("v".to_owned(), id)).collect();
        let parsed = |shape| -> Vec<Value> { serde_json::from_slice(&body(shape, &events)).unwrap() };
        let with = parsed(BodyShape { run: 3, viewers: 100 });
        let again = parsed(BodyShape { run: 3, viewers: 100 });
        assert_eq!(with, again, "a resend carries the same viewer");
        let viewers: std::collections::HashSet<&str> = with.iter().map(|e| e["viewer_id"].as_str().unwrap()).collect();
        assert_eq!(viewers.len(), 100, "drawn from 100 viewers");
        assert!(viewers.iter().all(|v| v.len() == 32));
        assert!(parsed(BodyShape { run: 3, viewers: 0 }).iter().all(|e| e.get("viewer_id").is_none()));
    }
}
