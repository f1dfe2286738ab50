//! The record format of the `tally.counts` topic, version 1: one chunk of one
//! counter flush.
//!
//! A flush covers a contiguous offset range `[start, end)` of one source
//! partition of `tally.views` and holds one delta per `(video_id, salt,
//! minute)` counted in that range. Big flushes are split into chunks; each
//! chunk carries the whole flush header, so any record says which range it
//! belongs to. All integers are big-endian.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (`1`) |
//! | 4 | `epoch`: incarnation of the source topic (bumped when it is recreated) |
//! | 4 | `source_partition` |
//! | 8 | `start` offset (inclusive) |
//! | 8 | `end` offset (exclusive): with `epoch`, the version of every delta |
//! | 4 | `chunk_index`, 4 | `chunk_count` |
//! | 8 | `dedup_horizon`: oldest source offset the dedup state still needs at `end` |
//! | 8 | `max_received_ms`: newest gateway receive time seen at `end` |
//! | 4 × 4 | flush statistics: events read, counted, duplicates, dead-lettered (whole flush; chunk 0 only, 0 elsewhere) |
//! | 4 | number of deltas, then per delta: 1 + n `video_id`, 2 `salt`, 8 `minute` (epoch ms), 4 `count` |
//!
//! The writer applies a delta to row `(video_id, salt, minute, source_partition)`
//! only if [`FlushHeader::version`] is newer than the row's stored version, so a
//! replayed or re-emitted chunk changes nothing.

use crate::salt::Salt;

/// The version this build writes.
pub const COUNTS_VERSION: u8 = 1;

/// Bytes of an encoded header.
pub const HEADER_LEN: usize = 65;

/// Bits of a packed version given to the end offset.
const OFFSET_BITS: u32 = 48;

/// Which range of which source partition a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushHeader {
    /// Incarnation of the source topic.
    pub epoch: u32,
    /// Partition of `tally.views` the range is from.
    pub source_partition: u32,
    /// First offset of the range.
    pub start: i64,
    /// One past the last offset of the range.
    pub end: i64,
    /// This chunk's position in the flush.
    pub chunk_index: u32,
    /// Chunks in the flush.
    pub chunk_count: u32,
    /// Oldest source offset the dedup state needs after `end`.
    pub dedup_horizon: i64,
    /// Newest gateway receive time seen up to `end`.
    pub max_received_ms: i64,
    /// Statistics of the whole flush (on chunk 0).
    pub stats: FlushStats,
}

/// What happened to the records of one flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushStats {
    /// Records read.
    pub read: u32,
    /// Views counted.
    pub counted: u32,
    /// Duplicates dropped.
    pub duplicates: u32,
    /// Records sent to the dead-letter topic (late or malformed).
    pub dead_lettered: u32,
}

impl FlushHeader {
    /// The version of every delta of the flush: `epoch` then `end`, packed so
    /// that integer order is version order.
    pub fn version(&self) -> i64 {
        (i64::from(self.epoch) << OFFSET_BITS) | (self.end & ((1 << OFFSET_BITS) - 1))
    }
}

/// One count increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The video.
    pub video_id: String,
    /// The salt its events were keyed with.
    pub salt: Salt,
    /// Start of the minute bucket, epoch ms.
    pub minute: i64,
    /// Views counted in the range.
    pub count: u32,
}

/// A decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushChunk {
    /// The flush it belongs to.
    pub header: FlushHeader,
    /// Its deltas.
    pub deltas: Vec<Delta>,
}

/// Why a counts record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountsError {
    /// Written by a format this build does not know.
    #[error("unsupported counts format version {0}")]
    UnsupportedVersion(u8),
    /// The record ends early or has bytes left over.
    #[error("counts record malformed: {0}")]
    Malformed(&'static str),
}

/// Bytes a delta takes on the wire.
pub fn encoded_delta_len(video_id: &str) -> usize {
    1 + video_id.len() + 2 + 8 + 4
}

