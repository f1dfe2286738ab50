//! Taking over a partition: learn from the counts topic how far earlier
//! owners emitted, and rebuild the dedup window from the views topic.
//!
//! 1. The committed offset `C` of the group is where counting resumes. The
//!    partition was claimed just before ([`crate::claim`]).
//! 2. The counts partition holding this source partition is read backwards
//!    from the claim until the newest flush ending at or before `C` (the anchor).
//!    Flushes ending after `C` were emitted but not committed: their ends
//!    become forced boundaries, so the same ranges are re-emitted with the
//!    same versions.
//!    Only flushes of the current views epoch count: the epoch of the
//!    recorded topology (`tally_kafka::topology`), which `tally topology
//!    reset` raises when the views topic is a new one, or a newer epoch
//!    found in the log.
//! 3. A views partition whose log ends before `C` or before a flush of the
//!    current epoch lost records (an unclean leader election, or a topic
//!    recreated without a reset): counting on would give new records the
//!    versions of counted ones, so the take-over fails with
//!    [`RecoveryError::ViewsLogBehind`]. (Recreation is no longer inferred
//!    from offsets: that missed a new topic already past the old end and
//!    took a truncated log for a new topic, recounting it whole.)
//! 4. The dedup window is rebuilt by replaying `[anchor.dedup_horizon, C)`
//!    through the same classification as live processing.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;
use tally_model::counting::dedup_key;
use tally_model::counts::{self, FlushHeader, RecordHead};
use tokio_util::sync::CancellationToken;

use crate::claim::Claimed;
use crate::partition::{classify, PartitionState, Rules, Verdict};

/// The longest a blocking broker request of recovery waits before looking
/// at the stop token again.
pub const STOP_CHECK: Duration = Duration::from_secs(1);

/// Records read per step when scanning a counts partition backwards.
const SCAN_STEP: i64 = 2_000;

/// Why a partition could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A broker request failed.
    #[error("recovering partition {partition}: {source}")]
    Kafka {
        /// The source partition.
        partition: i32,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
    /// The counter is shutting down: the partition is left to its next owner.
    #[error("recovering partition {partition}: stopped by shutdown")]
    Stopped {
        /// The source partition.
        partition: i32,
    },
    /// The views partition's log ends before what was already counted of it.
    #[error(
        "views partition {partition} of {topic} ends at offset {high}, but its counts reach offset {reached} in views epoch {epoch}: the log lost records (an unclean leader election?) or the topic was recreated without `tally topology reset`. Counting on would give new records the versions of counted ones. Stop every counter, reset the counter group's offsets of {topic} to the end and run `tally topology reset --new-views-epoch` (README, \"Operating rules\")"
    )]
    ViewsLogBehind {
        /// The source partition.
        partition: i32,
        /// The views topic.
        topic: String,
        /// Its high watermark.
        high: i64,
        /// The committed offset or the end of the newest flush, whichever is later.
        reached: i64,
        /// The current views epoch.
        epoch: u32,
    },
    /// Reading a range did not finish in time.
    #[error("recovering partition {partition}: reading {topic}[{from}..{to}) timed out")]
    ReadTimeout {
        /// The source partition.
        partition: i32,
        /// Topic read.
        topic: String,
        /// Start offset.
        from: i64,
        /// End offset.
        to: i64,
    },
}

/// What recovery needs to know.
#[derive(Debug, Clone)]
pub struct RecoveryContext {
    /// Broker settings.
    pub kafka: KafkaConfig,
    /// Source topic.
    pub views_topic: String,
    /// Output topic.
    pub counts_topic: String,
    /// Output partitions.
    pub counts_partitions: i32,
    /// Incarnation of the views topic, from the recorded topology.
    pub views_epoch: u32,
    /// Classification rules (the counting rule among them).
    pub rules: Rules,
    /// Longest time one read may take.
    pub read_timeout: Duration,
    /// Cancelled at shutdown: a take-over in progress gives up at once
    /// (it runs inside a rebalance callback, out of the drain's reach).
    pub stop: CancellationToken,
}

/// The outcome of recovering one partition.
#[derive(Debug)]
pub struct Recovered {
    /// Ready-to-run state.
    pub state: PartitionState,
    /// Ranges that will be re-emitted.
    pub forced: usize,
    /// Records replayed into the dedup window.
    pub replayed: i64,
}

