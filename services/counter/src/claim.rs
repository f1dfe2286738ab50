//! Claiming a source partition before taking it over: the fence against
//! zombies (see [`tally_model::counts::fence`]).
//!
//! The claim is written to the counts partition the source partition's
//! flushes go to, and acknowledged, before recovery reads that partition's
//! tail; recovery then reads up to the claim. Every chunk of an earlier owner
//! is either before the claim (seen by recovery and re-emitted exactly) or
//! after it (fenced by the writer).

use std::time::{Duration, Instant};

use futures::future::{self, Either};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_model::counts::{self, Claim};
use tokio_util::sync::CancellationToken;

/// Why a claim was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Retried for the claimer's whole timeout.
    #[error("claiming partition {partition} in {topic}: {source}")]
    Unacknowledged {
        /// The source partition.
        partition: i32,
        /// The counts topic.
        topic: String,
        /// The last error.
        source: KafkaError,
    },
    /// The counter is shutting down: the partition is left to its next owner.
    #[error("claiming partition {partition}: stopped by shutdown")]
    Stopped {
        /// The source partition.
        partition: i32,
    },
}

/// An acknowledged claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The token every chunk of this ownership carries.
    pub owner: u64,
    /// Where the claim landed in the counts partition: recovery reads up to here.
    pub offset: i64,
}

/// Writes claims with the counter's producer.
#[derive(Clone)]
pub struct Claimer {
    producer: FutureProducer,
    counts_topic: String,
    counts_partitions: i32,
    claimant: String,
    timeout: Duration,
    stop: CancellationToken,
}

impl Claimer {
    /// A claimer that names itself `claimant` (host and process) in its claims
    /// and retries for up to `timeout`, or until `stop` is cancelled (a claim
    /// runs inside a rebalance callback, where the drain cannot reach it).
    pub fn new(
        producer: FutureProducer,
        counts_topic: String,
        counts_partitions: i32,
        claimant: String,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self { producer, counts_topic, counts_partitions, claimant, timeout, stop }
    }

    /// Claims source `partition`, resuming from `resume_from`, with a fresh
    /// owner token; blocks until the claim is acknowledged. Retried: a claim
    /// written twice by a retry is harmless (same owner).
    pub fn claim(&self, partition: i32, resume_from: i64) -> Result<Claimed, ClaimError> {
        let claim = Claim {
            source_partition: u32::try_from(partition).unwrap_or(0),
            owner: rand::random(),
            resume_from,
            claimed_at_ms: tally_model::timestamp::now_ms(),
            claimant: self.claimant.clone(),
        };
        let payload = counts::encode_claim(&claim);
        let key = partition.to_string();
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.counts_topic)
                .partition(partition % self.counts_partitions.max(1))
                .key(&key)
                .payload(&payload);
            let stopped = ClaimError::Stopped { partition };
            let outcome = match self.producer.send_result(record) {
                Ok(delivery) => {
                    let stopping = std::pin::pin!(self.stop.cancelled());
                    let acknowledged = match futures::executor::block_on(future::select(delivery, stopping)) {
                        Either::Left((acknowledged, _)) => Some(acknowledged),
                        Either::Right(((), _)) => None,
                    };
                    match acknowledged.ok_or(stopped)? {
                        Ok(Ok(delivered)) => return Ok(Claimed { owner: claim.owner, offset: delivered.offset }),
                        Ok(Err((e, _))) => e,
                        Err(_canceled) => KafkaError::Canceled,
                    }
                }
                Err((e, _)) => e,
            };
            if Instant::now() + backoff > deadline {
                return Err(ClaimError::Unacknowledged {
                    partition,
                    topic: self.counts_topic.clone(),
                    source: outcome,
                });
            }
            tracing::warn!(partition, error = %outcome, "claim not acknowledged; retrying");
            if self.stop_within(backoff) {
                return Err(ClaimError::Stopped { partition });
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Sleeps `pause`, or less when the stop token is cancelled; says whether it was.
    fn stop_within(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while !self.stop.is_cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        true
    }
}

/// How a counter names itself in claims: host name and process id.
pub fn claimant_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}
