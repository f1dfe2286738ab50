//! A store-less verifier: folds the counts topic exactly as the writer
//! applies it, so counter exactness is testable (and checkable in
//! production) without a database.
//!
//! Rules (the writer's): claims and chunks are folded in log order; a chunk
//! whose owner a later claim superseded is fenced ([`Fences`]); row
//! `(video_id, salt, minute, source_partition)` takes a delta of an admitted
//! chunk only when the delta's version (`epoch`, `end`) is newer than the
//! row's, so replayed and re-emitted chunks are no-ops. The fold also reports
//! overlapping admitted ranges of one source partition, which would mean two
//! owners' ranges over the same records both counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;
use tally_model::counts::{self, Admission, CountsRecord, Fences, FlushChunk, FlushStats};

/// The folded state of a counts topic.
#[derive(Debug, Default)]
pub struct Folded {
    /// Views per video, all rows summed.
    pub totals: BTreeMap<String, i64>,
    /// Distinct rows.
    pub rows: usize,
    /// Chunks read.
    pub chunks: usize,
    /// Deltas ignored because their row already had that version or newer.
    pub stale_deltas: usize,
    /// Ranges that overlapped an earlier range of the same source partition.
    pub overlaps: Vec<String>,
    /// Records that were not valid counts chunks.
    pub undecodable: usize,
    /// Statistics summed over distinct flushes.
    pub stats: FlushStats,
    /// Distinct flushes seen more than once (re-emitted or retried).
    pub repeated_flushes: usize,
    /// Claims read (partitions taken over).
    pub claims: usize,
    /// Chunks of superseded owners, dropped.
    pub fenced_chunks: usize,
}

type RowKey = (String, u16, i64, u32);

/// Folds chunks in topic order.
#[derive(Debug, Default)]
pub struct Fold {
    fences: Fences,
    rows: HashMap<RowKey, (i64, i64)>,
    max_end: HashMap<(u32, u32), i64>,
    flushes: HashSet<(u32, u32, i64)>,
    folded: Folded,
}

impl Fold {
    /// Folds the record read at `offset` of its counts partition.
    pub fn record(&mut self, offset: i64, record: &CountsRecord) {
        match record {
            CountsRecord::Claim(claim) => {
                self.folded.claims += 1;
                self.fences.claim(claim, offset);
            }
            CountsRecord::Chunk(chunk) => {
                self.folded.chunks += 1;
                match self.fences.admit(&chunk.header) {
                    Admission::Admitted => self.apply(chunk),
                    Admission::Fenced { .. } => self.folded.fenced_chunks += 1,
                }
            }
        }
    }

    /// Applies one admitted chunk.
    fn apply(&mut self, chunk: &FlushChunk) {
        let h = chunk.header;
        let version = h.version();
        let max_end = self.max_end.entry((h.epoch, h.source_partition)).or_insert(h.start);
        if h.start < *max_end && h.end > *max_end {
            self.folded.overlaps.push(format!(
                "epoch {} partition {}: [{}, {}) overlaps up to {}",
                h.epoch, h.source_partition, h.start, h.end, max_end
            ));
        }
        *max_end = (*max_end).max(h.end);
        if h.chunk_index == 0 {
            if self.flushes.insert((h.epoch, h.source_partition, h.end)) {
                let s = &mut self.folded.stats;
                s.read += h.stats.read;
                s.counted += h.stats.counted;
                s.duplicates += h.stats.duplicates;
                s.dead_lettered += h.stats.dead_lettered;
            } else {
                self.folded.repeated_flushes += 1;
            }
        }
        for delta in &chunk.deltas {
            let key = (delta.video_id.clone(), delta.salt.0, delta.minute, h.source_partition);
            let row = self.rows.entry(key).or_insert((0, i64::MIN));
            if version > row.1 {
                row.0 += i64::from(delta.count);
                row.1 = version;
            } else {
                self.folded.stale_deltas += 1;
            }
        }
    }

    /// The result.
    pub fn finish(mut self) -> Folded {
        for ((video, ..), (count, _)) in &self.rows {
            *self.folded.totals.entry(video.clone()).or_default() += count;
        }
        self.folded.rows = self.rows.len();
        self.folded
    }
}

