//! The store contract: every implementation must pass these. The embedded
//! store runs in memory and on disk; the ScyllaDB/Cassandra store runs the
//! same suite against a real Apache Cassandra 5.0 node (the run's shared node
//! that `scripts/test` starts, else one of the test's own), each test in a
//! keyspace of its own that it drops afterwards.

use tally_model::counts::{Claim, CountsRecord, Delta, FlushChunk, FlushHeader, Owner};
use tally_model::Salt;
use tally_store::{CountStore, CountsEntry, Granularity, PeriodSummary, ScyllaStore, SqliteStore};

mod support;

const MINUTE: i64 = 60_000;
const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn chunk(partition: u32, start: i64, end: i64, index: u32, count: u32, deltas: &[(&str, u16, i64, u32)]) -> FlushChunk {
    FlushChunk {
        header: FlushHeader {
            epoch: 0,
            source_partition: partition,
            owner: 0,
            start,
            end,
            chunk_index: index,
            chunk_count: count,
            dedup_horizon: 0,
            max_received_ms: T0 + end,
            stats: Default::default(),
        },
        deltas: deltas
            .iter()
            .map(|(video, salt, minute, n)| Delta {
                video_id: (*video).into(),
                salt: Salt(*salt),
                minute: *minute,
                count: *n,
            })
            .collect(),
        uniques: Vec::new(),
        trending: Vec::new(),
    }
}

/// Chunks as read from the topic (no claims among them).
fn entries(chunks: Vec<FlushChunk>) -> Vec<CountsEntry> {
    chunks.into_iter().map(CountsEntry::chunk).collect()
}

fn history() -> Vec<CountsEntry> {
    entries(vec![
        chunk(0, 0, 10, 0, 1, &[("a", 0, T0, 4), ("b", 0, T0, 1)]),
        chunk(1, 0, 7, 0, 1, &[("a", 3, T0 + MINUTE, 2)]),
        chunk(0, 10, 20, 0, 2, &[("a", 0, T0, 1)]),
        chunk(0, 10, 20, 1, 2, &[("a", 0, T0 + 61 * MINUTE, 5)]),
        chunk(1, 7, 9, 0, 1, &[("a", 3, T0 + 25 * 60 * MINUTE, 1)]),
    ])
}

async fn total(store: &impl CountStore, video: &str) -> i64 {
    store.totals(vec![video.into()]).await.unwrap()[0].views
}

async fn replayed_chunks_do_not_change_totals(store: impl CountStore) {
    let first = store.apply(history()).await.unwrap();
    assert_eq!(first.applied, 6);
    assert_eq!((total(&store, "a").await, total(&store, "b").await), (13, 1));
    // Replay the whole topic, then every chunk twice more, one at a time.
    let replay = store.apply(history()).await.unwrap();
    assert_eq!((replay.applied, replay.stale), (0, 6));
    for entry in history() {
        store.apply(vec![entry.clone(), entry]).await.unwrap();
    }
    assert_eq!((total(&store, "a").await, total(&store, "b").await), (13, 1));
}

async fn a_partly_applied_flush_completes_when_re_emitted(store: impl CountStore) {
    let all = history();
    store.apply(all[..3].to_vec()).await.unwrap(); // chunk 1 of flush [10, 20) lost in a crash
    assert_eq!(total(&store, "a").await, 7);
    let again = store.apply(all[2..].to_vec()).await.unwrap(); // the next owner re-emits from [10, 20)
    assert_eq!((again.applied, again.stale), (2, 1));
    assert_eq!(total(&store, "a").await, 13);
}

fn claim(offset: i64, partition: u32, owner: u64) -> CountsEntry {
    let claim = Claim { source_partition: partition, owner, claimant: format!("counter-{owner}"), ..Claim::default() };
    CountsEntry { offset, record: CountsRecord::Claim(claim) }
}

fn owned(offset: i64, owner: u64, mut chunk: FlushChunk) -> CountsEntry {
    chunk.header.owner = owner;
    CountsEntry { offset, record: CountsRecord::Chunk(chunk) }
}

