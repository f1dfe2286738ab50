//! Starting each service under the supervisor, as one process or several.

use std::time::Duration;

use anyhow::Context as _;
use prometheus::Registry;
use tally_cache::{CacheBackend, MemoryCache, RedisCache};
use tally_counter::CounterService;
use tally_ingest::IngestService;
use tally_query::QueryService;
use tally_service::{admin, serve, Readiness, Supervisor};
use tally_store::{AnyStore, ScyllaStore, SqliteStore};
use tally_writer::WriterService;

use crate::config::{StoreBackend, TallyConfig};

/// What every service shares in one process.
pub struct Shared<'a> {
    /// The whole configuration.
    pub config: &'a TallyConfig,
    /// Metrics of every service in the process.
    pub registry: &'a Registry,
    /// Readiness of every service in the process.
    pub readiness: &'a Readiness,
}

/// Starts the admin server on `addr`; returns its address.
pub async fn spawn_admin(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<std::net::SocketAddr> {
    spawn_admin_with(supervisor, shared, addr, None).await
}

/// [`spawn_admin`] with the admin actions over `store` and the archive of `options` mounted too.
pub async fn spawn_admin_with_actions(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    addr: std::net::SocketAddr,
    store: AnyStore,
    options: tally_reconciler::reconcile::ReconcileOptions,
) -> anyhow::Result<std::net::SocketAddr> {
    let c = shared.config;
    let actions = crate::admin_actions::AdminActions::new(&c.admin, store, options, c.kafka.clone());
    spawn_admin_with(supervisor, shared, addr, Some(actions.router())).await
}

async fn spawn_admin_with(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    addr: std::net::SocketAddr,
    extra: Option<axum::Router>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = serve::bind(addr, "admin").await?;
    let bound = listener.local_addr()?;
    let mut router = admin::router(shared.registry.clone(), shared.readiness.clone());
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    supervisor.spawn("admin", serve::serve(listener, router, supervisor.token()));
    Ok(bound)
}

/// Starts the gateway; returns its public address.
pub async fn spawn_ingest(supervisor: &mut Supervisor, shared: &Shared<'_>) -> anyhow::Result<std::net::SocketAddr> {
    let c = shared.config;
    let ingest = IngestService::build(&c.ingest, &c.kafka, shared.registry, shared.readiness)
        .await
        .context("Failed to start the ingest gateway")?;
    let addr = ingest.local_addr();
    supervisor.spawn("ingest", ingest.run(supervisor.token()));
    Ok(addr)
}

/// Starts the counter.
pub async fn spawn_counter(supervisor: &mut Supervisor, shared: &Shared<'_>) -> anyhow::Result<()> {
    let c = shared.config;
    let counter = CounterService::build(&c.counter, &c.kafka, shared.registry, shared.readiness)
        .await
        .context("Failed to start the counter")?;
    // The counter's own drain ends a second before the supervisor's deadline.
    let drain = c.shutdown.drain_timeout.saturating_sub(Duration::from_secs(1)).max(Duration::from_secs(1));
    supervisor.spawn("counter", counter.run(supervisor.token(), drain));
    Ok(())
}

/// Opens the configured store: the embedded SQLite file or the ScyllaDB cluster.
pub async fn open_store(config: &TallyConfig) -> anyhow::Result<AnyStore> {
    match config.store.backend {
        StoreBackend::Sqlite => {
            let path = &config.store.sqlite_path;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("Failed to create {}", dir.display()))?;
            }
            let store = SqliteStore::open_with(path, config.store.sqlite_synchronous)
                .with_context(|| format!("Failed to open the store at {}", path.display()))?;
            Ok(AnyStore::Sqlite(store))
        }
        StoreBackend::Scylla => {
            let scylla = &config.store.scylla;
            let store = ScyllaStore::connect(scylla.clone()).await.with_context(|| {
                format!("Failed to connect to ScyllaDB at {} (keyspace {})", scylla.nodes.join(","), scylla.keyspace)
            })?;
            Ok(AnyStore::Scylla(store))
        }
    }
}

/// The configured cache: Redis when a URL is set, else `fallback`.
pub async fn open_cache(config: &TallyConfig, fallback: Option<CacheBackend>) -> anyhow::Result<Option<CacheBackend>> {
    if config.cache.redis_url.is_empty() {
        return Ok(fallback);
    }
    let redis = RedisCache::connect(&config.cache.redis_url, config.cache.redis_timeout)
        .await
        .context("Failed to connect to Redis")?;
    Ok(Some(CacheBackend::Redis(redis)))
}

