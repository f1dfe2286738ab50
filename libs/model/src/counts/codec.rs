//! The bytes of counts records, format version 2. All integers big-endian.
//!
//! Every record starts with the format version (`2`) and a kind byte.
//!
//! A flush chunk (kind `0`):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | `epoch`: incarnation of the source topic (bumped when it is recreated) |
//! | 4 | `source_partition` |
//! | 8 | `owner`: token of the claim the emitting counter made |
//! | 8 | `start` offset (inclusive) |
//! | 8 | `end` offset (exclusive): with `epoch`, the version of every delta |
//! | 4 | `chunk_index`, 4 | `chunk_count` |
//! | 8 | `dedup_horizon`: oldest source offset the dedup state still needs at `end` |
//! | 8 | `max_received_ms`: newest gateway receive time seen at `end` |
//! | 4 × 4 | flush statistics: events read, counted, duplicates, dead-lettered (whole flush; chunk 0 only, 0 elsewhere) |
//! | 4 | number of deltas, then per delta: 1 + n `video_id`, 2 `salt`, 8 `minute` (epoch ms), 4 `count` |
//!
//! A claim (kind `1`): 4 `source_partition`, 8 `owner`, 8 `resume_from`,
//! 8 `claimed_at_ms`, 1 + n `claimant`.
//!
//! Version 1 (no owners, no claims) is refused: its records could not be fenced.

use super::{Claim, CountsRecord, Delta, FlushChunk, FlushHeader, FlushStats, RecordHead};
use crate::salt::Salt;

/// The version this build writes.
pub const COUNTS_VERSION: u8 = 2;

/// Bytes of an encoded chunk header (version and kind included).
pub const HEADER_LEN: usize = 74;

const KIND_CHUNK: u8 = 0;
const KIND_CLAIM: u8 = 1;

/// Why a counts record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountsError {
    /// Written by a format this build does not know.
    #[error("unsupported counts format version {0}")]
    UnsupportedVersion(u8),
    /// A record kind this build does not know.
    #[error("unknown counts record kind {0}")]
    UnknownKind(u8),
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
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + deltas.len() * 32);
    out.extend_from_slice(&[COUNTS_VERSION, KIND_CHUNK]);
    out.extend_from_slice(&header.epoch.to_be_bytes());
    out.extend_from_slice(&header.source_partition.to_be_bytes());
    out.extend_from_slice(&header.owner.to_be_bytes());
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

/// Encodes a claim (a claimant name longer than 255 bytes is cut at a character boundary).
pub fn encode_claim(claim: &Claim) -> Vec<u8> {
    let mut name = claim.claimant.as_str();
    while name.len() > usize::from(u8::MAX) {
        let mut cut = usize::from(u8::MAX);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = &name[..cut];
    }
    let mut out = Vec::with_capacity(2 + 28 + 1 + name.len());
    out.extend_from_slice(&[COUNTS_VERSION, KIND_CLAIM]);
    out.extend_from_slice(&claim.source_partition.to_be_bytes());
    out.extend_from_slice(&claim.owner.to_be_bytes());
    out.extend_from_slice(&claim.resume_from.to_be_bytes());
    out.extend_from_slice(&claim.claimed_at_ms.to_be_bytes());
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
    out
}

/// Decodes a chunk's header or a claim, not a chunk's deltas (cheap: for
/// scanning a partition's tail).
pub fn decode_head(bytes: &[u8]) -> Result<RecordHead, CountsError> {
    let mut r = Reader { bytes, pos: 0 };
    match read_kind(&mut r)? {
        KIND_CHUNK => Ok(RecordHead::Chunk(read_header(&mut r)?)),
        _ => Ok(RecordHead::Claim(read_claim(&mut r)?)),
    }
}

/// Decodes a whole record.
pub fn decode(bytes: &[u8]) -> Result<CountsRecord, CountsError> {
    let mut r = Reader { bytes, pos: 0 };
    let record = match read_kind(&mut r)? {
        KIND_CHUNK => {
            let header = read_header(&mut r)?;
            CountsRecord::Chunk(FlushChunk { header, deltas: read_deltas(&mut r)? })
        }
        _ => CountsRecord::Claim(read_claim(&mut r)?),
    };
    if r.pos != bytes.len() {
        return Err(CountsError::Malformed("trailing bytes"));
    }
    Ok(record)
}

fn read_kind(r: &mut Reader<'_>) -> Result<u8, CountsError> {
    let version = r.take(1)?[0];
    if version != COUNTS_VERSION {
        return Err(CountsError::UnsupportedVersion(version));
    }
    match r.take(1)?[0] {
        kind @ (KIND_CHUNK | KIND_CLAIM) => Ok(kind),
        other => Err(CountsError::UnknownKind(other)),
    }
}

