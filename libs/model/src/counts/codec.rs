//! The bytes of counts records, format version 3. All integers big-endian.
//!
//! Every record starts with the format version (`3`) and a kind byte.
//!
//! A flush chunk (kind `0`): the header, then sections.
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
//! | sections | to the end of the record: 1 `kind`, 4 `length` (bytes of the body), body |
//!
//! Sections, each kind at most once per chunk, in any order:
//!
//! - kind `1`, count deltas: 4 `n`, then per delta 1 + n `video_id`, 2 `salt`,
//!   8 `minute` (epoch ms), 4 `count`.
//! - kind `2`, unique viewers per hour: 4 `n`, then per sketch 1 + n
//!   `video_id`, 2 `salt`, 8 `hour` (epoch ms), 4 + n the sketch (Apache
//!   DataSketches HLL serialization, see [`crate::uniques`]).
//! - kind `3`, views per minute for trending: 4 `n`, then per sketch 8
//!   `minute` (epoch ms), 4 + n the sketch of the flush's `(video, views)` of
//!   that minute, salts merged (Apache DataSketches frequent-items
//!   serialization of strings, see [`crate::trending`]); one per minute the
//!   flush touched, in exactly one chunk of the flush.
//!
//! A new aggregate (views by country, by device) is a new section kind: the
//! header, the versions, the fences and the re-emission stay as they are. A
//! reader refuses a section kind it does not know, as it refuses an unknown
//! version: skipping it would let the rows it feeds move past a range whose
//! values were never applied.
//!
//! A claim (kind `1`): 4 `source_partition`, 8 `owner`, 8 `resume_from`,
//! 8 `claimed_at_ms`, 1 + n `claimant`.
//!
//! Version 2 (the same header followed by the deltas alone, no section
//! framing) is still read, so a writer can be upgraded before the counters.
//! Version 1 (no owners, no claims) is refused: its records could not be fenced.

use super::{Claim, CountsRecord, Delta, FlushChunk, FlushHeader, FlushStats, MinuteSketch, RecordHead, SketchDelta};
use crate::salt::Salt;

/// The version this build writes.
pub const COUNTS_VERSION: u8 = 3;

/// The oldest version this build reads.
pub const OLDEST_READ_VERSION: u8 = 2;

/// Section of count deltas.
const SECTION_COUNTS: u8 = 1;
/// Section of hourly unique-viewer sketches.
const SECTION_UNIQUES_HOUR: u8 = 2;
/// Section of per-minute frequent-items sketches (trending).
const SECTION_TRENDING_MINUTE: u8 = 3;

/// Bytes of an encoded chunk header (version and kind included).
pub const HEADER_LEN: usize = 74;

const KIND_CHUNK: u8 = 0;
const KIND_CLAIM: u8 = 1;

/// Why a counts record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountsError {
    /// Written by a format this build does not know.
    #[error(
        "unsupported counts format version {0}: this build reads versions {OLDEST_READ_VERSION} to {COUNTS_VERSION} (a newer counter wrote it? upgrade this service)"
    )]
    UnsupportedVersion(u8),
    /// A chunk section this build does not know.
    #[error("unknown counts section kind {0} (an aggregate of a newer counter? upgrade this service)")]
    UnknownSection(u8),
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

/// Bytes a sketch takes on the wire.
pub fn encoded_sketch_len(video_id: &str, sketch: &[u8]) -> usize {
    1 + video_id.len() + 2 + 8 + 4 + sketch.len()
}

/// Bytes a trending sketch takes on the wire.
pub fn encoded_minute_sketch_len(sketch: &[u8]) -> usize {
    8 + 4 + sketch.len()
}

/// Encodes a chunk header followed by a section of `deltas` (no sketches).
pub fn encode<'a>(header: &FlushHeader, deltas: impl ExactSizeIterator<Item = (&'a str, Salt, i64, u32)>) -> Vec<u8> {
    encode_chunk(header, deltas, std::iter::empty())
}