async fn a_zombie_counters_chunks_after_a_newer_claim_change_nothing(store: impl CountStore) {
    let log = [
        claim(0, 0, 1),
        owned(1, 1, chunk(0, 0, 10, 0, 1, &[("a", 0, T0, 4)])),
        // Counter 1 froze past its session; counter 2 took partition 0 over from offset 10.
        claim(2, 0, 2),
        // Counter 1 wakes up and emits the range it had buffered: fenced.
        owned(3, 1, chunk(0, 10, 30, 0, 1, &[("a", 0, T0, 100), ("z", 0, T0, 1)])),
        owned(4, 2, chunk(0, 10, 20, 0, 1, &[("a", 0, T0, 3)])),
        // Owners are per source partition: counter 1 still owns partition 1.
        claim(5, 1, 1),
        owned(6, 1, chunk(1, 0, 5, 0, 1, &[("a", 0, T0, 2)])),
    ];
    let outcome = store.apply(log[..4].to_vec()).await.unwrap();
    assert_eq!((outcome.applied, outcome.fenced, outcome.fenced_chunks), (1, 2, 1));
    let outcome = store.apply(log[4..].to_vec()).await.unwrap();
    assert_eq!((outcome.applied, outcome.fenced), (2, 0));
    assert_eq!((total(&store, "a").await, total(&store, "z").await), (9, 0));
    let mut owners = store.owners().await.unwrap();
    owners.sort_by_key(|(p, _)| *p);
    assert_eq!(owners, vec![(0, Owner { owner: 2, claim_offset: 2 }), (1, Owner { owner: 1, claim_offset: 5 })]);
    // Later zombie chunks stay fenced, and replaying the whole log from any
    // point (the stored owners are newer than the replayed claims) changes nothing.
    let late = store.apply(vec![owned(7, 1, chunk(0, 30, 40, 0, 1, &[("a", 0, T0, 50)]))]).await.unwrap();
    assert_eq!(late.fenced_chunks, 1);
    for from in 0..log.len() {
        store.apply(log[from..].to_vec()).await.unwrap();
    }
    assert_eq!((total(&store, "a").await, total(&store, "z").await), (9, 0));
    assert_eq!(store.owners().await.unwrap().len(), 2);
}

async fn a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing(store: impl CountStore) {
    // Counter 1 counted [0, 10) of partition 0, then handed it over cleanly:
    // counter 2 claimed it and counted [10, 20). No zombie anywhere.
    let log = [
        claim(0, 0, 1),
        owned(1, 1, chunk(0, 0, 10, 0, 1, &[("a", 0, T0, 4), ("b", 0, T0, 1)])),
        claim(2, 0, 2),
        owned(3, 2, chunk(0, 10, 20, 0, 1, &[("a", 0, T0, 3)])),
    ];
    let first = store.apply(log.to_vec()).await.unwrap();
    assert_eq!((first.applied, first.fenced, first.fenced_chunks), (3, 0, 0));
    // The writer restarts before committing its offsets and replays the
    // partition from the start: counter 1's chunk comes before counter 2's
    // claim in the log, it was applied the first time, it is no zombie.
    for from in 0..log.len() {
        let replay = store.apply(log[from..].to_vec()).await.unwrap();
        assert_eq!((replay.fenced, replay.fenced_chunks), (0, 0), "replay from offset {from}: nothing was dropped");
        assert_eq!(replay.applied, 0, "replay from offset {from}");
    }
    assert_eq!((total(&store, "a").await, total(&store, "b").await), (7, 1));
    // A chunk of counter 1 that lands after counter 2's claim is a real zombie, replayed or not.
    let zombie = owned(4, 1, chunk(0, 10, 30, 0, 1, &[("a", 0, T0, 100)]));
    let outcome = store.apply(vec![zombie.clone()]).await.unwrap();
    assert_eq!((outcome.applied, outcome.fenced_chunks), (0, 1));
    assert_eq!(total(&store, "a").await, 7);
}

async fn series_and_rollups_agree_and_salts_are_merged(store: impl CountStore) {
    store.apply(history()).await.unwrap();
    let minutes = store.series("a".into(), T0, T0 + 2 * MINUTE, Granularity::Minute).await.unwrap();
    let minutes: Vec<(i64, i64)> = minutes.iter().map(|p| (p.bucket_ms, p.views)).collect();
    assert_eq!(minutes, vec![(T0, 5), (T0 + MINUTE, 2)]);
    let hours = store.series("a".into(), T0, T0 + 48 * 60 * MINUTE, Granularity::Hour).await.unwrap();
    let hours: Vec<(i64, i64)> = hours.iter().map(|p| (p.bucket_ms, p.views)).collect();
    assert_eq!(hours, vec![(T0, 7), (T0 + 60 * MINUTE, 5), (T0 + 25 * 60 * MINUTE, 1)]);
    let days = store.series("a".into(), T0 - 10 * 60 * MINUTE, T0 + 48 * 60 * MINUTE, Granularity::Day).await.unwrap();
    assert_eq!(days.iter().map(|p| p.views).sum::<i64>(), 13);
}

