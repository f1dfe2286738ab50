//! The recorded topology in its compacted topic (`kafka.topics.topology`):
//! one JSON record under the key [`KEY`], the newest one wins.
//!
//! Why a topic of its own and not the store or the counts topic: counters
//! and writers both read it (counters have no store), and it outlives the
//! topics it describes (a record inside `tally.counts` would vanish with a
//! recreated `tally.counts`, the very change it must catch). Compaction
//! keeps the newest record for ever.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{Topology, TopologyError};
use crate::clients::base_config;
use crate::KafkaConfig;

/// The key of the topology record.
pub const KEY: &str = "topology";

/// The format written by this build.
const FORMAT: u32 = 1;

/// The record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Stored {
    format: u32,
    #[serde(flatten)]
    topology: Topology,
}

/// The newest recorded topology, `None` when nothing was recorded (a first
/// start). Blocking: call from `spawn_blocking`.
pub fn read(kafka: &KafkaConfig, timeout: Duration) -> Result<Option<Topology>, TopologyError> {
    let topic = &kafka.topics.topology;
    let kafka_error = |source| TopologyError::Kafka { topic: topic.clone(), source };
    let reader: BaseConsumer = base_config(kafka, "tally-topology")
        .set("group.id", format!("tally-topology-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(kafka_error)?;
    let deadline = Instant::now() + timeout;
    // A topic created a moment ago may have no leader yet: asked again until the deadline.
    let (low, high) = loop {
        match bounds(&reader, topic) {
            Ok(bounds) => break bounds,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(topic, error = %e, "topology topic not readable yet; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    };
    if high <= low {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(low)).map_err(kafka_error)?;
    reader.assign(&assignment).map_err(kafka_error)?;
    let mut newest = None;
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(TopologyError::ReadTimeout { topic: topic.clone(), from: next, to: high });
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                next = message.offset() + 1;
                if message.key() != Some(KEY.as_bytes()) {
                    continue;
                }
                newest = match message.payload() {
                    None => None, // a tombstone: recorded nothing
                    Some(payload) => Some(decode(payload).map_err(|reason| TopologyError::Undecodable {
                        topic: topic.clone(),
                        offset: message.offset(),
                        reason,
                    })?),
                };
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the topology record; retrying"),
            None => {}
        }
    }
    Ok(newest)
}

/// The low and high watermarks of the topology topic's one partition.
fn bounds(reader: &BaseConsumer, topic: &str) -> Result<(i64, i64), TopologyError> {
    let kafka_error = |source| TopologyError::Kafka { topic: topic.to_owned(), source };
    let metadata = reader.fetch_metadata(Some(topic), Duration::from_secs(5)).map_err(kafka_error)?;
    let partitions =
        metadata.topics().first().map_or(0, |t| if t.error().is_some() { 0 } else { t.partitions().len() });
    if partitions != 1 {
        return Err(TopologyError::TopologyTopic { topic: topic.to_owned(), partitions });
    }
    reader.fetch_watermarks(topic, 0, Duration::from_secs(5)).map_err(kafka_error)
}

/// Writes `topology` as the newest record and waits for its acknowledgement.
pub async fn write(kafka: &KafkaConfig, topology: &Topology) -> Result<(), TopologyError> {
    let topic = &kafka.topics.topology;
    let kafka_error = |source| TopologyError::Kafka { topic: topic.clone(), source };
    let producer: FutureProducer = base_config(kafka, "tally-topology")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(kafka_error)?;
    let payload = encode(topology);
    let record = FutureRecord::to(topic).partition(0).key(KEY).payload(&payload);
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| kafka_error(e))?;
    Ok(())
}

fn encode(topology: &Topology) -> Vec<u8> {
    let stored = Stored { format: FORMAT, topology: topology.clone() };
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec_pretty(&stored).unwrap_or_default()
}

fn decode(payload: &[u8]) -> Result<Topology, String> {
    let stored: Stored = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if stored.format != FORMAT {
        return Err(format!("format {} (this build reads format {FORMAT})", stored.format));
    }
    Ok(stored.topology)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{TopicId, TopicIdentity};

    #[test]
    fn a_record_reads_back_as_written_and_a_newer_format_is_refused() {
        let topology = Topology {
            cluster_id: Some("c".into()),
            views: TopicIdentity { name: "v".into(), id: Some(TopicId([1; 16])), partitions: 12 },
            counts: TopicIdentity { name: "c".into(), id: None, partitions: 4 },
            views_epoch: 2,
            recorded_at: "2026-12-01T00:00:00Z".into(),
            recorded_by: "counter on h/1".into(),
        };
        let bytes = encode(&topology);
        assert_eq!(decode(&bytes), Ok(topology));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"views-epoch\": 2"), "{text}");
        let newer = text.replace("\"format\": 1", "\"format\": 2");
        assert!(decode(newer.as_bytes()).unwrap_err().contains("format 2"));
    }
}
