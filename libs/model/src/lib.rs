//! The view-event model shared by every Tally service.
//!
//! A view event says "video X was watched at time T"; this crate owns everything
//! that must agree between the gateway that accepts events and the services
//! that count them.
//!
//! # Layout
//!
//! - [`video_id`]: the validated video identifier.
//! - [`event`]: [`ViewEvent`], the validated event, and its identifier [`EventId`].
//! - [`timestamp`]: event-time parsing (RFC 3339 or epoch milliseconds) and minute buckets.
//! - [`parse`]: request bodies (one object, an array, NDJSON) to events, all-or-nothing,
//!   with per-index errors.
//! - [`wire`]: the versioned binary record format of the `tally.views` topic.
//! - [`counting`]: the counting rule (lateness, dedup window) the counter and the batch recount share.
//! - [`counts`]: the versioned record format of the `tally.counts` topic (counter flushes).
//! - [`salt`]: partition keys, hot videos salted by event id (the rule that keeps a retry's partition).
//! - [`hot`]: the heavy-hitter detector that reports at run time which videos are hot (it never salts).
//! - [`hash`]: the stable hash every process must agree on.
//! - [`uniques`]: unique-viewer sketches (DataSketches HLL): building, merging, estimating.
//! - [`trending`]: per-minute frequent-items sketches (DataSketches) and the candidates of a top list.
//! - [`viewer`]: viewer pseudonyms (the keyed hash the gateway applies to `viewer_id`).

pub mod counting;
pub mod counts;
pub mod event;
pub mod hash;
pub mod hot;
pub mod parse;
pub mod salt;
pub mod timestamp;
pub mod trending;
pub mod uniques;
pub mod video_id;
pub mod viewer;
pub mod wire;

pub use event::{EventId, ViewEvent};
pub use parse::{parse_events, BodyFormat, EventError, Limits, ParseFailure};
pub use salt::{PartitionKey, Salt, SaltPolicy, SaltingConfig};
pub use video_id::VideoId;
