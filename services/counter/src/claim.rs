//! Claiming a source partition before taking it over: the fence against
//! zombies (see [`tally_model::counts::fence`]).
//!
//! The claim is written to the counts partition the source partition's
//! flushes go to, and acknowledged, before recovery reads that partition's
//! tail; recovery then reads up to the claim. Every chunk of an earlier owner
//! is either before the claim (seen by recovery and re-emitted exactly) or
//! after it (fenced by the writer).

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_model::counts::{self, Claim};

/// Why a claim was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("claiming partition {partition} in {topic}: {source}")]
pub struct ClaimError {
    /// The source partition.
    pub partition: i32,
    /// The counts topic.
    pub topic: String,
    /// The last error.
    pub source: KafkaError,
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
}

impl Claimer {
    /// A claimer that names itself `claimant` (host and process) in its claims
    /// and retries for up to `timeout`.
    pub fn new(
        producer: FutureProducer,
        counts_topic: String,
        counts_partitions: i32,
        claimant: String,
        timeout: Duration,
    ) -> Self {
        Self { producer, counts_topic, counts_partitions, claimant, timeout }
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
            let outcome = match self.producer.send_result(record) {
                Ok(delivery) => match futures::executor::block_on(delivery) {
                    Ok(Ok(delivered)) => return Ok(Claimed { owner: claim.owner, offset: delivered.offset }),
                    Ok(Err((e, _))) => e,
                    Err(_canceled) => KafkaError::Canceled,
                },
                Err((e, _)) => e,
            };
            if Instant::now() + backoff > deadline {
                return Err(ClaimError { partition, topic: self.counts_topic.clone(), source: outcome });
            }
            tracing::warn!(partition, error = %outcome, "claim not acknowledged; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
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
