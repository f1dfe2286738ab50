//! Trending windows summed from cached hour sums
//! ([`tally_store::trending::hours`]), on both stores: the answer of a
//! 24-hour window equals the uncached one, closed hours are reused while
//! their rows are unchanged, and a late flush to a cached hour is in the
//! next answer.

mod support;

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use support::in_cassandra;
use tally_model::counts::{Delta, FlushChunk, FlushHeader, MinuteSketch};
use tally_model::trending;
use tally_model::Salt;
use tally_store::trending::hours::{top_cached, HourCache, HourStats};
use tally_store::trending::top;
use tally_store::{CountStore, CountsEntry, SqliteStore};

const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z, an hour boundary
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const VIDEOS: usize = 100_000;

/// The window the tests ask for: 24 hours starting mid-hour, so it has a
/// partial first hour, 23 closed hours and an open last hour.
const FROM: i64 = T0 + 30 * MIN;
const TO: i64 = FROM + DAY;
const CLOSED_HOURS: u64 = 23;

/// One flush of `views` in `minute`, its trending sketch as a counter builds it.
fn flush(partition: u32, end: i64, views_in_flush: i64, minute: i64, views: &BTreeMap<String, u32>) -> CountsEntry {
    let sketch =
        trending::sketch_of(trending::DEFAULT_LG_MAX_MAP_SIZE, views.iter().map(|(v, n)| (v.as_str(), u64::from(*n))))
            .unwrap();
    CountsEntry::chunk(FlushChunk {
        header: FlushHeader {
            source_partition: partition,
            start: end - views_in_flush,
            end,
            chunk_count: 1,
            ..FlushHeader::default()
        },
        deltas: views.iter().map(|(v, n)| Delta { video_id: v.clone(), salt: Salt(0), minute, count: *n }).collect(),
        uniques: Vec::new(),
        trending: vec![MinuteSketch { minute, sketch }],
    })
}

