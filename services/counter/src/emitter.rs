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
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tally_kafka::fatal::{fatal_error, FatalError};
use tally_model::counts;
use tally_service::traces::{KeyValue, TRACEPARENT};
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
    /// Bytes of sketches per counts record (at least one sketch each).
    pub chunk_sketch_bytes: usize,
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
        // Only when tracing is on and the range holds records of traced
        // requests; ends (is exported) when the flush is acknowledged.
        let span = job.links.start_span(
            "counter flush",
            vec![
                KeyValue::new("tally.partition", i64::from(job.partition)),
                KeyValue::new("tally.offsets.start", job.header.start),
                KeyValue::new("tally.offsets.end", job.header.end),
                KeyValue::new("tally.rows", i64::try_from(job.rows.len()).unwrap_or(i64::MAX)),
            ],
        );
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
        drop(span);
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
    let chunks = plan_chunks(job, destination);
    let chunk_count = chunks.len();
    for (index, chunk) in chunks.into_iter().enumerate() {
        let mut header = job.header;
        header.chunk_index = u32::try_from(index).unwrap_or(u32::MAX);
        header.chunk_count = u32::try_from(chunk_count).unwrap_or(u32::MAX);
        if index > 0 {
            header.stats = counts::FlushStats::default();
        }
        let rows = job.rows[chunk.rows].iter().map(|(video, salt, minute, count)| (&**video, *salt, *minute, *count));
        let sketches =
            job.uniques[chunk.sketches].iter().map(|(video, salt, hour, bytes)| (&**video, *salt, *hour, &bytes[..]));
        let trending = job.trending[chunk.trending].iter().map(|s| (s.minute, &s.sketch[..]));
        let payload = counts::encode_sections(&header, rows, sketches, trending);
        let mut record = FutureRecord::to(&destination.counts_topic).partition(partition).key(&key).payload(&payload);
        // The first record carries the flush's trace contexts to the writer.
        if index == 0 && !job.links.is_empty() {
            let headers = job.links.traceparents().fold(OwnedHeaders::new(), |headers, value| {
                headers.insert(Header { key: TRACEPARENT, value: Some(value.as_str()) })
            });
            record = record.headers(headers);
        }
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

/// The deltas and sketches of one counts record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChunkPlan {
    rows: std::ops::Range<usize>,
    sketches: std::ops::Range<usize>,
    trending: std::ops::Range<usize>,
}

impl ChunkPlan {
    const EMPTY: Self = Self { rows: 0..0, sketches: 0..0, trending: 0..0 };
}

/// Splits a flush into records: deltas by `chunk-rows`, then unique-viewer
/// sketches and then trending sketches by `chunk-sketch-bytes` (at least
/// one each); always one record, even empty. Each sketch goes in exactly
/// one record: the writer adds a trending sketch to its row once per flush
/// version, so a sketch split over records could not be told from a replay.
fn plan_chunks(job: &FlushJob, destination: &Destination) -> Vec<ChunkPlan> {
    let chunk_rows = destination.chunk_rows.max(1);
    let mut plans: Vec<ChunkPlan> = (0..job.rows.len().div_ceil(chunk_rows))
        .map(|i| ChunkPlan { rows: i * chunk_rows..((i + 1) * chunk_rows).min(job.rows.len()), ..ChunkPlan::EMPTY })
        .collect();
    let uniques: Vec<usize> = job.uniques.iter().map(|s| s.3.len()).collect();
    for sketches in pack(&uniques, destination.chunk_sketch_bytes) {
        plans.push(ChunkPlan { sketches, ..ChunkPlan::EMPTY });
    }
    let trending: Vec<usize> = job.trending.iter().map(|s| s.sketch.len()).collect();
    for trending in pack(&trending, destination.chunk_sketch_bytes) {
        plans.push(ChunkPlan { trending, ..ChunkPlan::EMPTY });
    }
    if plans.is_empty() {
        plans.push(ChunkPlan::EMPTY);
    }
    plans
}

/// Consecutive ranges of items of `sizes` bytes, each at most `limit`
/// bytes unless a single item is larger.
fn pack(sizes: &[usize], limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start + 1;
        let mut bytes = sizes[start];
        while end < sizes.len() && bytes + sizes[end] <= limit {
            bytes += sizes[end];
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges
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

#[cfg(test)]
mod tests {
    use super::*;
    use tally_model::Salt;

    fn job(rows: usize, sketch_sizes: &[usize]) -> FlushJob {
        FlushJob {
            partition: 0,
            header: counts::FlushHeader::default(),
            rows: (0..rows).map(|i| (Box::from(format!("v{i}")), Salt(0), 0, 1)).collect(),
            uniques: sketch_sizes.iter().map(|n| (Box::from("v"), Salt(0), 0, vec![0; *n])).collect(),
            trending: Vec::new(),
            dead: Vec::new(),
            links: tally_service::traces::Links::default(),
            sealed_at: Instant::now(),
        }
    }

    fn destination() -> Destination {
        Destination {
            views_topic: String::new(),
            counts_topic: String::new(),
            counts_partitions: 1,
            dlq_topic: String::new(),
            chunk_rows: 2,
            chunk_sketch_bytes: 100,
        }
    }

    #[test]
    fn deltas_split_by_rows_and_sketches_by_bytes() {
        let plans = plan_chunks(&job(5, &[60, 40, 30, 500, 10]), &destination());
        let shape: Vec<_> = plans.iter().map(|p| (p.rows.clone(), p.sketches.clone())).collect();
        assert_eq!(
            shape,
            vec![(0..2, 0..0), (2..4, 0..0), (4..5, 0..0), (0..0, 0..2), (0..0, 2..3), (0..0, 3..4), (0..0, 4..5)]
        );
        assert_eq!(plan_chunks(&job(0, &[]), &destination()), vec![ChunkPlan::EMPTY]);
    }

    #[test]
    fn each_minutes_trending_sketch_goes_in_exactly_one_record() {
        let mut flush = job(1, &[]);
        flush.trending = [70, 20, 90, 300]
            .iter()
            .enumerate()
            .map(|(i, n)| counts::MinuteSketch { minute: i as i64 * 60_000, sketch: vec![0; *n] })
            .collect();
        let plans = plan_chunks(&flush, &destination());
        let trending: Vec<_> = plans.iter().map(|p| p.trending.clone()).collect();
        assert_eq!(trending, vec![0..0, 0..2, 2..3, 3..4]);
        let mut carried: Vec<usize> = plans.iter().flat_map(|p| p.trending.clone()).collect();
        carried.sort_unstable();
        assert_eq!(carried, vec![0, 1, 2, 3], "every sketch once");
    }
}
