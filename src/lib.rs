//! The `tally` binary: every Tally service as a subcommand.
//!
//! # Layout
//!
//! - [`cli`]: flags and subcommands.
//! - [`config`]: [`TallyConfig`](config::TallyConfig), the whole configuration.
//! - [`run`]: wiring services, their admin servers and the shutdown root.

pub mod cli;
pub mod config;
pub mod run;
