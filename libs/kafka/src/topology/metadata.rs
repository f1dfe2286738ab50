//! Topic ids, read with one Kafka `Metadata` request (API key 3, version
//! 12) over a plain TCP connection to a bootstrap broker.
//!
//! Why not through librdkafka: it reads topic ids (KIP-516) and exposes
//! them in its C API (`rd_kafka_DescribeTopics`,
//! `rd_kafka_TopicDescription_topic_id`), but rdkafka 0.39's safe API has
//! neither (fede1024/rust-rdkafka#614, #721 unmerged), and `unsafe` is
//! forbidden in this workspace. The request and the parts of the answer
//! read here are small and fixed by the protocol, so they are written out
//! by hand instead of vendoring a patched rdkafka.
//!
//! Limits: only the `PLAINTEXT` security protocol (no TLS, no SASL), and
//! only brokers that answer Metadata version 12 (Apache Kafka 3.1 and
//! later). Elsewhere [`MetadataError::Unsupported`] says why, and the
//! caller goes on without topic ids.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::KafkaConfig;

/// `Metadata`.
const API_KEY: i16 = 3;
/// The first version with topic ids in requests and nullable names, and no
/// cluster-authorized-operations fields.
const API_VERSION: i16 = 12;
/// Most bytes of an answer this client accepts.
const MAX_RESPONSE: usize = 16 << 20;

/// A Kafka topic id (a UUID the broker gives a topic when it creates it;
/// a topic deleted and created again under the same name gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// The id as Kafka's tools print it (URL-safe base64 without padding,
    /// as `kafka-topics.sh --describe` shows `TopicId:`).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`TopicId::encode`]'s form.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// One topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedTopic {
    /// Its name.
    pub name: String,
    /// Kafka's error code for it (0: none; 3: it does not exist).
    pub error_code: i16,
    /// Its id; `None` when the broker gave the zero id (no ids kept).
    pub id: Option<TopicId>,
    /// Its partitions.
    pub partitions: i32,
}

/// What one Metadata answer said about the cluster and the topics asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The cluster's id.
    pub cluster_id: Option<String>,
    /// The topics asked for, in the broker's order.
    pub topics: Vec<DescribedTopic>,
}

/// Why topic ids could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// This client cannot ask this cluster (see the module's limits).
    #[error("topic ids cannot be read here: {0}")]
    Unsupported(String),
    /// No bootstrap broker answered.
    #[error("no bootstrap broker answered a metadata request: {0}")]
    Unreachable(String),
    /// The answer did not parse.
    #[error("malformed metadata answer: {0}")]
    Malformed(&'static str),
}

/// Describes `topics` by asking the bootstrap brokers of `config` in turn
/// (blocking; call from `spawn_blocking`).
pub fn describe(config: &KafkaConfig, topics: &[&str], timeout: Duration) -> Result<Described, MetadataError> {
    if let Some(protocol) = config.properties.get("security.protocol") {
        if !protocol.eq_ignore_ascii_case("plaintext") {
            return Err(MetadataError::Unsupported(format!(
                "security.protocol {protocol} (only PLAINTEXT is spoken by Tally's own metadata request)"
            )));
        }
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no bootstrap servers configured");
    for server in config.brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let address = server.rsplit("://").next().unwrap_or(server);
        match ask(address, topics, deadline) {
            Ok(described) => return Ok(described),
            Err(AskError::Answer(e)) => return Err(e),
            Err(AskError::Io(e)) => last = format!("{address}: {e}"),
        }
    }
    Err(MetadataError::Unreachable(last))
}

enum AskError {
    Io(std::io::Error),
    Answer(MetadataError),
}

impl From<std::io::Error> for AskError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