async fn a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition(store: impl CountStore) {
    assert_eq!(total(&store, "never").await, 0);
    store.apply(history()).await.unwrap();
    let totals = store.totals(vec!["never".into(), "a".into()]).await.unwrap();
    assert_eq!(totals[0].views, 0);
    // Partition 0 reached end 20, partition 1 end 9: as_of is partition 1's.
    assert_eq!(totals[1].as_of_ms, T0 + 9);
    assert!(store.series("a".into(), T0, T0, Granularity::Minute).await.is_err(), "empty range is invalid");
    store.ping().await.unwrap();
}

async fn batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing(store: impl CountStore) {
    store.apply(history()).await.unwrap();
    // Real time: a = 4 (salt 0) + 2 (salt 3) + 1 in hour 10:00, 5 in 11:00, 1 next day.
    let realtime = store.realtime_minutes(T0, T0 + 60 * MINUTE).await.unwrap();
    assert_eq!(realtime, vec![("a".into(), T0, 5), ("a".into(), T0 + MINUTE, 2), ("b".into(), T0, 1)]);
    let period = PeriodSummary { start_ms: T0, end_ms: T0 + 60 * MINUTE, batch_views: 9, realtime_views: 8 };
    // The batch recount found one view more for "a" in 10:00 than the real-time path.
    let batch = vec![("a".to_owned(), T0, 6), ("a".to_owned(), T0 + MINUTE, 2), ("b".to_owned(), T0, 1)];
    for _ in 0..2 {
        store.replace_batch(period.clone(), batch.clone(), None).await.unwrap();
        let totals = store.totals(vec!["a".into(), "b".into()]).await.unwrap();
        // a: batch 8 for 10:00-11:00, plus real time after the boundary (5 + 1).
        assert_eq!((totals[0].views, totals[0].batch_views), (14, 8));
        assert_eq!(totals[0].exact_through_ms, Some(T0 + 60 * MINUTE));
        assert_eq!((totals[1].views, totals[1].batch_views), (1, 1));
    }
    assert_eq!(store.periods().await.unwrap(), vec![period]);
}

const HOUR: i64 = 60 * MINUTE;

fn points(series: Vec<tally_store::Point>) -> Vec<(i64, i64)> {
    series.into_iter().map(|p| (p.bucket_ms, p.views)).collect()
}

/// Every read follows one rule: batch counts for exactly the reconciled
/// periods, real-time counts for every other minute.
async fn assert_reads(store: &impl CountStore, video: &str, from: i64, to: i64, expected_minutes: &[(i64, i64)]) {
    let expected_total: i64 = expected_minutes.iter().map(|m| m.1).sum();
    assert_eq!(total(store, video).await, expected_total, "total of {video}");
    let minutes = points(store.series(video.into(), from, to, Granularity::Minute).await.unwrap());
    assert_eq!(minutes, expected_minutes, "minute series of {video}");
    for step in [Granularity::Hour, Granularity::Day] {
        let mut expected: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
        for (minute, views) in expected_minutes {
            *expected.entry(step.bucket(*minute)).or_default() += views;
        }
        let expected: Vec<(i64, i64)> = expected.into_iter().collect();
        assert_eq!(
            points(store.series(video.into(), from, to, step).await.unwrap()),
            expected,
            "{step:?} series of {video}"
        );
    }
}

