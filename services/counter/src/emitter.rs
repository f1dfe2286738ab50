//! Emits sealed flushes: dead letters first, then the chunks of deltas to the
//! counts partition of the source partition, retried until every record is
//! acknowledged. Only then is the flush reported complete, and only then does
//! the worker commit its end offset.
//!
//! Retrying re-sends the same bytes with the same version, so a duplicate
//! chunk changes nothing downstream; dead letters are at least once and carry
//! their source offset for deduplication.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tally_kafka::fatal::{fatal_error, FatalError};
use tally_model::counts;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::partition::FlushJob;

/// A flush whose records are all acknowledged.
#[derive(Debug)]
pub struct Completion {
    /// Source partition.
    pub partition: i32,
    /// The owner that sealed the flush: its end counts only while that
    /// owner holds the partition (see [`crate::ownership`]).
    pub owner: u64,
    /// End offset to commit.
    pub end: i64,
    /// Delta rows emitted.
    pub rows: usize,
    /// When the flush was sealed.
    pub sealed_at: Instant,
}

/// Where flushes go.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The views topic (for dead-letter provenance).
    pub views_topic: String,
    /// The counts topic.
    pub counts_topic: String,
    /// Its partition count: source partition `p` goes to `p % counts_partitions`.
    pub counts_partitions: i32,
    /// The views dead-letter topic.
    pub dlq_topic: String,
    /// Deltas per counts record.
    pub chunk_rows: usize,
}

/// Runs until the job channel closes or `shutdown`, whichever comes first
/// (the channel's senders live as long as the consumer, whose close may wait
/// for an unreachable coordinator); an unfinished job is abandoned
/// uncommitted (the next owner re-emits it exactly). A fatal producer error
/// ends it with that error: no retry can succeed after one.
pub async fn run(
    producer: FutureProducer,
    destination: Destination,
    mut jobs: UnboundedReceiver<FlushJob>,
    done: Sender<Completion>,
    shutdown: CancellationToken,
) -> Result<(), FatalError> {
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return Ok(()),
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let emitted = tokio::select! {
                emitted = emit(&producer, &destination, &job) => emitted,
                () = shutdown.cancelled() => return Ok(()),
            };
            match emitted {
                Ok(()) => break,
                Err(e) => {
                    if let Some(fatal) = fatal_error(producer.client()) {
                        tracing::error!(partition = job.partition, end = job.header.end, error = %fatal, "flush cannot be emitted: the producer failed fatally");
                        return Err(fatal);
                    }
                    tracing::warn!(partition = job.partition, end = job.header.end, error = %e, "flush not acknowledged; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let completion = Completion {
            partition: job.partition,
            owner: job.owner(),
            end: job.header.end,
            rows: job.rows.len(),
            sealed_at: job.sealed_at,
        };
        if done.send(completion).is_err() {
            return Ok(());
        }
    }
}

async fn emit(producer: &FutureProducer, destination: &Destination, job: &FlushJob) -> Result<(), KafkaError> {
    let mut deliveries = Vec::new();
    for dead in &job.dead {
        let headers = dead.headers(&destination.views_topic, "tally-counter");
        let record = FutureRecord::to(&destination.dlq_topic).key(&dead.key).payload(&dead.payload).headers(headers);
        deliveries.push(send(producer, record).await?);
    }
    let partition = job.partition % destination.counts_partitions.max(1);
    let key = job.partition.to_string();
    let chunk_rows = destination.chunk_rows.max(1);
    let chunk_count = job.rows.len().div_ceil(chunk_rows).max(1);
    for index in 0..chunk_count {
        let rows = job.rows.iter().skip(index * chunk_rows).take(chunk_rows);
        let mut header = job.header;
        header.chunk_index = u32::try_from(index).unwrap_or(u32::MAX);
        header.chunk_count = u32::try_from(chunk_count).unwrap_or(u32::MAX);
        if index > 0 {
            header.stats = counts::FlushStats::default();
        }
        let payload =
            counts::encode(&header, rows.map(|(video, salt, minute, count)| (&**video, *salt, *minute, *count)));
        let record = FutureRecord::to(&destination.counts_topic).partition(partition).key(&key).payload(&payload);
        deliveries.push(send(producer, record).await?);
    }
    for outcome in join_all(deliveries).await {
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_canceled) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

/// Enqueues one record, waiting while the producer queue is full.
async fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
