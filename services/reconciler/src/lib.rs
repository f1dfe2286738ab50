//! The batch layer: a Parquet archive of the raw events and the recount of
//! closed periods from it.
//!
//! # Layout
//!
//! - [`archive`]: the archiver (`tally archiver`): layout, Parquet I/O, service.
//! - [`recount`]: distinct views per `(video, minute)` of a period, from the archive.

pub mod archive;
pub mod recount;

pub use archive::service::{ArchiverConfig, ArchiverService};