async fn real_time_counts_outside_reconciled_periods_stay_in_every_read(store: impl CountStore) {
    // Real time over two days and more: the day before T0, hours 10:00 to
    // 12:00 of T0's day, and the next day.
    store
        .apply(entries(vec![
            chunk(0, 0, 10, 0, 1, &[("a", 0, T0 - 24 * HOUR, 5), ("a", 0, T0, 4), ("b", 0, T0 - 24 * HOUR, 2)]),
            chunk(1, 0, 10, 0, 1, &[("a", 3, T0 + MINUTE, 2), ("a", 3, T0 + HOUR, 3)]),
            chunk(0, 10, 20, 0, 1, &[("a", 0, T0 + 90 * MINUTE, 1), ("a", 0, T0 + 2 * HOUR, 7)]),
            chunk(1, 10, 20, 0, 1, &[("a", 3, T0 + 26 * HOUR, 1)]),
        ]))
        .await
        .unwrap();
    let (from, to) = (T0 - 48 * HOUR, T0 + 48 * HOUR);
    let realtime = [
        (T0 - 24 * HOUR, 5),
        (T0, 4),
        (T0 + MINUTE, 2),
        (T0 + HOUR, 3),
        (T0 + 90 * MINUTE, 1),
        (T0 + 2 * HOUR, 7),
        (T0 + 26 * HOUR, 1),
    ];
    assert_reads(&store, "a", from, to, &realtime).await;
    let before = store.totals(vec!["a".into()]).await.unwrap().remove(0);
    assert_eq!((before.batch_views, before.exact_through_ms, before.batch_generation), (0, None, 0));

    // The first reconcile, long after counting began, recounts 11:00-12:00
    // only: the batch layer dedups 11:30 and finds a view at 11:15.
    let eleven = PeriodSummary { start_ms: T0 + HOUR, end_ms: T0 + 2 * HOUR, batch_views: 4, realtime_views: 4 };
    store
        .replace_batch(eleven, vec![("a".into(), T0 + HOUR, 3), ("a".into(), T0 + 75 * MINUTE, 1)], None)
        .await
        .unwrap();
    let after_first = [
        (T0 - 24 * HOUR, 5),
        (T0, 4),
        (T0 + MINUTE, 2),
        (T0 + HOUR, 3),
        (T0 + 75 * MINUTE, 1),
        (T0 + 2 * HOUR, 7),
        (T0 + 26 * HOUR, 1),
    ];
    assert_reads(&store, "a", from, to, &after_first).await;
    assert_reads(&store, "b", from, to, &[(T0 - 24 * HOUR, 2)]).await;
    let first = store.totals(vec!["a".into()]).await.unwrap().remove(0);
    assert_eq!((first.batch_views, first.exact_through_ms), (4, Some(T0 + 2 * HOUR)));
    assert!(first.batch_generation > before.batch_generation, "a reconcile moves the batch generation");

    // A manual reconcile of a later hour (next day, 12:00) leaves 12:00 to
    // the next day's 12:00 unreconciled: its real-time count stays.
    let next_day =
        PeriodSummary { start_ms: T0 + 26 * HOUR, end_ms: T0 + 27 * HOUR, batch_views: 2, realtime_views: 1 };
    store.replace_batch(next_day, vec![("a".into(), T0 + 26 * HOUR + MINUTE, 2)], None).await.unwrap();
    let after_later = [
        (T0 - 24 * HOUR, 5),
        (T0, 4),
        (T0 + MINUTE, 2),
        (T0 + HOUR, 3),
        (T0 + 75 * MINUTE, 1),
        (T0 + 2 * HOUR, 7),
        (T0 + 26 * HOUR + MINUTE, 2),
    ];
    assert_reads(&store, "a", from, to, &after_later).await;
    let second = store.totals(vec!["a".into()]).await.unwrap().remove(0);
    assert_eq!((second.batch_views, second.exact_through_ms), (6, Some(T0 + 27 * HOUR)));
    assert!(second.batch_generation > first.batch_generation);
    assert_eq!(store.totals(vec!["a".into()]).await.unwrap()[0].batch_generation, second.batch_generation);

    // Filling the gap hour next to a reconciled one, and real time arriving
    // for an hour nobody reconciled, both land exactly once.
    let twelve = PeriodSummary { start_ms: T0 + 2 * HOUR, end_ms: T0 + 3 * HOUR, batch_views: 6, realtime_views: 7 };
    store.replace_batch(twelve, vec![("a".into(), T0 + 2 * HOUR, 6)], None).await.unwrap();
    store.apply(entries(vec![chunk(0, 20, 30, 0, 1, &[("a", 0, T0 + 5 * HOUR, 8)])])).await.unwrap();
    let filled = [
        (T0 - 24 * HOUR, 5),
        (T0, 4),
        (T0 + MINUTE, 2),
        (T0 + HOUR, 3),
        (T0 + 75 * MINUTE, 1),
        (T0 + 2 * HOUR, 6),
        (T0 + 5 * HOUR, 8),
        (T0 + 26 * HOUR + MINUTE, 2),
    ];
    assert_reads(&store, "a", from, to, &filled).await;
    // Series over part of a range start mid-bucket like before.
    let part = points(store.series("a".into(), T0 + 70 * MINUTE, T0 + 3 * HOUR, Granularity::Minute).await.unwrap());
    assert_eq!(part, vec![(T0 + 75 * MINUTE, 1), (T0 + 2 * HOUR, 6)]);
    // The reconciler still compares against pure real time.
    let realtime_eleven = store.realtime_minutes(T0 + HOUR, T0 + 2 * HOUR).await.unwrap();
    assert_eq!(realtime_eleven, vec![("a".into(), T0 + HOUR, 3), ("a".into(), T0 + 90 * MINUTE, 1)]);
}

