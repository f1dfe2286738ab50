//! The broker side of the lag monitor: high watermarks, and the timestamp of
//! the record at an offset, through two clients of the monitor's own (no
//! group, nothing committed), so a slow broker delays only the monitor.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tally_kafka::clients::base_config;
use tally_kafka::KafkaConfig;

use crate::lag::LagSource;

/// Longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// High watermarks and record timestamps of the views topic, from the broker.
pub struct BrokerLagSource {
    watermarks: BaseConsumer,
    probe: BaseConsumer,
    topic: String,
}

impl BrokerLagSource {
    /// Clients that ask for watermarks and fetch single records by offset.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        let watermarks = base_config(kafka, "tally-counter-lag").create()?;
        // Small fetches: one record is wanted, the broker still sends the
        // whole record batch it is in. librdkafka refuses to assign
        // partitions without a group id; the group is never joined and
        // nothing is committed to it.
        let probe = base_config(kafka, "tally-counter-lag-probe")
            .set("group.id", "tally-counter-lag-probe")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("max.partition.fetch.bytes", "65536")
            .set("queued.min.messages", "1")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        Ok(Self { watermarks, probe, topic: topic.to_owned() })
    }
}

impl LagSource for BrokerLagSource {
    fn high(&self, partition: i32) -> Result<i64, KafkaError> {
        self.watermarks.fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT).map(|(_, high)| high)
    }

    fn timestamp_at(&mut self, partition: i32, offset: i64) -> Result<Option<i64>, KafkaError> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        // Assigning replaces the last probe's partition and drops what was
        // fetched for it.
        self.probe.assign(&assignment)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            match self.probe.poll(left) {
                None => break None,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    self.probe.unassign()?;
                    return Err(e);
                }
                Some(Ok(message)) => {
                    if message.partition() == partition && message.offset() >= offset {
                        break message.timestamp().to_millis();
                    }
                }
            }
        };
        self.probe.unassign()?;
        Ok(found)
    }
}