fn ask(address: &str, topics: &[&str], deadline: Instant) -> Result<Described, AskError> {
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let socket = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, left())?;
    stream.set_read_timeout(Some(left()))?;
    stream.set_write_timeout(Some(left()))?;
    let correlation_id = 1;
    stream.write_all(&request(correlation_id, topics))?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // Brokers close the connection on a request version they do not know.
            AskError::Answer(MetadataError::Unsupported(format!(
                "{address} closed the connection on a Metadata v{API_VERSION} request (a broker older than Apache Kafka 3.1?)"
            )))
        } else {
            AskError::Io(e)
        }
    })?;
    let size =
        usize::try_from(i32::from_be_bytes(size)).map_err(|_| AskError::Answer(MetadataError::Malformed("size")))?;
    if size > MAX_RESPONSE {
        return Err(AskError::Answer(MetadataError::Malformed("answer too large")));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body)?;
    parse_response(&body, correlation_id).map_err(AskError::Answer)
}

/// A size-prefixed Metadata v12 request for `topics` (request header v2).
pub fn request(correlation_id: i32, topics: &[&str]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    out.extend_from_slice(&API_KEY.to_be_bytes());
    out.extend_from_slice(&API_VERSION.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    let client_id = b"tally-topology";
    out.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    out.extend_from_slice(client_id);
    out.push(0); // header tagged fields
    varint(&mut out, topics.len() as u64 + 1);
    for topic in topics {
        out.extend_from_slice(&[0u8; 16]); // by name, not id
        varint(&mut out, topic.len() as u64 + 1);
        out.extend_from_slice(topic.as_bytes());
        out.push(0); // topic tagged fields
    }
    out.push(0); // allow_auto_topic_creation: never create a topic by asking
    out.push(0); // include_topic_authorized_operations
    out.push(0); // tagged fields
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Parses a Metadata v12 answer (after its size), which must carry `correlation_id`.
pub fn parse_response(body: &[u8], correlation_id: i32) -> Result<Described, MetadataError> {
    let mut r = Reader { bytes: body };
    if r.i32()? != correlation_id {
        return Err(MetadataError::Malformed("correlation id"));
    }
    r.tagged_fields()?;
    r.i32()?; // throttle_time_ms
    for _ in 0..r.compact_len()? {
        r.i32()?; // node_id
        r.compact_string()?; // host
        r.i32()?; // port
        r.compact_string()?; // rack
        r.tagged_fields()?;
    }
    let cluster_id = r.compact_string()?.map(str::to_owned);
    r.i32()?; // controller_id
    let mut topics = Vec::new();
    for _ in 0..r.compact_len()? {
        let error_code = r.i16()?;
        let name = r.compact_string()?.unwrap_or_default().to_owned();
        let id: [u8; 16] = r.take(16)?.try_into().map_err(|_| MetadataError::Malformed("topic id"))?;
        r.take(1)?; // is_internal
        let partitions = r.compact_len()?;
        for _ in 0..partitions {
            r.i16()?; // error_code
            r.i32()?; // partition_index
            r.i32()?; // leader_id
            r.i32()?; // leader_epoch
            for _ in 0..3 {
                // replica_nodes, isr_nodes, offline_replicas
                let n = r.compact_len()?;
                r.take(4 * n)?;
            }
            r.tagged_fields()?;
        }
        r.i32()?; // topic_authorized_operations
        r.tagged_fields()?;
        let id = (id != [0; 16]).then_some(TopicId(id));
        let partitions = i32::try_from(partitions).map_err(|_| MetadataError::Malformed("partitions"))?;
        topics.push(DescribedTopic { name, error_code, id, partitions });
    }
    r.tagged_fields()?;
    Ok(Described { cluster_id, topics })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MetadataError> {
        if self.bytes.len() < n {
            return Err(MetadataError::Malformed("answer ends early"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, MetadataError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().map_err(|_| MetadataError::Malformed("int16"))?))
    }

    fn i32(&mut self) -> Result<i32, MetadataError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().map_err(|_| MetadataError::Malformed("int32"))?))
    }

    fn varint(&mut self) -> Result<u64, MetadataError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MetadataError::Malformed("varint too long"))
    }

    /// A compact array's or string's length (a null one has none).
    fn compact_len(&mut self) -> Result<usize, MetadataError> {
        let n = self.varint()?;
        usize::try_from(n.saturating_sub(1)).map_err(|_| MetadataError::Malformed("length"))
    }

    fn compact_string(&mut self) -> Result<Option<&'a str>, MetadataError> {
        let n = self.varint()?;
        if n == 0 {
            return Ok(None);
        }
        let len = usize::try_from(n - 1).map_err(|_| MetadataError::Malformed("length"))?;
        std::str::from_utf8(self.take(len)?).map(Some).map_err(|_| MetadataError::Malformed("string"))
    }

    fn tagged_fields(&mut self) -> Result<(), MetadataError> {
        for _ in 0..self.varint()? {
            self.varint()?; // tag
            let size = usize::try_from(self.varint()?).map_err(|_| MetadataError::Malformed("tag size"))?;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact_string(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(0),
            Some(s) => {
                varint(out, s.len() as u64 + 1);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// A Metadata v12 answer as the protocol lays it out, written field by field.
    fn answer(correlation_id: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&correlation_id.to_be_bytes());
        out.push(0);
        out.extend_from_slice(&0i32.to_be_bytes()); // throttle
        varint(&mut out, 2); // one broker
        out.extend_from_slice(&1i32.to_be_bytes());
        compact_string(&mut out, Some("127.0.0.1"));
        out.extend_from_slice(&9092i32.to_be_bytes());
        compact_string(&mut out, None);
        // A tagged field the client does not know, skipped.
        out.extend_from_slice(&[1, 7, 2, 0xaa, 0xbb]);
        compact_string(&mut out, Some("cluster-a"));
        out.extend_from_slice(&1i32.to_be_bytes());
        varint(&mut out, 3); // two topics
        for (name, id, partitions, error) in [("views", [7u8; 16], 2i32, 0i16), ("gone", [0u8; 16], 0, 3)] {
            out.extend_from_slice(&error.to_be_bytes());
            compact_string(&mut out, Some(name));
            out.extend_from_slice(&id);
            out.push(0);
            varint(&mut out, partitions as u64 + 1);
            for p in 0..partitions {
                out.extend_from_slice(&0i16.to_be_bytes());
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&0i32.to_be_bytes());
                for _ in 0..3 {
                    varint(&mut out, 2);
                    out.extend_from_slice(&1i32.to_be_bytes());
                }
                out.push(0);
            }
            out.extend_from_slice(&i32::MIN.to_be_bytes());
            out.push(0);
        }
        out.push(0);
        out
    }

    #[test]
    fn an_answer_gives_the_cluster_the_topic_ids_and_the_partition_counts() {
        let described = parse_response(&answer(5), 5).unwrap();
        assert_eq!(described.cluster_id.as_deref(), Some("cluster-a"));
        assert_eq!(
            described.topics,
            vec![
                DescribedTopic { name: "views".into(), error_code: 0, id: Some(TopicId([7; 16])), partitions: 2 },
                DescribedTopic { name: "gone".into(), error_code: 3, id: None, partitions: 0 },
            ]
        );
        assert!(matches!(parse_response(&answer(5), 6), Err(MetadataError::Malformed("correlation id"))));
        let full = answer(5);
        assert!(parse_response(&full[..full.len() - 3], 5).is_err(), "a truncated answer is refused");
    }

    #[test]
    fn a_request_is_sized_and_names_its_topics() {
        let bytes = request(9, &["a", "bc"]);
        assert_eq!(i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        assert_eq!(&bytes[4..8], &[0, 3, 0, 12], "Metadata v12");
        assert_eq!(&bytes[8..12], &9i32.to_be_bytes());
        let body = &bytes[12 + 2 + "tally-topology".len() + 1..];
        assert_eq!(body[0], 3, "two topics");
        assert_eq!(&body[1..17], &[0; 16]);
        assert_eq!(&body[17..19], &[2, b'a']);
    }

    #[test]
    fn topic_ids_print_as_kafka_tools_print_them() {
        let id = TopicId(*b"\x8a\x1b\x9e\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc");
        assert_eq!(id.encode().len(), 22);
        assert_eq!(TopicId::decode(&id.encode()), Some(id));
        assert_eq!(TopicId::decode("not an id"), None);
    }
}