macro_rules! contract {
    (scylla $name:ident) => {
        mod $name {
            use super::*;

            async fn run<F, Fut>(_test: &str, body: F)
            where
                F: FnOnce(ScyllaStore) -> Fut,
                Fut: std::future::Future<Output = ()>,
            {
                support::in_cassandra(body).await;
            }

            #[tokio::test]
            async fn replayed_chunks_do_not_change_totals() {
                run("replayed_chunks_do_not_change_totals", super::replayed_chunks_do_not_change_totals).await;
            }

            #[tokio::test]
            async fn a_partly_applied_flush_completes_when_re_emitted() {
                run(
                    "a_partly_applied_flush_completes_when_re_emitted",
                    super::a_partly_applied_flush_completes_when_re_emitted,
                )
                .await;
            }

            #[tokio::test]
            async fn a_zombie_counters_chunks_after_a_newer_claim_change_nothing() {
                run(
                    "a_zombie_counters_chunks_after_a_newer_claim_change_nothing",
                    super::a_zombie_counters_chunks_after_a_newer_claim_change_nothing,
                )
                .await;
            }

            #[tokio::test]
            async fn a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing() {
                run(
                    "a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing",
                    super::a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing,
                )
                .await;
            }

            #[tokio::test]
            async fn real_time_counts_outside_reconciled_periods_stay_in_every_read() {
                run(
                    "real_time_counts_outside_reconciled_periods_stay_in_every_read",
                    super::real_time_counts_outside_reconciled_periods_stay_in_every_read,
                )
                .await;
            }

            #[tokio::test]
            async fn series_and_rollups_agree_and_salts_are_merged() {
                run(
                    "series_and_rollups_agree_and_salts_are_merged",
                    super::series_and_rollups_agree_and_salts_are_merged,
                )
                .await;
            }

            #[tokio::test]
            async fn batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing() {
                run(
                    "batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing",
                    super::batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing,
                )
                .await;
            }

            #[tokio::test]
            async fn a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition() {
                run(
                    "a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition",
                    super::a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition,
                )
                .await;
            }
        }
    };
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn replayed_chunks_do_not_change_totals() {
                super::replayed_chunks_do_not_change_totals($make).await;
            }

            #[tokio::test]
            async fn a_partly_applied_flush_completes_when_re_emitted() {
                super::a_partly_applied_flush_completes_when_re_emitted($make).await;
            }

            #[tokio::test]
            async fn a_zombie_counters_chunks_after_a_newer_claim_change_nothing() {
                super::a_zombie_counters_chunks_after_a_newer_claim_change_nothing($make).await;
            }

            #[tokio::test]
            async fn a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing() {
                super::a_writer_restart_replaying_a_superseded_owners_applied_chunks_fences_nothing($make).await;
            }

            #[tokio::test]
            async fn real_time_counts_outside_reconciled_periods_stay_in_every_read() {
                super::real_time_counts_outside_reconciled_periods_stay_in_every_read($make).await;
            }

            #[tokio::test]
            async fn series_and_rollups_agree_and_salts_are_merged() {
                super::series_and_rollups_agree_and_salts_are_merged($make).await;
            }

            #[tokio::test]
            async fn batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing() {
                super::batch_counts_replace_closed_periods_and_reconciling_again_changes_nothing($make).await;
            }

            #[tokio::test]
            async fn a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition() {
                super::a_video_nobody_watched_has_zero_views_and_as_of_trails_the_slowest_partition($make).await;
            }
        }
    };
}

contract!(sqlite_in_memory, SqliteStore::in_memory().unwrap());
contract!(sqlite_on_disk, {
    let dir = tempfile::tempdir().unwrap();
    // The directory lives as long as the process; the file is what matters.
    let path = dir.keep().join("tally.db");
    SqliteStore::open(&path).unwrap()
});
contract!(scylla cassandra);