fn read_header(r: &mut Reader<'_>) -> Result<FlushHeader, CountsError> {
    let header = FlushHeader {
        epoch: r.u32()?,
        source_partition: r.u32()?,
        owner: r.u64()?,
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

fn read_deltas(r: &mut Reader<'_>) -> Result<Vec<Delta>, CountsError> {
    let n = r.u32()? as usize;
    let mut deltas = Vec::with_capacity(n.min(r.bytes.len() / 15));
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
    Ok(deltas)
}

fn read_claim(r: &mut Reader<'_>) -> Result<Claim, CountsError> {
    let source_partition = r.u32()?;
    let owner = r.u64()?;
    let resume_from = r.i64()?;
    let claimed_at_ms = r.i64()?;
    let len = usize::from(r.take(1)?[0]);
    let claimant = std::str::from_utf8(r.take(len)?).map_err(|_| CountsError::Malformed("claimant not UTF-8"))?;
    Ok(Claim { source_partition, owner, resume_from, claimed_at_ms, claimant: claimant.to_owned() })
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

    fn u64(&mut self) -> Result<u64, CountsError> {
        Ok(u64::from_be_bytes(self.array()?))
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
            owner: 0xfeed_beef_0000_0001,
            start: 100,
            end: 250,
            chunk_index: 1,
            chunk_count: 2,
            dedup_horizon: 40,
            max_received_ms: 1_795_341_600_000,
            stats: FlushStats { read: 150, counted: 140, duplicates: 8, dead_lettered: 2 },
        }
    }

    fn chunk_of(record: CountsRecord) -> FlushChunk {
        match record {
            CountsRecord::Chunk(chunk) => chunk,
            CountsRecord::Claim(claim) => panic!("expected a chunk, got {claim:?}"),
        }
    }

    #[test]
    fn chunks_round_trip() {
        let deltas = [("v1", Salt(0), 1_795_341_600_000, 7u32), ("v2", Salt(9), 1_795_341_660_000, 1)];
        let bytes = encode(&header(), deltas.iter().copied());
        let chunk = chunk_of(decode(&bytes).unwrap());
        assert_eq!(chunk.header, header());
        assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Chunk(header()));
        assert_eq!(chunk.deltas.len(), 2);
        assert_eq!(
            chunk.deltas[1],
            Delta { video_id: "v2".into(), salt: Salt(9), minute: 1_795_341_660_000, count: 1 }
        );
        assert_eq!(bytes.len(), HEADER_LEN + 4 + encoded_delta_len("v1") + encoded_delta_len("v2"));
    }

    #[test]
    fn claims_round_trip_and_long_claimant_names_are_cut() {
        let claim = Claim {
            source_partition: 7,
            owner: u64::MAX - 3,
            resume_from: 12_345,
            claimed_at_ms: 1_795_341_600_000,
            claimant: "host-a/4242".into(),
        };
        let bytes = encode_claim(&claim);
        assert_eq!(decode(&bytes).unwrap(), CountsRecord::Claim(claim.clone()));
        assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Claim(claim.clone()));
        let long = Claim { claimant: "é".repeat(200), ..claim };
        let CountsRecord::Claim(decoded) = decode(&encode_claim(&long)).unwrap() else { panic!("not a claim") };
        assert_eq!(decoded.claimant, "é".repeat(127));
    }

    #[test]
    fn versions_order_by_epoch_then_end_offset() {
        let a = FlushHeader { epoch: 0, end: 1_000_000, ..header() };
        let b = FlushHeader { epoch: 0, end: 1_000_001, ..header() };
        let c = FlushHeader { epoch: 1, end: 5, ..header() };
        assert!(a.version() < b.version() && b.version() < c.version());
    }

    #[test]
    fn damaged_and_unknown_records_are_rejected() {
        let bytes = encode(&header(), [("v1", Salt(0), 0, 1u32)].into_iter());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut versioned = bytes.clone();
        versioned[0] = 1;
        assert_eq!(decode(&versioned), Err(CountsError::UnsupportedVersion(1)), "version 1 cannot be fenced");
        let mut kind = bytes.clone();
        kind[1] = 9;
        assert_eq!(decode(&kind), Err(CountsError::UnknownKind(9)));
        let inverted = FlushHeader { start: 300, ..header() };
        assert!(decode(&encode(&inverted, std::iter::empty())).is_err());
        let mut trailing = encode_claim(&Claim::default());
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(CountsError::Malformed("trailing bytes")));
    }
}
