//! Running a subcommand under one shutdown root.

use prometheus::Registry;
use tally_service::{Readiness, Supervisor};
use tokio_util::sync::CancellationToken;

use crate::cli::{Command, DlqAction, TopologyAction};
use crate::config::TallyConfig;
use crate::dlq_replay::{self, ReplayOptions};
use crate::services::{
    memory_cache, open_cache, open_store, reconcile_options, spawn_admin, spawn_admin_with_actions, spawn_archiver,
    spawn_counter, spawn_ingest, spawn_query, spawn_scheduled_reconcile, spawn_writer, Shared,
};
use crate::standalone;

/// Runs `command` until SIGTERM/Ctrl-C or a task fails; returns the exit code.
pub async fn run(command: Command, config: TallyConfig) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let token = CancellationToken::new();
    // Services listen for SIGTERM from the start: one that arrives while they
    // are still starting up drains what has started instead of killing them.
    let service = matches!(
        command,
        Command::Ingest
            | Command::Counter
            | Command::Writer
            | Command::Query
            | Command::Reconciler
            | Command::Standalone
            | Command::Broker
    );
    if service {
        listen_for_shutdown(token.clone());
    }
    let mut supervisor = Supervisor::new(token.clone());
    let registry = Registry::new();
    let readiness = Readiness::default();
    match command {
        Command::Config => {
            print!("{}", crate::config_show::redacted_toml(&config)?);
            return Ok(0);
        }
        Command::Dlq { action: DlqAction::Replay { topic, kind, dry_run } } => {
            let options = ReplayOptions {
                dlq_topic: topic.unwrap_or_else(|| config.kafka.topics.views_dlq.clone()),
                kind,
                dry_run,
            };
            let kafka = config.kafka.clone();
            let report = tokio::task::spawn_blocking(move || dlq_replay::replay(&kafka, &options)).await??;
            println!(
                "tally dlq replay: replayed {}, filtered out {}, duplicate copies {}, without provenance {}{}",
                report.replayed,
                report.filtered,
                report.duplicates,
                report.unroutable,
                if dry_run { " (dry run: nothing produced)" } else { "" }
            );
            return Ok(0);
        }
        Command::Topology { action: TopologyAction::Show } => return crate::topology::show(&config.kafka).await,
        Command::Topology { action: TopologyAction::Reset { new_views_epoch } } => {
            return crate::topology::reset(&config.kafka, new_views_epoch).await;
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
                "claims": folded.claims,
                "fenced_chunks": folded.fenced_chunks,
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
            let shared = Shared { config: &config, registry: &registry, readiness: &readiness };
            let addr = spawn_ingest(&mut supervisor, &shared).await?;
            let admin = spawn_admin(&mut supervisor, &shared, config.ingest.admin_listen).await?;
            println!("tally ingest: public API http://{addr}/v1/events");
            println!("tally ingest: admin http://{admin}/metrics");
        }
        Command::Counter => {
            let shared = Shared { config: &config, registry: &registry, readiness: &readiness };
            spawn_counter(&mut supervisor, &shared).await?;
            let admin = spawn_admin(&mut supervisor, &shared, config.counter.admin_listen).await?;
            println!("tally counter: admin http://{admin}/metrics");
        }
        Command::Writer => {
            let shared = Shared { config: &config, registry: &registry, readiness: &readiness };
            let store = open_store(&config).await?;
            let cache = open_cache(&config, None).await?;
            spawn_writer(&mut supervisor, &shared, store, cache).await?;
            let admin = spawn_admin(&mut supervisor, &shared, config.writer.admin_listen).await?;
            println!("tally writer: admin http://{admin}/metrics");
        }
        Command::Query => {
            let shared = Shared { config: &config, registry: &registry, readiness: &readiness };
            let store = open_store(&config).await?;
            let cache = open_cache(&config, None).await?;
            let addr = spawn_query(&mut supervisor, &shared, store, cache).await?;
            let admin = spawn_admin(&mut supervisor, &shared, config.query.admin_listen).await?;
            println!("tally query: public API http://{addr}/v1/videos/{{id}}/views");
            println!("tally query: admin http://{admin}/metrics");
        }
        Command::Reconciler => {
            let shared = Shared { config: &config, registry: &registry, readiness: &readiness };
            let store = open_store(&config).await?;
            let options = reconcile_options(&config)?;
            let archive = options.archive.describe();
            spawn_archiver(&mut supervisor, &shared)?;
            spawn_scheduled_reconcile(&mut supervisor, &shared, store.clone(), options.clone())?;
            let admin =
                spawn_admin_with_actions(&mut supervisor, &shared, config.reconciler.admin_listen, store, options)
                    .await?;
            println!("tally reconciler: archive {archive}");
            println!("tally reconciler: admin http://{admin}/metrics");
            println!("tally reconciler: admin actions http://{admin}/v1/admin/{{reconcile,dlq-replay}}");
        }
        Command::Reconcile { from, to, report } => {
            return reconcile_now(&config, &from, &to, report.as_deref()).await;
        }
        Command::Broker => {
            let (broker, origin) = standalone::start_broker(&config.standalone).await?;
            println!(
                "tally broker: Apache Kafka {} on 127.0.0.1:{} (data in {}{})",
                tally_servers::kafka::version(),
                config.standalone.broker_port,
                config.standalone.data_dir.display(),
                origin.note()
            );
            supervisor.spawn("broker", broker.clone().watch(supervisor.token()));
            let outcome = supervise(supervisor, config.shutdown.drain_timeout).await;
            broker.stop().await;
            return outcome;
        }
        Command::Standalone => {
            let mut config = config;
            standalone::prepare(&mut config)?;
            let (broker, origin) = standalone::start_broker(&config.standalone).await?;
            supervisor.spawn("broker", broker.clone().watch(supervisor.token()));
            let outcome = run_standalone(&config, origin, supervisor, &registry, &readiness).await;
            broker.stop().await;
            return outcome;
        }
    }
    supervise(supervisor, config.shutdown.drain_timeout).await
}

