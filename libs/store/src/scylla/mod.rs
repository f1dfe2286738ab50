//! The ScyllaDB / Apache Cassandra store (the `scylla` driver): prepared
//! statements, token-aware routing (the driver's default policy routes a
//! prepared statement to a replica of its partition), bounded concurrency,
//! and versioned absolute writes; no counter columns.
//!
//! # How a flush is applied without transactions
//!
//! All of a video's real-time rows live in one partition of `view_counts`
//! (minute rows plus hour, day and all-time rollups, each per source
//! partition of `tally.views`). For every chunk and video the store reads the
//! rows it will touch, decides the new absolute values ([`plan`]), and writes
//! them in one single-partition batch (atomic and isolated on each replica)
//! with the flush version as the cell timestamp. A minute row whose stored
//! version is already the flush's is skipped, and rollups move by exactly the
//! applied minute rows, in the same batch: a replay, a re-emission after a
//! counter crash or a writer retry after a timeout changes nothing. Updates of
//! one (video, source partition) run in log order; others run concurrently.
//!
//! Fencing: the owners of source partitions live in `source_owners`. A
//! batch reads them, folds its claims and chunks in log order
//! ([`crate::fence`]), applies the admitted chunks, and only then writes the
//! owners its claims moved (cell timestamp = claim offset + 1, so the latest
//! claim wins whatever the order of writes). A crash in between leaves the
//! old owners, and the replayed batch folds the same way.
//!
//! Reads and writes use one consistency level (`local-quorum` by default), so
//! a read after a completed write sees it. The remaining window, two writers
//! owning one counts partition at once during a rebalance, is bounded by the
//! cell timestamps: a stale writer's values lose to newer versions.
//!
//! Retries: the driver's default retry policy retries idempotent requests
//! inside `request-timeout`; everything else surfaces as
//! [`StoreError::Unavailable`] or [`StoreError::Invalid`]. The writer retries
//! a batch that failed with `Unavailable` with exponential backoff
//! (`writer.retry-initial-backoff` up to `writer.retry-max-backoff`) for as
//! long as it takes, one batch at a time; there is no circuit breaker that
//! sheds or short-circuits requests (its `tally_writer_breaker_state` gauge
//! only says 2 while it backs off). `Invalid` is never retried: the writer stops.
//!
//! Reads follow [`crate::layers`]: batch counts for exactly the reconciled
//! periods (the rows of a period count once its `batch_periods` row, written
//! last, is there), real-time rollups for every other minute.
//!
//! # Layout
//!
//! - [`config`]: `[store.scylla]` settings.
//! - [`durability`]: whether the cluster can forget acknowledged counts
//!   (one replica, periodic commit log), warned about at connect.
//! - [`schema`]: `infra/scylla/schema.cql`, applied on request.
//! - [`plan`]: what an update writes, as pure functions.
//! - `apply.rs`: the write path; `reads.rs`: totals, series, `as_of`;
//!   `uniques.rs`: unique-viewer sketch rows (`video_uniques`);
//!   `trending.rs`: trending sketch rows (`trending_minutes`), window views;
//!   `batch_layer.rs`: the reconciler's tables.

mod apply;
mod batch_layer;
pub mod config;
pub mod durability;
pub mod plan;
mod reads;
pub mod schema;
mod trending;
mod uniques;

use std::sync::Arc;

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Statement;
use tally_model::counts::Owner;

pub use self::config::{ConsistencyLevel, ScyllaConfig};
pub use self::durability::Durability;
use crate::model::{ApplyOutcome, CountsEntry, Granularity, PeriodSummary, PeriodUniques, Point, Total, UniquesRead};
use crate::{CountStore, StoreError};

/// The ScyllaDB store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    statements: Statements,
    uniques: uniques::UniquesStatements,
    trending: trending::TrendingStatements,
    config: ScyllaConfig,
    /// What the cluster said about durability when the store connected.
    durability: Durability,
    /// `(hour, video)` pairs already written to `videos_by_hour` by this process.
    indexed: std::sync::Mutex<std::collections::HashSet<(i64, String)>>,
    /// Last batch-layer generation timestamp handed out (microseconds).
    generation: std::sync::atomic::AtomicI64,
}

/// Every statement, prepared once.
struct Statements {
    read_minutes: PreparedStatement,
    read_rollups: PreparedStatement,
    write_row: PreparedStatement,
    index_video: PreparedStatement,
    write_progress: PreparedStatement,
    read_progress: PreparedStatement,
    write_owner: PreparedStatement,
    read_owners: PreparedStatement,
    read_totals: PreparedStatement,
    read_minutes_from: PreparedStatement,
    read_series: PreparedStatement,
    read_hour_videos: PreparedStatement,
    read_reconciled: PreparedStatement,
    read_batch_by_video: PreparedStatement,
    read_batch_minutes: PreparedStatement,
    read_period_videos: PreparedStatement,
    delete_period_minutes: PreparedStatement,
    write_batch_minute: PreparedStatement,
    delete_batch_by_video: PreparedStatement,
    write_batch_by_video: PreparedStatement,
    write_period: PreparedStatement,
    read_periods: PreparedStatement,
}