/// Reads `topic` from the beginning up to its current end and folds it.
pub fn fold_counts(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Folded, KafkaError> {
    // A group id is required by librdkafka even for assign-only reading; nothing is committed.
    let group = format!("tally-verify-{}", std::process::id());
    let consumer: BaseConsumer = base_config(kafka, "tally-verify")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> =
        metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(*p, high);
            assignment.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    let mut fold = Fold::default();
    let deadline = Instant::now() + timeout;
    // Chunks of different partitions concern different source partitions
    // (p % partitions), so folding them in arrival order is the writer's order.
    while !ends.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let p = message.partition();
                match counts::decode(message.payload().unwrap_or_default()) {
                    Ok(record) => fold.record(message.offset(), &record),
                    Err(_) => fold.folded.undecodable += 1,
                }
                if ends.get(&p).is_some_and(|end| message.offset() + 1 >= *end) {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if !ends.is_empty() {
        return Err(KafkaError::Canceled);
    }
    Ok(fold.finish())
}

#[cfg(test)]
mod tests {
    use tally_model::counts::{Claim, Delta, FlushHeader};
    use tally_model::Salt;

    use super::*;

    fn owned(owner: u64, start: i64, end: i64, index: u32, count: u32, deltas: &[(&str, u32)]) -> CountsRecord {
        CountsRecord::Chunk(FlushChunk {
            header: FlushHeader { owner, start, end, chunk_index: index, chunk_count: count, ..FlushHeader::default() },
            deltas: deltas
                .iter()
                .map(|(v, n)| Delta { video_id: (*v).into(), salt: Salt(0), minute: 0, count: *n })
                .collect(),
            uniques: Vec::new(),
            trending: Vec::new(),
        })
    }

    fn chunk(start: i64, end: i64, index: u32, count: u32, deltas: &[(&str, u32)]) -> CountsRecord {
        owned(0, start, end, index, count, deltas)
    }

    fn claim(owner: u64) -> CountsRecord {
        CountsRecord::Claim(Claim { owner, ..Claim::default() })
    }

    /// Folds records as if read at consecutive offsets.
    fn fold(records: &[CountsRecord]) -> Folded {
        let mut fold = Fold::default();
        for (offset, record) in records.iter().enumerate() {
            fold.record(offset as i64, record);
        }
        fold.finish()
    }

    #[test]
    fn replayed_and_reemitted_chunks_do_not_change_totals() {
        let folded = fold(&[
            chunk(0, 10, 0, 1, &[("a", 4), ("b", 6)]),
            chunk(10, 20, 0, 2, &[("a", 1)]),
            // Crash before chunk 1; the next owner re-emits the whole flush.
            chunk(10, 20, 0, 2, &[("a", 1)]),
            chunk(10, 20, 1, 2, &[("b", 2)]),
            // And a full replay of the topic from the start.
            chunk(0, 10, 0, 1, &[("a", 4), ("b", 6)]),
        ]);
        assert_eq!(folded.totals["a"], 5);
        assert_eq!(folded.totals["b"], 8);
        assert_eq!(folded.stale_deltas, 3);
        assert!(folded.overlaps.is_empty());
    }

    #[test]
    fn overlapping_ranges_are_reported() {
        let folded = fold(&[chunk(0, 10, 0, 1, &[("a", 1)]), chunk(5, 15, 0, 1, &[("a", 1)])]);
        assert_eq!(folded.overlaps.len(), 1);
    }

    #[test]
    fn a_zombies_range_after_its_successors_claim_is_fenced_not_counted() {
        let folded = fold(&[
            claim(1),
            owned(1, 0, 10, 0, 1, &[("a", 4)]),
            claim(2),
            // Owner 1 was frozen with [10, 25) buffered; owner 2 resumed at 10.
            owned(1, 10, 25, 0, 1, &[("a", 9)]),
            owned(2, 10, 20, 0, 1, &[("a", 5)]),
            owned(2, 20, 30, 0, 1, &[("a", 3)]),
        ]);
        assert_eq!(folded.totals["a"], 12);
        assert_eq!((folded.claims, folded.fenced_chunks), (2, 1));
        assert!(folded.overlaps.is_empty(), "{:?}", folded.overlaps);
    }
}
