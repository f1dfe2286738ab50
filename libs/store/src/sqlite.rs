//! The embedded store: SQLite through rusqlite (bundled library), WAL mode.
//! A batch of chunks, its versions, its rollups and the owners its claims
//! moved commit in one transaction, durably by default ([`Synchronous`]).
//! Reads follow [`crate::layers`]: batch counts for the reconciled periods,
//! real-time counts for every other minute, in one read transaction.
//! Unique-viewer sketches live in tables of their own (`uniques`), applied in
//! the same transaction as the counts, and so do trending sketches (`trending`).

mod trending;
mod uniques;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tally_model::counts::{FlushChunk, Owner};

use crate::fence::{admit, token_from_db, token_to_db};
use crate::layers::{self, Reconciled, Segment, FAR_FUTURE, FAR_PAST};
use crate::model::{ApplyOutcome, CountsEntry, Granularity, PeriodSummary, PeriodUniques, Point, Total, UniquesRead};
use crate::{CountStore, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS minute_counts (
    video_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    salt INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    views INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (video_id, minute, salt, source_partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    video_id TEXT NOT NULL,
    granularity INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    views INTEGER NOT NULL,
    PRIMARY KEY (video_id, granularity, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_minute_counts (
    video_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    views INTEGER NOT NULL,
    PRIMARY KEY (video_id, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_totals (
    video_id TEXT PRIMARY KEY,
    views INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_periods (
    start_ms INTEGER PRIMARY KEY,
    end_ms INTEGER NOT NULL,
    batch_views INTEGER NOT NULL,
    realtime_views INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_generation (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    epoch INTEGER NOT NULL,
    source_partition INTEGER NOT NULL,
    max_received_ms INTEGER NOT NULL,
    PRIMARY KEY (epoch, source_partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_owners (
    source_partition INTEGER PRIMARY KEY,
    owner INTEGER NOT NULL,
    claim_offset INTEGER NOT NULL
);
";

/// Rollup granularities as stored; `TOTAL` has one bucket, 0.
const HOUR: i64 = Granularity::Hour.code() as i64;
const DAY: i64 = Granularity::Day.code() as i64;
const TOTAL: i64 = 3;

/// How the embedded store's commits reach the disk (SQLite's `synchronous`
/// in WAL mode), setting `store.sqlite-synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Synchronous {
    /// Every commit is on disk (fsync of the WAL) before it returns. The
    /// writer commits its Kafka offsets right after the store's commit, so
    /// only this keeps an acknowledged batch through an OS crash or a power
    /// loss. The default.
    #[default]
    Full,
    /// Commits return before the WAL is synced (synced at checkpoints):
    /// faster commits, and still safe against a crash of the process, but an
    /// OS crash or a power loss can roll back the last commits while their
    /// offsets are already committed: those counts are lost for good. Only
    /// for data you can recount.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, committing durably.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Synchronous::default())
    }

    /// Opens the database at `path` with the given commit durability.
    pub fn open_with(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(unavailable)?;
        Self::init(connection, synchronous)
    }

    /// A private in-memory database (tests, benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(unavailable)?, Synchronous::default())
    }

    fn init(connection: Connection, synchronous: Synchronous) -> Result<Self, StoreError> {
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA busy_timeout = 5000;",
                synchronous.pragma()
            ))
            .map_err(unavailable)?;
        connection.execute_batch(SCHEMA).map_err(unavailable)?;
        connection.execute_batch(uniques::SCHEMA).map_err(unavailable)?;
        connection.execute_batch(trending::SCHEMA).map_err(unavailable)?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// The connection's `PRAGMA synchronous` (0 off, 1 normal, 2 full, 3 extra).
    pub async fn synchronous(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("PRAGMA synchronous", [], |row| row.get(0)).map_err(unavailable)).await
    }

    async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn read_owners(connection: &Connection) -> Result<Vec<(u32, Owner)>, StoreError> {
    let mut select = connection
        .prepare_cached("SELECT source_partition, owner, claim_offset FROM source_owners")
        .map_err(unavailable)?;
    let rows = select
        .query_map([], |row| {
            let owner = Owner { owner: token_from_db(row.get(1)?), claim_offset: row.get(2)? };
            Ok((row.get::<_, u32>(0)?, owner))
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

fn apply_entries(connection: &mut Connection, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
    // Immediate: the owners read here must not change before this transaction commits.
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
    let admitted = admit(read_owners(&tx)?, entries);
    let outcome = apply_chunks(&tx, &admitted.chunks)?
        .plus(uniques::apply(&tx, &admitted.chunks)?)
        .plus(trending::apply(&tx, &admitted.chunks)?);
    {
        let mut upsert_owner = tx
            .prepare_cached(
                "INSERT INTO source_owners (source_partition, owner, claim_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source_partition) DO UPDATE SET owner = excluded.owner, claim_offset = excluded.claim_offset",
            )
            .map_err(unavailable)?;
        for (partition, owner) in &admitted.owners {
            upsert_owner
                .execute(params![partition, token_to_db(owner.owner), owner.claim_offset])
                .map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(outcome.plus(admitted.fenced))
}

fn apply_chunks(tx: &rusqlite::Transaction<'_>, chunks: &[FlushChunk]) -> Result<ApplyOutcome, StoreError> {
    let mut outcome = ApplyOutcome::default();
    {
        let mut upsert_minute = tx
            .prepare_cached(
                "INSERT INTO minute_counts (video_id, minute, salt, source_partition, views, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (video_id, minute, salt, source_partition) DO UPDATE
                 SET views = views + excluded.views, version = excluded.version
                 WHERE minute_counts.version < excluded.version",
            )
            .map_err(unavailable)?;
        let mut upsert_rollup = tx
            .prepare_cached(
                "INSERT INTO rollups (video_id, granularity, bucket, views) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (video_id, granularity, bucket) DO UPDATE SET views = views + excluded.views",
            )
            .map_err(unavailable)?;
        let mut progress = tx
            .prepare_cached(
                "INSERT INTO progress (epoch, source_partition, max_received_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (epoch, source_partition) DO UPDATE
                 SET max_received_ms = max(max_received_ms, excluded.max_received_ms)",
            )
            .map_err(unavailable)?;
        for chunk in chunks {
            let h = chunk.header;
            let version = h.version();
            for delta in &chunk.deltas {
                let changed = upsert_minute
                    .execute(params![
                        delta.video_id,
                        delta.minute,
                        delta.salt.0,
                        h.source_partition,
                        delta.count,
                        version
                    ])
                    .map_err(unavailable)?;
                if changed == 0 {
                    outcome.stale += 1;
                    continue;
                }
                outcome.applied += 1;
                for (granularity, bucket) in [
                    (HOUR, Granularity::Hour.bucket(delta.minute)),
                    (DAY, Granularity::Day.bucket(delta.minute)),
                    (TOTAL, 0),
                ] {
                    upsert_rollup
                        .execute(params![delta.video_id, granularity, bucket, delta.count])
                        .map_err(unavailable)?;
                }
            }
            if h.max_received_ms > 0 {
                progress.execute(params![h.epoch, h.source_partition, h.max_received_ms]).map_err(unavailable)?;
            }
        }
    }
    Ok(outcome)
}

fn as_of(connection: &Connection) -> Result<i64, StoreError> {
    // Counts include everything received up to the slowest partition's progress.
    connection
        .query_row(
            "SELECT min(max_received_ms) FROM progress WHERE epoch = (SELECT max(epoch) FROM progress)",
            [],
            |row| row.get::<_, Option<i64>>(0),
        )
        .map(Option::unwrap_or_default)
        .map_err(unavailable)
}

/// The reconciled periods and the batch generation.
fn reconciled(connection: &Connection) -> Result<(Reconciled, i64), StoreError> {
    let mut select = connection.prepare_cached("SELECT start_ms, end_ms FROM batch_periods").map_err(unavailable)?;
    let periods: Vec<(i64, i64)> = select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(unavailable)?
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let generation: Option<i64> = connection
        .query_row("SELECT generation FROM batch_generation WHERE id = 0", [], |row| row.get(0))
        .optional()
        .map_err(unavailable)?;
    Ok((Reconciled::new(periods), generation.unwrap_or(0)))
}

/// Real-time `(bucket, views)` rows of `video` in one segment (salts and
/// source partitions merged for minutes; rollups are stored merged).
fn realtime_rows(connection: &Connection, video: &str, segment: Segment) -> Result<Vec<(i64, i64)>, StoreError> {
    let (sql, granularity) = match segment.granularity {
        Granularity::Minute => (
            "SELECT minute, sum(views) FROM minute_counts WHERE video_id = ?1 AND minute >= ?2 AND minute < ?3
             AND ?4 = ?4 GROUP BY minute",
            0,
        ),
        Granularity::Hour | Granularity::Day => (
            "SELECT bucket, views FROM rollups WHERE video_id = ?1 AND bucket >= ?2 AND bucket < ?3
             AND granularity = ?4",
            if segment.granularity == Granularity::Hour { HOUR } else { DAY },
        ),
    };
    let mut query = connection.prepare_cached(sql).map_err(unavailable)?;
    let rows = query
        .query_map(params![video, segment.from, segment.to, granularity], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(unavailable)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
}

/// Batch `(minute, views)` rows of `video` in `[from, to)`.
fn batch_rows(connection: &Connection, video: &str, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut query = connection
        .prepare_cached(
            "SELECT minute, views FROM batch_minute_counts WHERE video_id = ?1 AND minute >= ?2 AND minute < ?3",
        )
        .map_err(unavailable)?;
    let rows = query.query_map(params![video, from, to], |row| Ok((row.get(0)?, row.get(1)?))).map_err(unavailable)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
}

fn read_totals(connection: &mut Connection, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
    // One read transaction: a snapshot, whatever other processes commit meanwhile.
    let tx = connection.transaction().map_err(unavailable)?;
    let as_of_ms = as_of(&tx)?;
    let (reconciled, batch_generation) = reconciled(&tx)?;
    let realtime_ranges: Vec<Segment> = reconciled
        .outside(FAR_PAST, FAR_FUTURE)
        .into_iter()
        .flat_map(|(from, to)| layers::segments(from, to, Granularity::Day))
        .collect();
    let mut realtime_total = tx
        .prepare_cached("SELECT views FROM rollups WHERE video_id = ?1 AND granularity = ?2 AND bucket = 0")
        .map_err(unavailable)?;
    let mut batch_total =
        tx.prepare_cached("SELECT views FROM batch_totals WHERE video_id = ?1").map_err(unavailable)?;
    let mut out = Vec::with_capacity(videos.len());
    for video_id in videos {
        let (realtime, batch_views) = if reconciled.is_empty() {
            let views: Option<i64> =
                realtime_total.query_row(params![video_id, TOTAL], |row| row.get(0)).optional().map_err(unavailable)?;
            (views.unwrap_or(0), 0)
        } else {
            let mut realtime = 0;
            for segment in &realtime_ranges {
                realtime += realtime_rows(&tx, &video_id, *segment)?.iter().map(|r| r.1).sum::<i64>();
            }
            let batch: Option<i64> =
                batch_total.query_row(params![video_id], |row| row.get(0)).optional().map_err(unavailable)?;
            (realtime, batch.unwrap_or(0))
        };
        out.push(Total {
            video_id,
            views: batch_views + realtime,
            as_of_ms,
            batch_views,
            exact_through_ms: reconciled.exact_through(),
            batch_generation,
        });
    }
    Ok(out)
}

fn read_series(
    connection: &mut Connection,
    video: &str,
    (from, to): (i64, i64),
    step: Granularity,
) -> Result<Vec<Point>, StoreError> {
    let tx = connection.transaction().map_err(unavailable)?;
    let (reconciled, _) = reconciled(&tx)?;
    let mut buckets: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for (a, b) in reconciled.outside(from, to) {
        for segment in layers::segments(a, b, step) {
            for (bucket, views) in realtime_rows(&tx, video, segment)? {
                *buckets.entry(step.bucket(bucket)).or_default() += views;
            }
        }
    }
    for (a, b) in reconciled.inside(from, to) {
        for (minute, views) in batch_rows(&tx, video, a, b)? {
            *buckets.entry(step.bucket(minute)).or_default() += views;
        }
    }
    Ok(buckets
        .into_iter()
        .filter(|(_, views)| *views != 0)
        .map(|(bucket_ms, views)| Point { bucket_ms, views })
        .collect())
}

impl CountStore for SqliteStore {
    async fn apply(&self, entries: Vec<CountsEntry>) -> Result<ApplyOutcome, StoreError> {
        self.with(move |c| apply_entries(c, entries)).await
    }

    async fn owners(&self) -> Result<Vec<(u32, Owner)>, StoreError> {
        self.with(|c| read_owners(c)).await
    }

    async fn totals(&self, videos: Vec<String>) -> Result<Vec<Total>, StoreError> {
        self.with(move |c| read_totals(c, videos)).await
    }

    async fn realtime_minutes(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.with(move |c| {
            let mut query = c
                .prepare_cached(
                    "SELECT video_id, minute, sum(views) FROM minute_counts WHERE minute >= ?1 AND minute < ?2
                     GROUP BY video_id, minute ORDER BY video_id, minute",
                )
                .map_err(unavailable)?;
            let rows = query
                .query_map(params![from_ms, to_ms], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn replace_batch(
        &self,
        period: PeriodSummary,
        minutes: Vec<(String, i64, i64)>,
        counted: Option<PeriodUniques>,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
            {
                let stored: Vec<(i64, i64)> = tx
                    .prepare_cached("SELECT start_ms, end_ms FROM batch_periods")
                    .map_err(unavailable)?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                layers::check_period(period.start_ms, period.end_ms, &minutes, &stored)?;
                // Take the period's previous batch counts out of the totals, then put the new ones in.
                let mut old = tx
                    .prepare_cached(
                        "SELECT video_id, sum(views) FROM batch_minute_counts WHERE minute >= ?1 AND minute < ?2 GROUP BY video_id",
                    )
                    .map_err(unavailable)?;
                let previous: Vec<(String, i64)> = old
                    .query_map(params![period.start_ms, period.end_ms], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                let mut adjust = tx
                    .prepare_cached(
                        "INSERT INTO batch_totals (video_id, views) VALUES (?1, ?2)
                         ON CONFLICT (video_id) DO UPDATE SET views = views + excluded.views",
                    )
                    .map_err(unavailable)?;
                for (video, views) in previous {
                    adjust.execute(params![video, -views]).map_err(unavailable)?;
                }
                tx.execute(
                    "DELETE FROM batch_minute_counts WHERE minute >= ?1 AND minute < ?2",
                    params![period.start_ms, period.end_ms],
                )
                .map_err(unavailable)?;
                let mut insert = tx
                    .prepare_cached("INSERT INTO batch_minute_counts (video_id, minute, views) VALUES (?1, ?2, ?3)")
                    .map_err(unavailable)?;
                for (video, minute, views) in &minutes {
                    insert.execute(params![video, minute, views]).map_err(unavailable)?;
                    adjust.execute(params![video, views]).map_err(unavailable)?;
                }
                if let Some(counted) = &counted {
                    uniques::replace_batch(&tx, &period, counted)?;
                }
                tx.execute(
                    "INSERT INTO batch_periods (start_ms, end_ms, batch_views, realtime_views) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (start_ms) DO UPDATE SET end_ms = excluded.end_ms,
                     batch_views = excluded.batch_views, realtime_views = excluded.realtime_views",
                    params![period.start_ms, period.end_ms, period.batch_views, period.realtime_views],
                )
                .map_err(unavailable)?;
                tx.execute(
                    "INSERT INTO batch_generation (id, generation) VALUES (0, 1)
                     ON CONFLICT (id) DO UPDATE SET generation = generation + 1",
                    [],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn uniques(&self, video: String, from_ms: i64, to_ms: i64) -> Result<UniquesRead, StoreError> {
        let (from, to) = layers::series_range(from_ms, to_ms, Granularity::Hour)?;
        self.with(move |c| uniques::read(c, &video, from, to)).await
    }

    async fn trending(&self, from_ms: i64, to_ms: i64) -> Result<tally_model::trending::Merged, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.with(move |c| trending::read(c, from, to)).await
    }

    async fn trending_versions(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<crate::trending::RowVersion>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.with(move |c| trending::read_versions(c, from, to)).await
    }

    async fn trending_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<crate::trending::TrendingRow>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.with(move |c| trending::read_rows(c, from, to)).await
    }

    async fn window_views(
        &self,
        videos: Vec<String>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let (from, to) = crate::trending::window(from_ms, to_ms)?;
        self.with(move |c| trending::window_views(c, videos, from, to)).await
    }

    async fn periods(&self) -> Result<Vec<PeriodSummary>, StoreError> {
        self.with(|c| {
            let mut query = c
                .prepare_cached(
                    "SELECT start_ms, end_ms, batch_views, realtime_views FROM batch_periods ORDER BY start_ms",
                )
                .map_err(unavailable)?;
            let rows = query
                .query_map([], |row| {
                    Ok(PeriodSummary {
                        start_ms: row.get(0)?,
                        end_ms: row.get(1)?,
                        batch_views: row.get(2)?,
                        realtime_views: row.get(3)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn series(
        &self,
        video: String,
        from_ms: i64,
        to_ms: i64,
        step: Granularity,
    ) -> Result<Vec<Point>, StoreError> {
        let range = layers::series_range(from_ms, to_ms, step)?;
        self.with(move |c| read_series(c, &video, range, step)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &SqliteStore) -> i64 {
        let connection = store.connection.lock().unwrap();
        connection.query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn a_store_file_commits_durably_by_default() {
        // The writer commits Kafka offsets right after the store's commit:
        // that commit must survive an OS crash or a power loss (FULL = 2).
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("counts.db")).unwrap();
        assert_eq!(synchronous(&store), 2, "PRAGMA synchronous must be FULL");
    }
}
