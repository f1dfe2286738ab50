//! The batch layer: a Parquet archive of the raw events and the recount of
//! closed periods from it.
//!
//! # Layout
//!
//! - [`archive`]: the archiver (`tally archiver`): layout, Parquet I/O, service.
//! - [`recount`]: views per `(video, minute)` of a period, from the archive, by the counter's own rule.
//! - [`distinct`]: the exact distinct viewers of the views a recount counted, per video, hour and day.
//! - [`coverage`]: how far the archive is complete, so that only fully archived periods are recounted.
//! - [`reconcile`]: closed periods recounted, compared, written to the batch layer, drift reported.

pub mod archive;
pub mod coverage;
pub mod distinct;
pub mod reconcile;
pub mod recount;

pub use archive::service::{ArchiverConfig, ArchiverService};
