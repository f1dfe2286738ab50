//! Producing views records the way the gateway does, and a deterministic
//! load generator that knows the exact counts a correct pipeline must reach.

use std::collections::BTreeMap;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_kafka::KafkaConfig;
use tally_model::{wire, EventId, PartitionKey, SaltPolicy, SaltingConfig, VideoId, ViewEvent};

/// Produces views records the way the gateway does, remembering what a
/// correct count must be.
pub struct ViewsProducer {
    producer: FutureProducer,
    topic: String,
    policy: SaltPolicy,
    /// Distinct `(video, event id)` per video: the exact expected totals.
    pub expected: BTreeMap<String, i64>,
    /// Records produced (duplicates included).
    pub produced: u64,
}

impl ViewsProducer {
    /// A producer for `kafka`'s views topic; `hot` videos are salted.
    pub fn new(kafka: &KafkaConfig, hot: &[&str]) -> Self {
        let producer = tally_kafka::clients::base_config(kafka, "test-views-producer")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        let salting =
            SaltingConfig { hot_videos: hot.iter().map(|v| (*v).to_owned()).collect(), ..SaltingConfig::default() };
        Self {
            producer,
            topic: kafka.topics.views.clone(),
            policy: SaltPolicy::new(&salting).expect("salting"),
            expected: BTreeMap::new(),
            produced: 0,
        }
    }

    /// Produces one batch of `(video, event id, ts, received)` and waits for
    /// every acknowledgement. `new_view` says which ones are new views (the
    /// others are resends within the dedup window).
    pub async fn send(&mut self, events: &[(String, String, i64, i64, bool)]) {
        self.send_with_viewers(events, |_| None).await;
    }

    /// As [`ViewsProducer::send`], the `i`-th event with the viewer
    /// (pseudonym, as the gateway writes it) `viewer(i)`.
    pub async fn send_with_viewers(
        &mut self,
        events: &[(String, String, i64, i64, bool)],
        viewer: impl Fn(usize) -> Option<String>,
    ) {
        let mut deliveries = Vec::with_capacity(events.len());
        for (i, (video, id, ts_ms, received_ms, new_view)) in events.iter().enumerate() {
            let event = ViewEvent {
                video_id: VideoId::parse(video).expect("video id"),
                ts_ms: *ts_ms,
                event_id: EventId::parse(id).expect("event id"),
                viewer_id: viewer(i).map(std::sync::Arc::from),
                attributes: None,
                received_ms: *received_ms,
            };
            let salt = self.policy.salt_for(&event, self.policy.is_configured_hot(video));
            let key = PartitionKey::new(video, salt);
            let mut payload = Vec::new();
            wire::encode(&event, salt, &mut payload);
            let record = FutureRecord::to(&self.topic).key(key.as_bytes()).payload(&payload);
            deliveries.push(self.producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
            if *new_view {
                *self.expected.entry(video.clone()).or_default() += 1;
            }
        }
        for delivery in deliveries {
            delivery.await.expect("delivery").map_err(|(e, _)| e).expect("acknowledged");
        }
        self.produced += events.len() as u64;
    }

    /// Produces raw bytes (poison) with `key`.
    pub async fn send_raw(&mut self, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue")
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("ack");
    }
}

/// A deterministic little generator: zipf-like videos, some resends.
pub struct Load {
    state: u64,
    next_id: u64,
    sent: Vec<(String, String, i64)>,
}

impl Load {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1, next_id: 0, sent: Vec::new() }
    }

    /// The next pseudo-random number.
    pub fn rand(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `n` events at `now_ms`; about `resend_percent` of them resend an earlier event.
    pub fn batch(&mut self, n: usize, now_ms: i64, resend_percent: u64) -> Vec<(String, String, i64, i64, bool)> {
        (0..n)
            .map(|_| {
                if !self.sent.is_empty() && self.rand() % 100 < resend_percent {
                    let index = (self.rand() as usize) % self.sent.len();
                    let (video, id, ts) = self.sent[index].clone();
                    (video, id, ts, now_ms, false)
                } else {
                    // Roughly zipf: video k with probability ~ 1/(k+1).
                    let r = self.rand() % 1000;
                    let video = format!("video-{}", (1000 / (r + 1)).min(40));
                    self.next_id += 1;
                    let id = format!("evt-{}", self.next_id);
                    let ts = now_ms - (self.rand() % 120_000) as i64;
                    self.sent.push((video.clone(), id.clone(), ts));
                    (video, id, ts, now_ms, true)
                }
            })
            .collect()
    }
}