async fn run_standalone(
    config: &TallyConfig,
    origin: standalone::BrokerOrigin,
    mut supervisor: Supervisor,
    registry: &Registry,
    readiness: &Readiness,
) -> anyhow::Result<u8> {
    let shared = Shared { config, registry, readiness };
    let store = open_store(config).await?;
    let cache = open_cache(config, memory_cache()).await?;
    let ingest = spawn_ingest(&mut supervisor, &shared).await?;
    spawn_counter(&mut supervisor, &shared).await?;
    spawn_writer(&mut supervisor, &shared, store.clone(), cache.clone()).await?;
    let options = reconcile_options(config)?;
    spawn_archiver(&mut supervisor, &shared)?;
    spawn_scheduled_reconcile(&mut supervisor, &shared, store.clone(), options.clone())?;
    let query = spawn_query(&mut supervisor, &shared, store.clone(), cache).await?;
    let admin =
        spawn_admin_with_actions(&mut supervisor, &shared, config.standalone.admin_listen, store, options).await?;
    println!("tally standalone: ingest  http://{ingest}/v1/events");
    println!("tally standalone: query   http://{query}/v1/videos/{{id}}/views");
    println!("tally standalone: metrics http://{admin}/metrics");
    println!(
        "tally standalone: broker  127.0.0.1:{} (Apache Kafka {}; data in {}{})",
        config.standalone.broker_port,
        tally_servers::kafka::version(),
        config.standalone.data_dir.display(),
        origin.note()
    );
    supervise(supervisor, config.shutdown.drain_timeout).await
}

async fn supervise(supervisor: Supervisor, drain: std::time::Duration) -> anyhow::Result<u8> {
    match supervisor.run(drain).await {
        Ok(()) => Ok(0),
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            eprintln!("tally: {e}");
            Ok(e.exit_code())
        }
    }
}

/// Listens for SIGTERM and Ctrl-C from now on (the handlers are installed
/// before this returns): the first cancels `token`, a graceful drain; a
/// second exits at once with code 130.
fn listen_for_shutdown(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    tracing::info!("shutdown requested; draining (a second signal exits at once)");
                    token.cancel();
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    tracing::warn!("second shutdown signal; exiting without draining");
                    std::process::exit(130);
                });
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "cannot listen for shutdown signals"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}

fn parse_time(raw: &str) -> anyhow::Result<i64> {
    raw.parse::<i64>()
        .ok()
        .or_else(|| tally_model::timestamp::parse_rfc3339_ms(raw).ok())
        .ok_or_else(|| anyhow::anyhow!("{raw:?} is neither RFC 3339 nor epoch milliseconds"))
}

async fn reconcile_now(
    config: &TallyConfig,
    from: &str,
    to: &str,
    report: Option<&std::path::Path>,
) -> anyhow::Result<u8> {
    use std::io::Write as _;
    let (from, to) = (parse_time(from)?, parse_time(to)?);
    anyhow::ensure!(from < to, "--from must be before --to");
    let store = open_store(config).await?;
    let options = reconcile_options(config)?;
    let reconciled = tally_reconciler::reconcile::reconcile(&store, &options, from, to, None, |done, total| {
        let width = 30;
        let filled = width * done / total.max(1);
        eprint!("\rreconcile: [{}{}] {done}/{total} periods", "#".repeat(filled), ".".repeat(width - filled));
        let _ = std::io::stderr().flush();
    })
    .await?;
    eprintln!();
    let waiting = &reconciled.waiting_for_archive;
    if let Some((start, _)) = waiting.first() {
        let through = reconciled.archive.complete_through().unwrap_or_else(|| "nothing".to_owned());
        let behind =
            reconciled.archive.behind_partition.map_or_else(String::new, |p| format!(", partition {p} behind"));
        println!(
            "tally reconcile: {} closed periods from {} wait for the archive (complete through {through}{behind}); run again later",
            waiting.len(),
            tally_model::timestamp::format_rfc3339_ms(*start),
        );
    }
    let reports = reconciled.reports;
    if reports.is_empty() {
        if waiting.is_empty() {
            println!(
                "tally reconcile: no closed period in that range (a period closes {} after its end)",
                humantime_duration(config)
            );
        }
        return Ok(0);
    }
    println!("{:<22} {:>12} {:>12} {:>8}  drifting videos", "period (UTC)", "batch", "real time", "drift");
    for r in &reports {
        println!(
            "{:<22} {:>12} {:>12} {:>8}  {}",
            &tally_model::timestamp::format_rfc3339_ms(r.start_ms)[..16],
            r.batch_views,
            r.realtime_views,
            r.drift,
            r.drifting_videos.len()
        );
    }
    let drift: i64 = reports.iter().map(|r| r.drift).sum();
    println!("tally reconcile: {} periods, total drift {drift} (batch counts now serve those periods)", reports.len());
    if let Some(path) = report {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
        println!("tally reconcile: report written to {}", path.display());
    }
    Ok(0)
}

fn humantime_duration(config: &TallyConfig) -> String {
    format!("{} s", config.counter.allowed_lateness.as_secs())
}
