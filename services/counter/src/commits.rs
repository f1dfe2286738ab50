//! Offset commits off the processing thread.
//!
//! An acknowledged flush end is *stored* with librdkafka (a local call, no
//! broker round trip); librdkafka's background commit (`enable.auto.commit`
//! with `enable.auto.offset.store=false`, see [`crate::service`]) sends the
//! stored offsets to the group coordinator and reports each result to
//! [`crate::shared::CounterContext`]'s `commit_callback`, where
//! [`judge`] decides what a failure means. Only offsets the counter stored
//! are ever committed, so the committed offset is always the end of a flush
//! whose every record was acknowledged.
//!
//! Why not `commit(.., CommitMode::Async)`: rdkafka 0.39 submits manual
//! asynchronous commits without a reply queue, so their results never reach
//! `commit_callback` (fede1024/rust-rdkafka#856) and a failure would pass
//! unseen. librdkafka's own background commits do reach it.
//!
//! On revoke and at shutdown the acknowledged ends the background commit has
//! not confirmed yet are committed synchronously
//! ([`crate::shared::Shared::commit_acknowledged`]), so the next owner
//! re-emits no more than the flushes still unacknowledged.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

/// What a failed commit means for the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The offsets are committed.
    Committed,
    /// Not committed this time; librdkafka commits the stored offsets again
    /// on its next tick (or the revoke does), so counting goes on.
    Retried(RDKafkaErrorCode),
    /// The group moved on without this member: its session expired
    /// (`UNKNOWN_MEMBER_ID`, a coordinator away longer than the session, a
    /// long pause), or a partition of the commit already went to another
    /// member. librdkafka revokes this member's partitions as lost and
    /// rejoins; whoever owns a partition next (this member again, perhaps)
    /// claims it and re-emits after the last committed end, and the claim
    /// fences whatever this member still emits for it. Counting goes on.
    Expelled(RDKafkaErrorCode),
    /// Another member took this member's static identity
    /// (`FENCED_INSTANCE_ID`): it can never rejoin as itself. The counter
    /// must stop, so its supervisor or operator sees the duplicate.
    Fenced(RDKafkaErrorCode),
}

/// Judges the result of a commit of `offsets` on `topic`; `owned` says
/// whether this counter still owns a partition.
///
/// Fenced: another member has this member's static identity. Expelled: the
/// coordinator no longer knows this member (`UNKNOWN_MEMBER_ID`), or the
/// group moved on (`REBALANCE_IN_PROGRESS`, a newer generation,
/// `ILLEGAL_GENERATION`, or member epoch, `STALE_MEMBER_EPOCH`) and a
/// partition of the commit is already gone. While this counter still owns
/// every partition of the commit, the group moving on is no expulsion:
/// members of incremental groups (cooperative-sticky, the consumer protocol)
/// keep their partitions through a rebalance, a commit racing the new
/// generation is refused, and librdkafka commits the stored offsets again
/// under the new one. Anything else is retried.
pub fn judge(
    result: &KafkaResult<()>,
    offsets: &TopicPartitionList,
    topic: &str,
    owned: impl Fn(i32) -> bool,
) -> Verdict {
    let mut codes: Vec<RDKafkaErrorCode> = Vec::new();
    if let Err(e) = result {
        codes.push(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
    }
    let mut gone = false;
    for element in offsets.elements() {
        if element.topic() != topic {
            continue;
        }
        if let Err(e) = element.error() {
            codes.push(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
        }
        gone |= !owned(element.partition());
    }
    // Nothing to commit is not a failure (librdkafka reports it for empty commits).
    codes.retain(|code| *code != RDKafkaErrorCode::NoOffset);
    if let Some(code) = codes.iter().copied().find(|code| *code == RDKafkaErrorCode::FencedInstanceId) {
        return Verdict::Fenced(code);
    }
    if let Some(code) = codes.iter().copied().find(|code| *code == RDKafkaErrorCode::UnknownMemberId) {
        return Verdict::Expelled(code);
    }
    if let Some(code) = codes.iter().copied().find(|code| gone && group_moved_on(*code)) {
        return Verdict::Expelled(code);
    }
    match codes.first() {
        Some(code) => Verdict::Retried(*code),
        None => Verdict::Committed,
    }
}

/// Whether `code` says the group rebalanced (or is rebalancing) since this
/// member's generation or epoch.
fn group_moved_on(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}

/// Stores `end` as the offset to commit for `partition`; librdkafka's
/// background commit sends it.
pub fn store<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32, end: i64) -> KafkaResult<()> {
    consumer.store_offsets(&offsets(topic, &[(partition, end)])?)
}

/// Clears the offsets stored for `partitions`, so librdkafka commits
/// nothing more for them, not even while the consumer closes: after the
/// final commit at shutdown, a close that tried again against an
/// unreachable coordinator would wait out the group session timeout.
pub fn forget_stored<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
) -> KafkaResult<()> {
    if partitions.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition_offset(topic, partition, Offset::Invalid)?;
    }
    consumer.store_offsets(&list)
}