/// Recovers source `partition` whose committed offset is `committed`
/// (`None` when the group never committed it) and which this counter
/// `claimed`: everything before the claim in the counts partition is read.
pub fn recover(
    ctx: &RecoveryContext,
    partition: i32,
    committed: Option<i64>,
    claimed: Claimed,
) -> Result<Recovered, RecoveryError> {
    let reader = reader(&ctx.kafka, partition)?;
    let (low, high) = watermarks(&reader, &ctx.views_topic, partition, ctx.read_timeout, &ctx.stop)?;
    let start = committed.unwrap_or(low).max(low);
    let counts_partition = partition % ctx.counts_partitions.max(1);
    let headers = scan_tail(&reader, ctx, partition, counts_partition, start, claimed.offset)?;
    let epoch = headers.iter().map(|h| h.epoch).fold(ctx.views_epoch, u32::max);
    let current = || headers.iter().filter(|h| h.epoch == epoch);
    let reached = current().map(|h| h.end).chain(committed).max();
    if let Some(reached) = reached.filter(|reached| *reached > high) {
        return Err(RecoveryError::ViewsLogBehind { partition, topic: ctx.views_topic.clone(), high, reached, epoch });
    }
    let anchor = current().filter(|h| h.end <= start).max_by_key(|h| h.end).copied();
    let mut forced: Vec<i64> = current().filter(|h| h.end > start).map(|h| h.end).collect();
    forced.sort_unstable();
    forced.dedup();
    let mut dedup = ctx.rules.counting.window();
    let mut replayed = 0;
    if let Some(anchor) = anchor {
        let from = anchor.dedup_horizon.max(low);
        read_range(&reader, &ctx.views_topic, partition, (from, start), ctx, |offset, log_ms, payload| {
            if let Verdict::Count(view) = classify(payload, &ctx.rules.counting) {
                let received = ctx.rules.counting.trusted_received(view.received_ms, log_ms);
                dedup.check(offset, dedup_key(view.video_id, view.event_id), received.received_ms);
            }
            replayed += 1;
        })?;
        dedup.restore_max_received(anchor.max_received_ms);
    }
    let count = forced.len();
    let state = PartitionState::new(partition, epoch, claimed.owner, start, dedup, forced);
    Ok(Recovered { state, forced: count, replayed })
}

fn reader(kafka: &KafkaConfig, partition: i32) -> Result<BaseConsumer, RecoveryError> {
    // A group id is required by librdkafka even for assign-only reading; nothing is committed.
    base_config(kafka, "tally-counter-recovery")
        .set("group.id", format!("tally-counter-recovery-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|source| RecoveryError::Kafka { partition, source })
}

/// Flush headers of source `partition` in its counts partition before
/// `claim_offset`: every one ending after `start`, plus at least one ending
/// at or before it when any exists. Headers of fenced owners are included:
/// re-emitting their boundaries is harmless, missing an admitted one is not.
fn scan_tail(
    reader: &BaseConsumer,
    ctx: &RecoveryContext,
    partition: i32,
    counts_partition: i32,
    start: i64,
    claim_offset: i64,
) -> Result<Vec<FlushHeader>, RecoveryError> {
    let (low, high) = watermarks(reader, &ctx.counts_topic, counts_partition, ctx.read_timeout, &ctx.stop)?;
    let source = u32::try_from(partition).unwrap_or(0);
    let mut found = Vec::new();
    let mut to = high.min(claim_offset);
    while to > low {
        let from = (to - SCAN_STEP).max(low);
        read_range(reader, &ctx.counts_topic, counts_partition, (from, to), ctx, |_, _, payload| {
            if let Ok(RecordHead::Chunk(header)) = counts::decode_head(payload.unwrap_or_default()) {
                if header.source_partition == source {
                    found.push(header);
                }
            }
        })?;
        if found.iter().any(|h| h.end <= start) {
            break;
        }
        to = from;
    }
    Ok(found)
}

/// The low and high watermarks of one partition. A partition whose leader
/// is moving (a broker died, `NotLeaderForPartition`, no leader yet) answers
/// with an error for a few seconds: asked again until `timeout` has passed,
/// in steps short enough to notice a shutdown.
fn watermarks(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<(i64, i64), RecoveryError> {
    let deadline = Instant::now() + timeout;
    loop {
        if stop.is_cancelled() {
            return Err(RecoveryError::Stopped { partition });
        }
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(500), STOP_CHECK);
        match reader.fetch_watermarks(topic, partition, wait) {
            Ok(marks) => return Ok(marks),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(topic, partition, error = %e, "watermarks unavailable (leader moving?); asking again");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(source) => return Err(RecoveryError::Kafka { partition, source }),
        }
    }
}

/// Reads `[from, to)` of one partition, calling `visit` with each record's
/// offset, broker timestamp (when it has one) and payload.
fn read_range(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    (from, to): (i64, i64),
    ctx: &RecoveryContext,
    mut visit: impl FnMut(i64, Option<i64>, Option<&[u8]>),
) -> Result<(), RecoveryError> {
    if from >= to {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|source| RecoveryError::Kafka { partition, source })?;
    reader.assign(&assignment).map_err(|source| RecoveryError::Kafka { partition, source })?;
    drop(assignment);
    // An idle bound, not a total one: long replays are fine while records flow.
    let mut deadline = Instant::now() + ctx.read_timeout;
    let mut next = from;
    while next < to {
        if ctx.stop.is_cancelled() {
            return Err(RecoveryError::Stopped { partition });
        }
        if Instant::now() > deadline {
            return Err(RecoveryError::ReadTimeout { partition, topic: topic.to_owned(), from, to });
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let offset = message.offset();
                deadline = Instant::now() + ctx.read_timeout;
                if offset >= next && offset < to {
                    visit(offset, message.timestamp().to_millis(), message.payload());
                }
                next = next.max(offset + 1);
            }
            Some(Err(e)) => tracing::warn!(partition, topic, error = %e, "recovery read error; retrying"),
            None => {}
        }
    }
    Ok(())
}