/// Starts the writer.
pub async fn spawn_writer(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    store: AnyStore,
    cache: Option<CacheBackend>,
) -> anyhow::Result<()> {
    let c = shared.config;
    let writer = WriterService::build(&c.writer, &c.kafka, store, cache, shared.registry, shared.readiness)
        .await
        .context("Failed to start the writer")?;
    supervisor.spawn("writer", writer.run(supervisor.token()));
    Ok(())
}

/// Starts the query service; returns its public address.
pub async fn spawn_query(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    store: AnyStore,
    cache: Option<CacheBackend>,
) -> anyhow::Result<std::net::SocketAddr> {
    let c = shared.config;
    let query = QueryService::build(&c.query, store, cache, shared.registry, shared.readiness)
        .await
        .context("Failed to start the query service")?;
    let addr = query.local_addr();
    supervisor.spawn("query", query.run(supervisor.token()));
    Ok(addr)
}

/// An in-process cache for a single process.
pub fn memory_cache() -> Option<CacheBackend> {
    Some(CacheBackend::Memory(MemoryCache::default()))
}

/// How long to wait for a freshly started broker.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the archiver.
pub fn spawn_archiver(supervisor: &mut Supervisor, shared: &Shared<'_>) -> anyhow::Result<()> {
    let c = shared.config;
    let archiver = tally_reconciler::ArchiverService::build(&c.archiver, &c.kafka, shared.registry)
        .context("Failed to start the archiver")?;
    supervisor.spawn("archiver", archiver.run(supervisor.token()));
    Ok(())
}

/// The reconcile options of the configuration.
pub fn reconcile_options(config: &TallyConfig) -> anyhow::Result<tally_reconciler::reconcile::ReconcileOptions> {
    let a = &config.archiver;
    let archive =
        tally_reconciler::archive::storage::ArchiveStorage::from_config(&a.dir, &a.url, &a.object_store_options)
            .context("Failed to open the archive")?;
    let counter = &config.counter;
    Ok(tally_reconciler::reconcile::ReconcileOptions {
        archive,
        counting: counter.counting_rule(),
        lookback: counter.dedup_window + 2 * counter.max_clock_skew + config.ingest.max_future_skew,
        late_lookahead: config.reconciler.late_lookahead,
        views: tally_reconciler::coverage::ViewsLog::Kafka(Box::new(config.kafka.clone())),
        in_flight: config.ingest.delivery_timeout,
    })
}

/// Starts the scheduled recount: every interval, the gaps between reconciled
/// periods, then the closed periods after the last one
/// ([`tally_reconciler::reconcile::pending`]).
pub fn spawn_scheduled_reconcile(
    supervisor: &mut Supervisor,
    shared: &Shared<'_>,
    store: AnyStore,
    options: tally_reconciler::reconcile::ReconcileOptions,
) -> anyhow::Result<()> {
    use tally_store::CountStore as _;
    let metrics = tally_reconciler::reconcile::ReconcileMetrics::register(shared.registry)?;
    let interval = shared.config.reconciler.interval;
    let lookback = i64::try_from(shared.config.reconciler.first_lookback.as_millis()).unwrap_or(i64::MAX);
    let token = supervisor.token();
    supervisor.spawn("reconciler", async move {
        loop {
            let now = tally_model::timestamp::now_ms();
            let ranges = match store.periods().await {
                Ok(periods) => tally_reconciler::reconcile::pending(&periods, now, lookback),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read reconciled periods; retrying later");
                    Vec::new()
                }
            };
            for (from, to) in ranges {
                match tally_reconciler::reconcile::reconcile(&store, &options, from, to, Some(&metrics), |_, _| {})
                    .await
                {
                    Ok(reconciled) => {
                        for r in reconciled.reports {
                            tracing::info!(
                                start = r.start_ms,
                                batch = r.batch_views,
                                realtime = r.realtime_views,
                                drift = r.drift,
                                "period reconciled"
                            );
                        }
                        // The archive does not reach further yet: later ranges wait too.
                        if !reconciled.waiting_for_archive.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile failed; retrying next interval");
                        break;
                    }
                }
            }
            tokio::select! {
                () = token.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    });
    Ok(())
}
