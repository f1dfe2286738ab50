//! The record format of the `tally.counts` topic, version 3: the counter's
//! flushes, and the claims that fence a partition's earlier owners.
//!
//! A flush covers a contiguous offset range `[start, end)` of one source
//! partition of `tally.views` and holds one delta per `(video_id, salt,
//! minute)` counted in that range, and one sketch of the viewers per
//! `(video_id, salt, hour)` ([`crate::uniques`]) and, per minute it touched,
//! one frequent-items sketch of its views per video ([`crate::trending`]). Big flushes are split into
//! chunks; each chunk carries the whole flush header, so any record says
//! which range it belongs to. A chunk's aggregates travel in typed sections
//! ([`codec`]), so a new aggregate needs a new section kind, not a new protocol.
//!
//! A claim is written by a counter when it takes a source partition over,
//! before it reads anything: "from this point of the counts partition on,
//! owner `owner` counts source partition `p`". Every chunk names the owner
//! that emitted it, and the writer drops chunks of an owner that a later
//! claim superseded ([`fence`]). That is what stops a zombie: a counter
//! frozen past its session (a GC pause, a stopped VM) that wakes up and
//! emits a range its successor is already counting.
//!
//! # Layout
//!
//! - this file: the records ([`FlushHeader`], [`FlushChunk`], [`Claim`], [`CountsRecord`]).
//! - [`codec`]: their bytes (all integers big-endian, a version byte first).
//! - [`fence`]: the fold that admits or fences chunks, shared by the writer and the verifier.

pub mod codec;
pub mod fence;

pub use codec::{
    decode, decode_head, encode, encode_chunk, encode_claim, encode_sections, encoded_delta_len,
    encoded_minute_sketch_len, encoded_sketch_len, CountsError, COUNTS_VERSION, HEADER_LEN, OLDEST_READ_VERSION,
};
pub use fence::{Admission, Fences, Owner};

use crate::salt::Salt;

/// Bits of a packed version given to the end offset.
const OFFSET_BITS: u32 = 48;

/// Which range of which source partition a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushHeader {
    /// Incarnation of the source topic.
    pub epoch: u32,
    /// Partition of `tally.views` the range is from.
    pub source_partition: u32,
    /// The owner that emitted it: the token of its [`Claim`].
    pub owner: u64,
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
    /// Newest receive time the dedup window saw up to `end` (a gateway's, at
    /// most the allowed clock skew ahead of the broker's: see [`crate::counting`]).
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

/// The viewers of one video in one hour, as far as one flush saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchDelta {
    /// The video.
    pub video_id: String,
    /// The salt its events were keyed with.
    pub salt: Salt,
    /// Start of the hour, epoch ms.
    pub hour: i64,
    /// The viewers' sketch (DataSketches HLL serialization).
    pub sketch: Vec<u8>,
}

/// The views of one minute per video, as far as one flush counted them
/// (salts merged), for trending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteSketch {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    /// The sketch (DataSketches frequent-items serialization of strings).
    pub sketch: Vec<u8>,
}

/// A decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushChunk {
    /// The flush it belongs to.
    pub header: FlushHeader,
    /// Its count deltas.
    pub deltas: Vec<Delta>,
    /// Its hourly unique-viewer sketches.
    pub uniques: Vec<SketchDelta>,
    /// Its per-minute trending sketches.
    pub trending: Vec<MinuteSketch>,
}

/// A counter taking a source partition over. Its position in the counts
/// partition orders it against every chunk: chunks of earlier owners that
/// come after it are fenced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    /// The source partition claimed.
    pub source_partition: u32,
    /// A token chosen at random by the claimant for this ownership; its chunks carry it.
    pub owner: u64,
    /// The source offset the claimant resumes from (its group's committed offset).
    pub resume_from: i64,
    /// When it claimed, epoch ms (for operators).
    pub claimed_at_ms: i64,
    /// Who claimed: host and process (for operators, at most 255 bytes).
    pub claimant: String,
}

/// Any record of the counts topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountsRecord {
    /// Deltas of one flush.
    Chunk(FlushChunk),
    /// A change of owner.
    Claim(Claim),
}

/// The cheap part of a record: a chunk's header, or a whole claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordHead {
    /// A chunk's header (its deltas not decoded).
    Chunk(FlushHeader),
    /// A claim.
    Claim(Claim),
}
