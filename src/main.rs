//! `tally`: thin entry point; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tally::cli::Cli;
use tally::config::TallyConfig;

/// mimalloc, built to override `malloc` for the whole process: librdkafka
/// allocates and frees one operation per consumed record on two different
/// threads, which glibc's allocator serialises on an arena lock (the
/// counter's CPU per record drops by about a seventh, see BENCHMARKS.md).
/// Built without transparent huge pages (`no_thp`): librdkafka's per-record
/// churn made the kernel zero whole 2 MiB pages over and over, a sixth of
/// the counter's CPU (BENCHMARKS.md, "mimalloc without transparent huge pages").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long blocked threads may hold the exit up after the services stopped.
const SHUTDOWN_AT_MOST: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match TallyConfig::load(cli.config.as_deref(), &cli.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tally: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("tally: invalid configuration: {e}");
        return ExitCode::from(1);
    }
    tally_service::logging::init(&config.log);
    // Dropped after the runtime: the last spans are exported then.
    let _tracing = match tally_service::traces::init(&config.traces, &cli.command.service_name()) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("tally: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tally: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(tally::run::run(cli.command, config));
    // The drain budget has been spent: a thread still blocked in a client
    // (a consumer waiting for an absent coordinator) must not keep the
    // process alive past it.
    runtime.shutdown_timeout(SHUTDOWN_AT_MOST);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tally: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 6 when a service refused to start because the Kafka topics break what
/// exactly-once counting assumes (`tally_kafka::topology`), else 1.
fn exit_code(error: &anyhow::Error) -> u8 {
    use tally_kafka::topology::{TopologyError, REFUSED_EXIT_CODE};
    let refused = error.chain().any(|e| e.downcast_ref::<TopologyError>().is_some_and(TopologyError::is_refusal));
    if refused {
        REFUSED_EXIT_CODE
    } else {
        1
    }
}