/// A schema change waits until every node has applied it, and DROP KEYSPACE
/// snapshots every table first: on a busy node either takes longer than a
/// data request may (`store.scylla.request-timeout`), and giving up early
/// leaves the change half-announced, so they get a timeout of their own.
const SCHEMA_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn schema_change(text: String) -> Statement {
    let mut statement = Statement::new(text);
    statement.set_request_timeout(Some(SCHEMA_CHANGE_TIMEOUT));
    statement
}

/// Shards of `videos_by_hour`.
const INDEX_SHARDS: i16 = 16;

/// Bound on the `(hour, video)` pairs remembered as indexed.
const INDEXED_MEMORY: usize = 1 << 20;

fn from_execution(e: ExecutionError) -> StoreError {
    let invalid = match &e {
        ExecutionError::BadQuery(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
        ),
        _ => false,
    };
    if invalid {
        StoreError::Invalid(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl ScyllaStore {
    /// Connects, applies the schema when configured to, and prepares every statement.
    pub async fn connect(config: ScyllaConfig) -> Result<Self, StoreError> {
        if config.nodes.is_empty() {
            return Err(StoreError::Invalid("store.scylla.nodes is empty".into()));
        }
        if !config.keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || config.keyspace.is_empty() {
            return Err(StoreError::Invalid(format!("invalid keyspace name {:?}", config.keyspace)));
        }
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if !config.local_datacenter.is_empty() {
            policy = policy.prefer_datacenter(config.local_datacenter.clone()).permit_dc_failover(true);
        }
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency.to_driver())
            .request_timeout(Some(config.request_timeout))
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if !config.username.is_empty() {
            builder = builder.user(config.username.clone(), config.password.expose().to_owned());
        }
        let session = builder.build().await.map_err(unavailable)?;
        if config.create_schema {
            for statement in schema::statements(&config.keyspace, &config.replication) {
                session.query_unpaged(schema_change(statement), ()).await.map_err(from_execution)?;
            }
            session.await_schema_agreement().await.map_err(unavailable)?;
        }
        let statements = Statements::prepare(&session, &config.keyspace).await?;
        let uniques = uniques::UniquesStatements::prepare(&session, &config.keyspace).await?;
        let trending = trending::TrendingStatements::prepare(&session, &config.keyspace).await?;
        let durability = Durability::read(&session, &config.keyspace).await;
        if let Some(risk) = durability.risk(&config.keyspace) {
            tracing::warn!("{risk}");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                statements,
                uniques,
                trending,
                config,
                durability,
                indexed: std::sync::Mutex::new(std::collections::HashSet::new()),
                generation: std::sync::atomic::AtomicI64::new(0),
            }),
        })
    }

    /// What the contacted node and the keyspace said about durability at connect.
    pub fn durability(&self) -> &Durability {
        &self.inner.durability
    }

    /// Drops the keyspace (contract tests clean up after themselves).
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        let statement = format!("DROP KEYSPACE IF EXISTS {}", self.inner.config.keyspace);
        self.inner.session.query_unpaged(schema_change(statement), ()).await.map_err(from_execution)?;
        Ok(())
    }

    /// Runs a prepared statement that returns no rows.
    async fn run(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<(), StoreError> {
        self.inner.session.execute_unpaged(statement, values).await.map_err(from_execution)?;
        Ok(())
    }

    /// Every row of a prepared select, page by page.
    async fn select<R>(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
    {
        let pager = self.inner.session.execute_iter(statement.clone(), values).await.map_err(unavailable)?;
        pager
            .rows_stream::<R>()
            .map_err(|e| StoreError::Invalid(e.to_string()))?
            .try_collect()
            .await
            .map_err(unavailable)
    }
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| async move {
            let mut statement = session.prepare(cql).await.map_err(unavailable)?;
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        let columns = "video_id, granularity, bucket, salt, source_partition, views, version";
        Ok(Self {
            read_minutes: prepare(format!(
                "SELECT bucket, salt, source_partition, views, version FROM {ks}.view_counts \
                 WHERE video_id = ? AND granularity = 0 AND bucket >= ? AND bucket <= ?"
            ))
            .await?,
            read_rollups: prepare(format!(
                "SELECT granularity, bucket, source_partition, views FROM {ks}.view_counts \
                 WHERE video_id = ? AND granularity IN (1, 2, 3) AND bucket IN ?"
            ))
            .await?,
            write_row: prepare(format!(
                "INSERT INTO {ks}.view_counts ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?"
            ))
            .await?,
            index_video: prepare(format!("INSERT INTO {ks}.videos_by_hour (hour, shard, video_id) VALUES (?, ?, ?)"))
                .await?,
            write_progress: prepare(format!(
                "INSERT INTO {ks}.progress (scope, epoch, source_partition, max_received_ms) \
                 VALUES ('all', ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            read_progress: prepare(format!(
                "SELECT epoch, source_partition, max_received_ms FROM {ks}.progress WHERE scope = 'all'"
            ))
            .await?,
            write_owner: prepare(format!(
                "INSERT INTO {ks}.source_owners (scope, source_partition, owner, claim_offset) \
                 VALUES ('all', ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            read_owners: prepare(format!(
                "SELECT source_partition, owner, claim_offset FROM {ks}.source_owners WHERE scope = 'all'"
            ))
            .await?,
            read_totals: prepare(format!(
                "SELECT views FROM {ks}.view_counts WHERE video_id = ? AND granularity = 3 AND bucket = 0"
            ))
            .await?,
            read_minutes_from: prepare(format!(
                "SELECT bucket, views FROM {ks}.view_counts WHERE video_id = ? AND granularity = 0 \
                 AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            read_series: prepare(format!(
                "SELECT bucket, views FROM {ks}.view_counts WHERE video_id = ? AND granularity = ? \
                 AND bucket >= ? AND bucket < ?"
            ))
            .await?,
            read_hour_videos: prepare(format!("SELECT video_id FROM {ks}.videos_by_hour WHERE hour = ? AND shard = ?"))
                .await?,
            read_reconciled: prepare(format!(
                "SELECT start_ms, end_ms, writetime(end_ms) FROM {ks}.batch_periods WHERE scope = 'all'"
            ))
            .await?,
            read_batch_by_video: prepare(format!(
                "SELECT period_start, views FROM {ks}.batch_by_video WHERE video_id = ? \
                 AND period_start >= ? AND period_start < ?"
            ))
            .await?,
            read_batch_minutes: prepare(format!(
                "SELECT minute, views FROM {ks}.batch_minutes WHERE period_start = ? AND video_id = ?"
            ))
            .await?,
            read_period_videos: prepare(format!(
                "SELECT video_id, minute FROM {ks}.batch_minutes WHERE period_start = ?"
            ))
            .await?,
            delete_period_minutes: prepare(format!(
                "DELETE FROM {ks}.batch_minutes USING TIMESTAMP ? WHERE period_start = ?"
            ))
            .await?,
            write_batch_minute: prepare(format!(
                "INSERT INTO {ks}.batch_minutes (period_start, video_id, minute, views) VALUES (?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            delete_batch_by_video: prepare(format!(
                "DELETE FROM {ks}.batch_by_video USING TIMESTAMP ? WHERE video_id = ? AND period_start = ?"
            ))
            .await?,
            write_batch_by_video: prepare(format!(
                "INSERT INTO {ks}.batch_by_video (video_id, period_start, views) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            write_period: prepare(format!(
                "INSERT INTO {ks}.batch_periods (scope, start_ms, end_ms, batch_views, realtime_views) \
                 VALUES ('all', ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            read_periods: prepare(format!(
                "SELECT start_ms, end_ms, batch_views, realtime_views FROM {ks}.batch_periods WHERE scope = 'all'"
            ))
            .await?,
        })
    }
}

impl CountStore for ScyllaStore {
    async fn apply(&self, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
        self.apply_entries(entries).await
    }

    async fn owners(&self) -> Result<Vec<(u32, Owner)>, StoreError> {
        self.read_owners().await
    }

    async fn totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        self.read_totals(videos).await
    }

    async fn series(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
        step: Granularity,
    ) -> Result<Vec<Point>, StoreError> {
        self.read_series(video, from_ms, to_ms, step).await
    }

    async fn realtime_minutes(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.read_realtime_minutes(from_ms, to_ms).await
    }

    async fn replace_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        uniques: Option<PeriodUniques>,
    ) -> Result<(), StoreError> {
        self.write_batch(period, minutes, uniques).await
    }

    async fn uniques(&self, video: String, from_ms: i64, to_ms: i64) -> Result<UniquesRead, StoreError> {
        let (from, to) = crate::layers::series_range(from_ms, to_ms, Granularity::Hour)?;
        self.read_uniques(&video, from, to).await
    }

    async fn trending(&self, from_ms: i64, to_ms: i64) -> Result<tally_model::trending::Merged, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.read_trending(from, to).await
    }

    async fn trending_versions(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<crate::trending::RowVersion>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.read_trending_versions(from, to).await
    }

    async fn trending_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<crate::trending::TrendingRow>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.read_trending_rows(from, to).await
    }

    async fn window_views(
        &self,
        videos: Vec<String>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.read_window_views(videos, from, to).await
    }

    async fn periods(&self) -> Result<Vec<PeriodSummary>, StoreError> {
        self.read_periods().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map_err(from_execution)?;
        Ok(())
    }
}