/// Flushes every 15 minutes per source partition over the 26 hours around
/// the window, views drawn from a zipf 1.1 law over 100,000 videos (enough
/// distinct videos that the window's sum purges), and the exact views per
/// video inside the window. Returns the next free offset per partition too.
fn day_of_flushes(partitions: u32, views_per_flush: u32) -> (Vec<CountsEntry>, HashMap<String, i64>, Vec<i64>) {
    let weights: Vec<f64> = (1..=VIDEOS).map(|k| (k as f64).powf(-1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cumulative: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let (mut entries, mut truth, mut ends) = (Vec::new(), HashMap::new(), Vec::new());
    for partition in 0..partitions {
        let mut end = 0;
        for minute in (T0..T0 + DAY + 2 * HOUR).step_by(15 * MIN as usize) {
            let mut views: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..views_per_flush {
                let u: f64 = rng.gen();
                let rank = cumulative.partition_point(|c| *c < u).min(VIDEOS - 1);
                *views.entry(format!("video-{rank}")).or_default() += 1;
            }
            if (FROM..TO).contains(&minute) {
                for (video, n) in &views {
                    *truth.entry(video.clone()).or_default() += i64::from(*n);
                }
            }
            end += i64::from(views_per_flush);
            entries.push(flush(partition, end, i64::from(views_per_flush), minute, &views));
        }
        ends.push(end);
    }
    (entries, truth, ends)
}

async fn apply_all(store: &impl CountStore, entries: &[CountsEntry]) {
    for batch in entries.chunks(64) {
        store.apply(batch.to_vec()).await.unwrap();
    }
}

async fn a_day_window_from_cached_hours_equals_the_uncached_answer(store: impl CountStore) {
    let (entries, truth, _) = day_of_flushes(2, 500);
    apply_all(&store, &entries).await;
    let cache = HourCache::new(DAY);
    let uncached = top(&store, FROM, TO, 10, 100).await.unwrap();
    let (cached, stats) = top_cached(&store, &cache, FROM, TO, 10, 100).await.unwrap();
    assert_eq!(stats.rebuilt, CLOSED_HOURS, "every closed hour is summed once: {stats:?}");
    assert!(cached.complete && uncached.complete, "{cached:?} / {uncached:?}");
    assert!(cached.error_bound > 0, "the window's sum purged: the bound is exercised");
    assert_eq!(cached.videos, uncached.videos, "the same top 10 with the same exact views");
    assert_eq!(cached.sketches, uncached.sketches, "every minute row of the window is in the sum, once");
    let mut exact: Vec<(&String, &i64)> = truth.iter().collect();
    exact.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let expected: Vec<(String, i64)> = exact[..10].iter().map(|(v, n)| ((*v).clone(), **n)).collect();
    assert_eq!(cached.videos, expected, "the exact top 10 of the window");
    let (again, stats) = top_cached(&store, &cache, FROM, TO, 10, 100).await.unwrap();
    // Edges: flushes at :30 and :45 of the first hour, :00 and :15 of the open one, per partition.
    assert_eq!(stats, HourStats { reused: CLOSED_HOURS, rebuilt: 0, rows_read: 2 * 4 }, "only edge minutes are read");
    assert_eq!(again, cached);
}

async fn a_late_flush_to_a_cached_hour_is_in_the_next_refresh(store: impl CountStore) {
    let (entries, _, ends) = day_of_flushes(2, 50);
    apply_all(&store, &entries).await;
    let cache = HourCache::new(DAY);
    let (first, _) = top_cached(&store, &cache, FROM, TO, 5, 50).await.unwrap();
    assert!(first.videos.iter().all(|(v, _)| v != "late"));
    // A newer flush of partition 0 to a minute of a closed, cached hour.
    let late_minute = T0 + 5 * HOUR + 20 * MIN;
    let late = flush(0, ends[0] + 50_000, 50_000, late_minute, &BTreeMap::from([("late".to_owned(), 50_000)]));
    store.apply(vec![late.clone()]).await.unwrap();
    let (next, stats) = top_cached(&store, &cache, FROM, TO, 5, 50).await.unwrap();
    assert_eq!(next.videos[0], ("late".to_owned(), 50_000), "{next:?}");
    assert_eq!((stats.reused, stats.rebuilt), (CLOSED_HOURS - 1, 1), "only the changed hour is summed again");
    assert_eq!(next, top(&store, FROM, TO, 5, 50).await.unwrap(), "as the uncached answer");
    // Replaying every flush, the late one included, changes no row: nothing is rebuilt.
    apply_all(&store, &entries).await;
    store.apply(vec![late]).await.unwrap();
    let (replayed, stats) = top_cached(&store, &cache, FROM, TO, 5, 50).await.unwrap();
    assert_eq!((stats.reused, stats.rebuilt), (CLOSED_HOURS, 0));
    assert_eq!(replayed, next, "a replay changes nothing");
}

async fn a_window_without_closed_hours_reads_minutes_only(store: impl CountStore) {
    let (entries, _, _) = day_of_flushes(1, 50);
    apply_all(&store, &entries).await;
    let cache = HourCache::new(DAY);
    let (from, to) = (T0 + 2 * HOUR + 30 * MIN, T0 + 3 * HOUR + 30 * MIN);
    let (answer, stats) = top_cached(&store, &cache, from, to, 5, 50).await.unwrap();
    assert_eq!((stats.reused, stats.rebuilt, stats.rows_read), (0, 0, 4), "four flushes in the hour: {stats:?}");
    assert_eq!(answer, top(&store, from, to, 5, 50).await.unwrap());
    assert!(cache.is_empty(), "nothing to cache in an hour's window that starts mid-hour");
}

#[tokio::test]
async fn sqlite_a_day_window_from_cached_hours_equals_the_uncached_answer() {
    a_day_window_from_cached_hours_equals_the_uncached_answer(SqliteStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn sqlite_a_late_flush_to_a_cached_hour_is_in_the_next_refresh() {
    a_late_flush_to_a_cached_hour_is_in_the_next_refresh(SqliteStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn sqlite_a_window_without_closed_hours_reads_minutes_only() {
    a_window_without_closed_hours_reads_minutes_only(SqliteStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn scylla_a_day_window_from_cached_hours_equals_the_uncached_answer() {
    in_cassandra(a_day_window_from_cached_hours_equals_the_uncached_answer).await;
}

#[tokio::test]
async fn scylla_a_late_flush_to_a_cached_hour_is_in_the_next_refresh() {
    in_cassandra(a_late_flush_to_a_cached_hour_is_in_the_next_refresh).await;
}

#[tokio::test]
async fn scylla_a_window_without_closed_hours_reads_minutes_only() {
    in_cassandra(a_window_without_closed_hours_reads_minutes_only).await;
}