/// Encodes a chunk of deltas and hourly sketches (no trending sketches).
pub fn encode_chunk<'a, 'b>(
    header: &FlushHeader,
    deltas: impl ExactSizeIterator<Item = (&'a str, Salt, i64, u32)>,
    sketches: impl ExactSizeIterator<Item = (&'b str, Salt, i64, &'b [u8])>,
) -> Vec<u8> {
    encode_sections(header, deltas, sketches, std::iter::empty())
}

/// Encodes a chunk: its header, a section of `deltas` when there are any,
/// a section of hourly `sketches` `(video_id, salt, hour, bytes)` when
/// there are any and a section of `trending` sketches `(minute, bytes)`
/// when there are any.
pub fn encode_sections<'a, 'b, 'c>(
    header: &FlushHeader,
    deltas: impl ExactSizeIterator<Item = (&'a str, Salt, i64, u32)>,
    sketches: impl ExactSizeIterator<Item = (&'b str, Salt, i64, &'b [u8])>,
    trending: impl ExactSizeIterator<Item = (i64, &'c [u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 10 + deltas.len() * 32);
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
    if deltas.len() > 0 {
        let section = open_section(&mut out, SECTION_COUNTS, deltas.len());
        for (video_id, salt, minute, count) in deltas {
            push_key(&mut out, video_id, salt, minute);
            out.extend_from_slice(&count.to_be_bytes());
        }
        close_section(&mut out, section);
    }
    if sketches.len() > 0 {
        let section = open_section(&mut out, SECTION_UNIQUES_HOUR, sketches.len());
        for (video_id, salt, hour, sketch) in sketches {
            push_key(&mut out, video_id, salt, hour);
            out.extend_from_slice(&u32::try_from(sketch.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(sketch);
        }
        close_section(&mut out, section);
    }
    if trending.len() > 0 {
        let section = open_section(&mut out, SECTION_TRENDING_MINUTE, trending.len());
        for (minute, sketch) in trending {
            out.extend_from_slice(&minute.to_be_bytes());
            out.extend_from_slice(&u32::try_from(sketch.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(sketch);
        }
        close_section(&mut out, section);
    }
    out
}

/// Writes a section's kind, a length to fill in and its item count; returns
/// where the length goes.
fn open_section(out: &mut Vec<u8>, kind: u8, items: usize) -> usize {
    out.push(kind);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&u32::try_from(items).unwrap_or(u32::MAX).to_be_bytes());
    at
}

fn close_section(out: &mut [u8], at: usize) {
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn push_key(out: &mut Vec<u8>, video_id: &str, salt: Salt, bucket: i64) {
    // Video ids are validated at 128 bytes at most.
    out.push(u8::try_from(video_id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(video_id.as_bytes());
    out.extend_from_slice(&salt.0.to_be_bytes());
    out.extend_from_slice(&bucket.to_be_bytes());
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
    match read_kind(&mut r)?.1 {
        KIND_CHUNK => Ok(RecordHead::Chunk(read_header(&mut r)?)),
        _ => Ok(RecordHead::Claim(read_claim(&mut r)?)),
    }
}

/// Decodes a whole record.
pub fn decode(bytes: &[u8]) -> Result<CountsRecord, CountsError> {
    let mut r = Reader { bytes, pos: 0 };
    let record = match read_kind(&mut r)? {
        (OLDEST_READ_VERSION, KIND_CHUNK) => {
            let header = read_header(&mut r)?;
            CountsRecord::Chunk(FlushChunk {
                header,
                deltas: read_deltas(&mut r)?,
                uniques: Vec::new(),
                trending: Vec::new(),
            })
        }
        (_, KIND_CHUNK) => {
            let header = read_header(&mut r)?;
            read_sections(&mut r, header)?
        }
        _ => CountsRecord::Claim(read_claim(&mut r)?),
    };
    if r.pos != bytes.len() {
        return Err(CountsError::Malformed("trailing bytes"));
    }
    Ok(record)
}

/// The version and the kind.
fn read_kind(r: &mut Reader<'_>) -> Result<(u8, u8), CountsError> {
    let version = r.take(1)?[0];
    if !(OLDEST_READ_VERSION..=COUNTS_VERSION).contains(&version) {
        return Err(CountsError::UnsupportedVersion(version));
    }
    match r.take(1)?[0] {
        kind @ (KIND_CHUNK | KIND_CLAIM) => Ok((version, kind)),
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

fn read_sections(r: &mut Reader<'_>, header: FlushHeader) -> Result<CountsRecord, CountsError> {
    let mut chunk = FlushChunk { header, deltas: Vec::new(), uniques: Vec::new(), trending: Vec::new() };
    let mut seen = Vec::new();
    while r.pos < r.bytes.len() {
        let kind = r.take(1)?[0];
        let len = r.u32()? as usize;
        if seen.contains(&kind) {
            return Err(CountsError::Malformed("a section kind repeated"));
        }
        seen.push(kind);
        let mut body = Reader { bytes: r.take(len)?, pos: 0 };
        match kind {
            SECTION_COUNTS => chunk.deltas = read_deltas(&mut body)?,
            SECTION_UNIQUES_HOUR => chunk.uniques = read_sketches(&mut body)?,
            SECTION_TRENDING_MINUTE => chunk.trending = read_minute_sketches(&mut body)?,
            other => return Err(CountsError::UnknownSection(other)),
        }
        if body.pos != body.bytes.len() {
            return Err(CountsError::Malformed("section longer than its items"));
        }
    }
    Ok(CountsRecord::Chunk(chunk))
}

fn read_deltas(r: &mut Reader<'_>) -> Result<Vec<Delta>, CountsError> {
    let n = r.u32()? as usize;
    let mut deltas = Vec::with_capacity(n.min(r.bytes.len() / 15));
    for _ in 0..n {
        let (video_id, salt, minute) = read_key(r)?;
        let count = r.u32()?;
        deltas.push(Delta { video_id, salt, minute, count });
    }
    Ok(deltas)
}

fn read_sketches(r: &mut Reader<'_>) -> Result<Vec<SketchDelta>, CountsError> {
    let n = r.u32()? as usize;
    let mut sketches = Vec::with_capacity(n.min(r.bytes.len() / 16));
    for _ in 0..n {
        let (video_id, salt, hour) = read_key(r)?;
        if hour.rem_euclid(3_600_000) != 0 {
            return Err(CountsError::Malformed("sketch hour not on an hour"));
        }
        let len = r.u32()? as usize;
        let sketch = r.take(len)?.to_vec();
        // Checked here, so that a damaged sketch is dead-lettered with its record.
        crate::uniques::deserialize(&sketch).map_err(|_| CountsError::Malformed("sketch is not an HLL sketch"))?;
        sketches.push(SketchDelta { video_id, salt, hour, sketch });
    }
    Ok(sketches)
}

fn read_minute_sketches(r: &mut Reader<'_>) -> Result<Vec<MinuteSketch>, CountsError> {
    let n = r.u32()? as usize;
    let mut sketches = Vec::with_capacity(n.min(r.bytes.len() / 12));
    for _ in 0..n {
        let minute = r.i64()?;
        if minute.rem_euclid(60_000) != 0 {
            return Err(CountsError::Malformed("trending minute not on a minute"));
        }
        let len = r.u32()? as usize;
        let sketch = r.take(len)?.to_vec();
        // Checked here, so that a damaged sketch is dead-lettered with its record.
        crate::trending::deserialize(&sketch)
            .map_err(|_| CountsError::Malformed("trending sketch is not a frequent-items sketch"))?;
        sketches.push(MinuteSketch { minute, sketch });
    }
    Ok(sketches)
}

fn read_key(r: &mut Reader<'_>) -> Result<(String, Salt, i64), CountsError> {
    let len = usize::from(r.take(1)?[0]);
    let video_id = std::str::from_utf8(r.take(len)?).map_err(|_| CountsError::Malformed("video_id not UTF-8"))?;
    if crate::video_id::validate(video_id).is_err() {
        return Err(CountsError::Malformed("invalid video_id"));
    }
    let salt = Salt(u16::from_be_bytes(r.array()?));
    let bucket = i64::from_be_bytes(r.array()?);
    Ok((video_id.to_owned(), salt, bucket))
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
mod tests;
