//! Provenance headers of dead letters, shared by every service that
//! dead-letters records.
//!
//! Headers (all strings): `tally.error.kind`, `tally.error.message`,
//! `tally.source.topic`, `tally.source.partition`, `tally.source.offset`,
//! `tally.service`, `tally.time` (RFC 3339). Dead letters are rare, so headers
//! are fine here even on brokers where they are slow.

use rdkafka::message::{Header, OwnedHeaders};

/// Where a dead letter came from and why.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    /// Short machine-readable reason.
    pub kind: &'a str,
    /// Human-readable detail.
    pub message: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The service that gave up on it.
    pub service: &'a str,
    /// When, as RFC 3339.
    pub time: &'a str,
}

impl Provenance<'_> {
    /// The headers.
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        OwnedHeaders::new()
            .insert(Header { key: "tally.error.kind", value: Some(self.kind) })
            .insert(Header { key: "tally.error.message", value: Some(self.message) })
            .insert(Header { key: "tally.source.topic", value: Some(self.topic) })
            .insert(Header { key: "tally.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "tally.source.offset", value: Some(offset.as_str()) })
            .insert(Header { key: "tally.service", value: Some(self.service) })
            .insert(Header { key: "tally.time", value: Some(self.time) })
    }
}
