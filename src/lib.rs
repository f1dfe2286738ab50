//! The `tally` binary: every Tally service as a subcommand.
//!
//! # Layout
//!
//! - [`admin_actions`]: reconcile and dead-letter replay over HTTP, behind admin keys.
//! - [`cli`]: flags and subcommands.
//! - [`config`]: [`TallyConfig`](config::TallyConfig), the whole configuration.
//! - [`config_show`]: `tally config`, the effective configuration as TOML, secrets redacted.
//! - [`run`]: dispatching a subcommand under the shutdown root.
//! - [`dlq_replay`]: `tally dlq replay`.
//! - [`services`]: starting each service (alone or together).
//! - [`standalone`]: the managed broker and single-process wiring of `tally standalone`.
//! - [`topology`]: `tally topology show` and `reset`.

pub mod admin_actions;
pub mod cli;
pub mod config;
pub mod config_show;
pub mod dlq_replay;
pub mod run;
pub mod services;
pub mod standalone;
pub mod topology;