/// The offsets `ends` (partition, flush end) of `topic`, to commit.
pub fn offsets(topic: &str, ends: &[(i32, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for &(partition, end) in ends {
        list.add_partition_offset(topic, partition, Offset::Offset(end))?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;

    use super::*;

    fn list(partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition_offset("views", partition, Offset::Offset(10)).unwrap();
        }
        list
    }

    fn failed(code: RDKafkaErrorCode) -> KafkaResult<()> {
        Err(KafkaError::ConsumerCommit(code))
    }

    #[test]
    fn a_successful_or_empty_commit_is_committed() {
        let offsets = list(&[0, 1]);
        assert_eq!(judge(&Ok(()), &offsets, "views", |_| true), Verdict::Committed);
        let nothing = failed(RDKafkaErrorCode::NoOffset);
        assert_eq!(judge(&nothing, &TopicPartitionList::new(), "views", |_| true), Verdict::Committed);
    }

    #[test]
    fn a_member_the_coordinator_forgot_is_expelled_and_a_stolen_static_identity_is_fatal() {
        let offsets = list(&[0]);
        let unknown = RDKafkaErrorCode::UnknownMemberId;
        assert_eq!(judge(&failed(unknown), &offsets, "views", |_| true), Verdict::Expelled(unknown));
        let stolen = RDKafkaErrorCode::FencedInstanceId;
        assert_eq!(judge(&failed(stolen), &offsets, "views", |_| true), Verdict::Fenced(stolen));
    }

    #[test]
    fn a_generation_moved_on_by_an_incremental_rebalance_is_retried_while_the_partitions_are_owned() {
        // Cooperative and consumer-protocol members keep their partitions
        // while the group rebalances; a commit racing the new generation
        // (classic) or member epoch (KIP-848) is refused, and librdkafka
        // commits the stored offsets again under the new one.
        for code in [RDKafkaErrorCode::IllegalGeneration, RDKafkaErrorCode::StaleMemberEpoch] {
            let offsets = list(&[0, 3]);
            assert_eq!(judge(&failed(code), &offsets, "views", |_| true), Verdict::Retried(code), "{code:?}");
            assert_eq!(judge(&failed(code), &offsets, "views", |p| p != 3), Verdict::Expelled(code), "{code:?}");
        }
    }

    #[test]
    fn a_rebalance_in_progress_expels_only_once_a_partition_is_gone() {
        let offsets = list(&[0, 3]);
        let rebalancing = failed(RDKafkaErrorCode::RebalanceInProgress);
        assert_eq!(
            judge(&rebalancing, &offsets, "views", |_| true),
            Verdict::Retried(RDKafkaErrorCode::RebalanceInProgress)
        );
        assert_eq!(
            judge(&rebalancing, &offsets, "views", |p| p != 3),
            Verdict::Expelled(RDKafkaErrorCode::RebalanceInProgress)
        );
    }

    #[test]
    fn transient_errors_are_retried_and_other_topics_are_not_ours_to_judge() {
        let offsets = list(&[0]);
        let timeout = failed(RDKafkaErrorCode::CoordinatorNotAvailable);
        assert_eq!(
            judge(&timeout, &offsets, "views", |_| true),
            Verdict::Retried(RDKafkaErrorCode::CoordinatorNotAvailable)
        );
        let mut other = list(&[0]);
        other.add_partition_offset("elsewhere", 7, Offset::Offset(1)).unwrap();
        let rebalancing = failed(RDKafkaErrorCode::RebalanceInProgress);
        assert_eq!(
            judge(&rebalancing, &other, "views", |p| p == 0),
            Verdict::Retried(RDKafkaErrorCode::RebalanceInProgress),
            "partition 7 of another topic is not one of ours"
        );
    }
}