/// Encodes a chunk header followed by `deltas`.
pub fn encode<'a>(header: &FlushHeader, deltas: impl ExactSizeIterator<Item = (&'a str, Salt, i64, u32)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + deltas.len() * 32);
    out.push(COUNTS_VERSION);
    out.extend_from_slice(&header.epoch.to_be_bytes());
    out.extend_from_slice(&header.source_partition.to_be_bytes());
    out.extend_from_slice(&header.start.to_be_bytes());
    out.extend_from_slice(&header.end.to_be_bytes());
    out.extend_from_slice(&header.chunk_index.to_be_bytes());
    out.extend_from_slice(&header.chunk_count.to_be_bytes());
    out.extend_from_slice(&header.dedup_horizon.to_be_bytes());
    out.extend_from_slice(&header.max_received_ms.to_be_bytes());
    for stat in [header.stats.read, header.stats.counted, header.stats.duplicates, header.stats.dead_lettered] {
        out.extend_from_slice(&stat.to_be_bytes());
    }
    out.extend_from_slice(&u32::try_from(deltas.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (video_id, salt, minute, count) in deltas {
        // Video ids are validated at 128 bytes at most.
        out.push(u8::try_from(video_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(video_id.as_bytes());
        out.extend_from_slice(&salt.0.to_be_bytes());
        out.extend_from_slice(&minute.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

/// Decodes only the header (cheap: for scanning a partition's tail).
pub fn decode_header(bytes: &[u8]) -> Result<FlushHeader, CountsError> {
    let mut r = Reader { bytes, pos: 0 };
    read_header(&mut r)
}

/// Decodes a whole chunk.
pub fn decode(bytes: &[u8]) -> Result<FlushChunk, CountsError> {
    let mut r = Reader { bytes, pos: 0 };
    let header = read_header(&mut r)?;
    let n = r.u32()? as usize;
    let mut deltas = Vec::with_capacity(n.min(bytes.len() / 15));
    for _ in 0..n {
        let len = usize::from(r.take(1)?[0]);
        let video_id = std::str::from_utf8(r.take(len)?).map_err(|_| CountsError::Malformed("video_id not UTF-8"))?;
        if crate::video_id::validate(video_id).is_err() {
            return Err(CountsError::Malformed("invalid video_id"));
        }
        let salt = Salt(u16::from_be_bytes(r.array()?));
        let minute = i64::from_be_bytes(r.array()?);
        let count = r.u32()?;
        deltas.push(Delta { video_id: video_id.to_owned(), salt, minute, count });
    }
    if r.pos != bytes.len() {
        return Err(CountsError::Malformed("trailing bytes"));
    }
    Ok(FlushChunk { header, deltas })
}

fn read_header(r: &mut Reader<'_>) -> Result<FlushHeader, CountsError> {
    let version = r.take(1)?[0];
    if version != COUNTS_VERSION {
        return Err(CountsError::UnsupportedVersion(version));
    }
    let header = FlushHeader {
        epoch: r.u32()?,
        source_partition: r.u32()?,
        start: r.i64()?,
        end: r.i64()?,
        chunk_index: r.u32()?,
        chunk_count: r.u32()?,
        dedup_horizon: r.i64()?,
        max_received_ms: r.i64()?,
        stats: FlushStats { read: r.u32()?, counted: r.u32()?, duplicates: r.u32()?, dead_lettered: r.u32()? },
    };
    if header.start > header.end || header.chunk_index >= header.chunk_count {
        return Err(CountsError::Malformed("inconsistent header"));
    }
    Ok(header)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CountsError> {
        let end =
            self.pos.checked_add(len).filter(|e| *e <= self.bytes.len()).ok_or(CountsError::Malformed("truncated"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CountsError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, CountsError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, CountsError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FlushHeader {
        FlushHeader {
            epoch: 2,
            source_partition: 3,
            start: 100,
            end: 250,
            chunk_index: 1,
            chunk_count: 2,
            dedup_horizon: 40,
            max_received_ms: 1_795_341_600_000,
            stats: FlushStats { read: 150, counted: 140, duplicates: 8, dead_lettered: 2 },
        }
    }

    #[test]
    fn chunks_round_trip() {
        let deltas = [("v1", Salt(0), 1_795_341_600_000, 7u32), ("v2", Salt(9), 1_795_341_660_000, 1)];
        let bytes = encode(&header(), deltas.iter().copied());
        let chunk = decode(&bytes).unwrap();
        assert_eq!(chunk.header, header());
        assert_eq!(decode_header(&bytes).unwrap(), header());
        assert_eq!(chunk.deltas.len(), 2);
        assert_eq!(
            chunk.deltas[1],
            Delta { video_id: "v2".into(), salt: Salt(9), minute: 1_795_341_660_000, count: 1 }
        );
        assert_eq!(bytes.len(), HEADER_LEN + 4 + encoded_delta_len("v1") + encoded_delta_len("v2"));
    }

    #[test]
    fn versions_order_by_epoch_then_end_offset() {
        let a = FlushHeader { epoch: 0, end: 1_000_000, ..header() };
        let b = FlushHeader { epoch: 0, end: 1_000_001, ..header() };
        let c = FlushHeader { epoch: 1, end: 5, ..header() };
        assert!(a.version() < b.version() && b.version() < c.version());
    }

    #[test]
    fn damaged_chunks_are_rejected() {
        let bytes = encode(&header(), [("v1", Salt(0), 0, 1u32)].into_iter());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut versioned = bytes.clone();
        versioned[0] = 7;
        assert_eq!(decode(&versioned), Err(CountsError::UnsupportedVersion(7)));
        let inverted = FlushHeader { start: 300, ..header() };
        assert!(decode(&encode(&inverted, std::iter::empty())).is_err());
    }
}
