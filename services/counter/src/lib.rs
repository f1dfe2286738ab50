//! The counter: `tally.views` → deduplicated per-minute deltas on
//! `tally.counts`, exactly once, without broker transactions.
//!
//! # How exactly-once works here
//!
//! Each source partition is counted in contiguous offset ranges
//! `[start, end)`. A flush emits one delta per `(video_id, salt, minute)` of
//! the range, versioned `(epoch, end)`, to the counts partition
//! `source % counts_partitions`, and the input offset `end` is committed only
//! once every record of the flush is acknowledged (stored at once, committed
//! in the background, and synchronously on revoke and shutdown). After a crash or
//! rebalance, the new owner reads the tail of that counts partition: ranges
//! emitted but not committed are re-emitted exactly (same boundaries, same
//! deltas, same versions), and the dedup window is rebuilt from the log, so
//! its state is the same as before. The writer applies a delta to a row only
//! if its version is newer than the row's, so replays change nothing.
//!
//! # Zombies
//!
//! A counter frozen past its session (a long GC-like pause, a stopped VM)
//! may wake up and emit a range its successor is already counting. Before
//! taking a partition over, a counter therefore writes a claim with a fresh
//! owner token to the counts partition and reads the tail only up to it;
//! every chunk carries its owner's token, and the writer drops chunks whose
//! owner a later claim superseded ([`tally_model::counts::fence`]).
//!
//! # What it assumes of the topics
//!
//! Versions are `(epoch, end offset)` of the views topic, and source
//! partition `p` lives in counts partition `p % n`: the partition counts and
//! the identity of both topics must not change under the counter, and the
//! counts topic must be kept at least as long as the views topic. The
//! counter checks both at start against the topology recorded at the first
//! start (`tally_kafka::topology`), which also gives the views epoch, and
//! refuses to start when they changed.
//!
//! # Layout
//!
//! - [`config`]: the `[counter]` section.
//! - [`service`]: [`CounterService::build`] and [`CounterService::run`].
//! - [`worker`]: the consumer thread: polls, hands records over in batches, resumes paused partitions.
//! - [`processor`]: the processing thread: counts batches, seals flushes, commits, pauses.
//! - [`shared`]: state of both threads, rebalance callbacks, stale-record marks.
//! - [`lag`]: consumer lag, measured on a thread of its own; [`lag_probe`]: what it asks the broker.
//! - [`ownership`]: a partition's life in this counter: owned, draining, released.
//! - [`partition`]: one partition's open range; classification of records.
//! - [`viewers`]: the unique-viewer sketches of an open range, per video, salt and hour.
//! - [`trending`]: a flush's frequent-items sketch per minute it touched (trending videos).
//! - [`aggregate`]: pre-aggregation. The counting rule (lateness, the
//!   deterministic dedup window) is `tally_model::counting`, shared with the batch recount.
//! - [`emitter`]: producing flushes and dead letters until acknowledged.
//! - [`claim`]: claiming a partition before taking it over (the zombie fence).
//! - [`commits`]: committing acknowledged ends off the processing thread; judging commit failures.
//! - [`recovery`]: taking over a partition from the log.
//! - [`outcomes`]: what became of each record read, tallied for the metrics.
//! - [`dlq`]: dead letters with provenance, and the halt limit.
//! - [`verify`]: folds the counts topic as the writer would (tests, audits).
//! - [`metrics`]: the counter's Prometheus metrics.

pub mod aggregate;
pub mod claim;
pub mod commits;
pub mod config;
pub mod dlq;
pub mod emitter;
pub mod lag;
pub mod lag_probe;
pub mod metrics;
pub mod outcomes;
pub mod ownership;
pub mod partition;
pub mod processor;
pub mod recovery;
pub mod service;
pub mod shared;
pub mod trending;
pub mod verify;
pub mod viewers;
pub mod worker;

pub use config::CounterConfig;
pub use service::{CounterError, CounterService};
