//! Command-line interface: global flags and one subcommand per service.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tally counts video views at internet scale.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about)]
pub struct Cli {
    /// TOML configuration file (layered over the built-in defaults, under
    /// `TALLY_*` environment variables and `--set` flags).
    #[arg(long, short, global = true, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set ingest.listen=0.0.0.0:8080`; repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The services and tools.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The HTTP ingest gateway: POST /v1/events onto the views topic.
    Ingest,
    /// The counter: views topic -> deduplicated per-minute deltas on the counts topic.
    Counter,
    /// The writer: counts topic -> the store, with cache write-through.
    Writer,
    /// The query API: GET /v1/videos/{id}/views and friends.
    Query,
    /// The batch layer: the Parquet archiver plus the scheduled recount of closed periods.
    Reconciler,
    /// Recount closed periods of `[from, to)` from the archive now, write the
    /// batch layer and report the drift.
    Reconcile {
        /// Start (RFC 3339 or epoch ms).
        #[arg(long)]
        from: String,
        /// End, exclusive (RFC 3339 or epoch ms).
        #[arg(long)]
        to: String,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Every service in one process on embedded defaults: a managed Apache Kafka
    /// broker, the embedded store, an in-process cache (or Redis when configured).
    Standalone,
    /// Only the Apache Kafka broker `standalone` manages (data under
    /// `standalone.data-dir`, port `standalone.broker-port`), in the
    /// foreground until SIGTERM/Ctrl-C: for running the services as separate
    /// processes on one machine, and for the load-test scripts.
    Broker,
    /// Fold the counts topic as the writer would and print totals per video (JSON).
    VerifyCounts {
        /// Print at most this many videos (the largest totals first); 0 = all.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Print the effective configuration after all layers, then exit.
    Config,
    /// Dead-letter tools.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The recorded topology of the views and counts topics (partition
    /// counts, Kafka topic ids), which every counter and writer checks at start.
    Topology {
        /// What to do.
        #[command(subcommand)]
        action: TopologyAction,
    },
}

impl Command {
    /// The `service.name` of its spans (`tally-counter`, ...).
    pub fn service_name(&self) -> String {
        let name = match self {
            Self::Ingest => "ingest",
            Self::Counter => "counter",
            Self::Writer => "writer",
            Self::Query => "query",
            Self::Reconciler | Self::Reconcile { .. } => "reconciler",
            Self::Standalone => "standalone",
            Self::Broker => "broker",
            Self::VerifyCounts { .. } | Self::Config | Self::Dlq { .. } | Self::Topology { .. } => "tool",
        };
        format!("tally-{name}")
    }
}

/// Topology actions.
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Print the recorded topology, the topics as the broker shows them now,
    /// and what differs (exit code 6 when something does).
    Show,
    /// Record the topics as the broker shows them now, accepting a
    /// deliberate change. Stop every counter and writer first.
    Reset {
        /// Start a new views epoch even if the views topic is the same one
        /// (after a truncated log; the epoch goes up by itself when the views
        /// topic was recreated).
        #[arg(long)]
        new_views_epoch: bool,
    },
}

/// Dead-letter actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Re-inject dead letters into the topic they came from (after fixing the cause).
    Replay {
        /// The dead-letter topic; default: the views dead-letter topic of the configuration.
        #[arg(long)]
        topic: Option<String>,
        /// Only this kind: `late` or `malformed`.
        #[arg(long)]
        kind: Option<String>,
        /// Count what would be replayed; produce and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
