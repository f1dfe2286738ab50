//! Running a subcommand under one shutdown root.

use prometheus::Registry;
use tally_counter::CounterService;
use tally_ingest::IngestService;
use tally_service::{admin, serve, Readiness, Supervisor};
use tokio_util::sync::CancellationToken;

use crate::cli::Command;
use crate::config::TallyConfig;

/// Runs `command` until SIGTERM/Ctrl-C or a task fails; returns the exit code.
pub async fn run(command: Command, config: TallyConfig) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let token = CancellationToken::new();
    let mut supervisor = Supervisor::new(token.clone());
    let registry = Registry::new();
    let readiness = Readiness::default();
    match command {
        Command::Config => {
            println!("{config:#?}");
            return Ok(0);
        }
        Command::VerifyCounts { top } => {
            let kafka = config.kafka.clone();
            let folded = tokio::task::spawn_blocking(move || {
                tally_counter::verify::fold_counts(&kafka, &kafka.topics.counts, std::time::Duration::from_secs(600))
            })
            .await?
            .context("Failed to fold the counts topic")?;
            let mut totals: Vec<(&String, &i64)> = folded.totals.iter().collect();
            totals.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: serde_json::Map<String, serde_json::Value> = totals
                .into_iter()
                .take(if top == 0 { usize::MAX } else { top })
                .map(|(video, total)| (video.clone(), serde_json::Value::from(*total)))
                .collect();
            let report = serde_json::json!({
                "videos": folded.totals.len(),
                "views": folded.totals.values().sum::<i64>(),
                "rows": folded.rows,
                "chunks": folded.chunks,
                "stale_deltas": folded.stale_deltas,
                "repeated_flushes": folded.repeated_flushes,
                "overlaps": folded.overlaps,
                "undecodable": folded.undecodable,
                "totals": shown,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(if folded.overlaps.is_empty() { 0 } else { 2 });
        }
        Command::Ingest => {
            let ingest = IngestService::build(&config.ingest, &config.kafka, &registry, &readiness)
                .await
                .context("Failed to start the ingest gateway")?;
            let admin = serve::bind(config.ingest.admin_listen, "admin").await?;
            println!("tally ingest: public API http://{}/v1/events", ingest.local_addr());
            println!("tally ingest: admin http://{}/metrics", admin.local_addr()?);
            let t = token.clone();
            supervisor.spawn("ingest", ingest.run(t));
            supervisor.spawn("admin", serve::serve(admin, admin::router(registry, readiness), token.clone()));
        }
        Command::Counter => {
            let counter = CounterService::build(&config.counter, &config.kafka, &registry, &readiness)
                .await
                .context("Failed to start the counter")?;
            let admin = serve::bind(config.counter.admin_listen, "admin").await?;
            println!("tally counter: admin http://{}/metrics", admin.local_addr()?);
            supervisor.spawn("counter", counter.run(token.clone(), config.shutdown.drain_timeout));
            supervisor.spawn("admin", serve::serve(admin, admin::router(registry, readiness), token.clone()));
        }
    }
    tokio::spawn(shutdown_on_signal(token));
    match supervisor.run(config.shutdown.drain_timeout).await {
        Ok(()) => Ok(0),
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            eprintln!("tally: {e}");
            Ok(e.exit_code())
        }
    }
}

async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested; draining");
    token.cancel();
}
