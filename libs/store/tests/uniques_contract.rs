//! The store contract for unique viewers: both stores (the embedded one, and
//! the ScyllaDB/Cassandra one against a real Apache Cassandra 5.0 node)
//! merge a flush's sketches once per owner, whatever is replayed, and answer
//! with the batch recount's exact counts where every part of a range has one.

use tally_model::counts::{FlushChunk, FlushHeader, SketchDelta};
use tally_model::uniques;
use tally_model::uniques::UniquesEstimate;
use tally_model::Salt;
use tally_store::{CountStore, CountsEntry, DayUniques, PeriodSummary, PeriodUniques, SqliteStore, StoreError};

mod support;
use support::in_cassandra;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY0: i64 = T0 - 10 * HOUR;

fn sketch(viewers: impl Iterator<Item = u32>) -> Vec<u8> {
    let mut sketch = uniques::new_sketch(uniques::DEFAULT_LG_K).unwrap();
    for viewer in viewers {
        sketch.update_with_coupon(uniques::viewer_coupon(&format!("viewer-{viewer}")));
    }
    uniques::serialize(&sketch)
}

/// One flush of source `partition` ending at `end`, with the viewers of
/// `(video, salt, hour)` given as ranges of viewer numbers.
fn flush(partition: u32, end: i64, rows: &[(&str, u16, i64, std::ops::Range<u32>)]) -> CountsEntry {
    CountsEntry::chunk(FlushChunk {
        header: FlushHeader { source_partition: partition, end, chunk_count: 1, ..FlushHeader::default() },
        deltas: Vec::new(),
        uniques: rows
            .iter()
            .map(|(video, salt, hour, viewers)| SketchDelta {
                video_id: (*video).into(),
                salt: Salt(*salt),
                hour: *hour,
                sketch: sketch(viewers.clone()),
            })
            .collect(),
        trending: Vec::new(),
    })
}

fn history() -> Vec<CountsEntry> {
    vec![
        flush(0, 10, &[("a", 0, T0, 0..60), ("b", 0, T0, 0..5)]),
        // The same video's other salt on another source partition: viewers overlap.
        flush(1, 4, &[("a", 3, T0, 30..90)]),
        // The next day, and a big audience spread over both partitions.
        flush(0, 20, &[("a", 0, T0 + 25 * HOUR, 1_000..1_005), ("big", 0, T0, 0..6_000)]),
        flush(1, 9, &[("a", 3, T0 + 26 * HOUR, 0..10), ("big", 3, T0 + HOUR, 4_000..9_000)]),
    ]
}

async fn uniques_of(store: &impl CountStore, video: &str, from: i64, to: i64) -> uniques::UniquesEstimate {
    store.uniques(video.into(), from, to).await.unwrap().estimate
}

async fn every_read(store: &impl CountStore) -> Vec<uniques::UniquesEstimate> {
    let mut out = Vec::new();
    for (video, from, to) in [
        ("a", T0, T0 + HOUR),
        ("a", DAY0, DAY0 + DAY),
        ("a", DAY0, DAY0 + 2 * DAY),
        ("a", T0 + 20 * HOUR, T0 + 26 * HOUR),
        ("b", T0, T0 + 1),
        ("big", DAY0, DAY0 + 2 * DAY),
        ("big", T0, T0 + HOUR),
    ] {
        out.push(uniques_of(store, video, from, to).await);
    }
    out
}

async fn sketches_merge_over_salts_partitions_hours_and_days_and_replays_change_nothing(store: impl CountStore) {
    let first = store.apply(history()).await.unwrap();
    assert_eq!((first.sketches_applied, first.sketches_stale), (7, 0));
    let reads = every_read(&store).await;
    let exact: Vec<(u64, bool)> = reads.iter().take(5).map(|e| (e.uniques, e.exact)).collect();
    // a: hour T0 = 0..90; day 0 the same; two days add 1,000..1,005 (0..10 seen);
    // the six hours up to T0 + 26 h hold T0 + 25 h only: 5.
    assert_eq!(exact, vec![(90, true), (90, true), (95, true), (5, true), (5, true)]);
    let big = reads[5];
    assert!(!big.exact && (big.uniques as f64 - 9_000.0).abs() / 9_000.0 < 0.032, "{big:?}");
    assert!(big.lower_bound <= 9_000 && 9_000 <= big.upper_bound, "{big:?}");
    let hour = reads[6];
    assert!((hour.uniques as f64 - 6_000.0).abs() / 6_000.0 < 0.032, "{hour:?}");
    // The whole topic again, then each flush twice in one batch: every row already has its version.
    let replay = store.apply(history()).await.unwrap();
    assert_eq!((replay.sketches_applied, replay.sketches_stale), (0, 7));
    for entry in history() {
        store.apply(vec![entry.clone(), entry]).await.unwrap();
    }
    assert_eq!(every_read(&store).await, reads, "replays changed an estimate");
}

async fn a_video_nobody_watched_has_no_viewers_and_an_empty_range_is_refused(store: impl CountStore) {
    let read = store.uniques("nobody".into(), T0, T0 + DAY).await.unwrap();
    assert_eq!((read.estimate, read.sketches), (uniques::UniquesEstimate::ZERO, 0));
    assert_eq!((read.from_ms, read.to_ms), (T0, T0 + DAY));
    let widened = store.uniques("nobody".into(), T0 + 1, T0 + 2).await.unwrap();
    assert_eq!((widened.from_ms, widened.to_ms), (T0, T0 + HOUR), "whole hours are read");
    assert!(matches!(store.uniques("a".into(), T0, T0).await, Err(StoreError::Invalid(_))));
}

fn period(start_ms: i64) -> PeriodSummary {
    PeriodSummary { start_ms, end_ms: start_ms + HOUR, batch_views: 0, realtime_views: 0 }
}

fn hour_counts(hour: &[(&str, u64)]) -> Option<PeriodUniques> {
    Some(PeriodUniques { hour: hour.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect(), day: None })
}

async fn answer(store: &impl CountStore, video: &str, from: i64, to: i64) -> UniquesEstimate {
    store.uniques(video.into(), from, to).await.unwrap().answer()
}

async fn batch_counts_of_unique_viewers_answer_exactly_where_every_part_is_counted(store: impl CountStore) {
    for entry in history() {
        store.apply(vec![entry]).await.unwrap();
    }
    let before = store.uniques("big".into(), T0, T0 + HOUR).await.unwrap();
    assert_eq!((before.counted_parts.clone(), before.exact_through_ms), (None, None));
    assert_eq!(before.answer(), before.estimate, "nothing counted: the sketches alone");

    // The reconciler counts 10:00; big had one viewer more than its sketches saw.
    store.replace_batch(period(T0), Vec::new(), hour_counts(&[("a", 90), ("big", 6_001)])).await.unwrap();
    let hour = store.uniques("big".into(), T0, T0 + HOUR).await.unwrap();
    assert_eq!((hour.counted_parts.clone(), hour.exact_through_ms), (Some(vec![6_001]), Some(T0 + HOUR)));
    assert_eq!(hour.answer(), UniquesEstimate::counted(6_001));
    assert!(!hour.estimate.exact, "the sketches' own estimate is still reported apart: {:?}", hour.estimate);
    assert_eq!(answer(&store, "nobody", T0, T0 + HOUR).await, UniquesEstimate::counted(0), "no row: nobody");
    let two_hours = store.uniques("big".into(), T0, T0 + 2 * HOUR).await.unwrap();
    assert_eq!(two_hours.counted_parts, None, "11:00 is not counted");

    // Every other hour of the day, the last one with the day's counts.
    for h in 0..24 {
        let start = DAY0 + h * HOUR;
        let hour: &[(&str, u64)] = if start == T0 + HOUR { &[("big", 5_000)] } else { &[] };
        let day =
            (h == 23).then(|| DayUniques { day_ms: DAY0, viewers: vec![("a".into(), 95), ("big".into(), 9_000)] });
        if start != T0 {
            let counted = PeriodUniques { day, ..hour_counts(hour).unwrap() };
            store.replace_batch(period(start), Vec::new(), Some(counted)).await.unwrap();
        }
    }
    assert_eq!(answer(&store, "big", DAY0, DAY0 + DAY).await, UniquesEstimate::counted(9_000));
    assert_eq!(answer(&store, "a", DAY0, DAY0 + DAY).await, UniquesEstimate::counted(95));
    let both = store.uniques("big".into(), T0, T0 + 2 * HOUR).await.unwrap();
    assert_eq!(both.counted_parts, Some(vec![6_001, 5_000]));
    let narrowed = both.answer();
    assert!(narrowed.lower_bound >= 6_001 && narrowed.upper_bound <= 11_001, "{narrowed:?}");
    let into_next_day = store.uniques("big".into(), DAY0, DAY0 + DAY + HOUR).await.unwrap();
    assert_eq!(into_next_day.counted_parts, None, "the next day's first hour is not counted");

    // Counting an hour again replaces its counts: a video gone from it had nobody.
    store.replace_batch(period(T0), Vec::new(), hour_counts(&[("big", 6_000)])).await.unwrap();
    assert_eq!(answer(&store, "big", T0, T0 + HOUR).await, UniquesEstimate::counted(6_000));
    assert_eq!(answer(&store, "a", T0, T0 + HOUR).await, UniquesEstimate::counted(0));
    assert_eq!(answer(&store, "big", DAY0, DAY0 + DAY).await, UniquesEstimate::counted(9_000), "the day stays");

    // Refused: a period that is not one whole hour, a day that does not hold the period.
    let long = PeriodSummary { end_ms: T0 + 102 * HOUR, ..period(T0 + 100 * HOUR) };
    let refused = store.replace_batch(long, Vec::new(), Some(PeriodUniques::default())).await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    let wrong_day = PeriodUniques { hour: Vec::new(), day: Some(DayUniques { day_ms: DAY0, viewers: Vec::new() }) };
    let refused = store.replace_batch(period(T0 + 100 * HOUR), Vec::new(), Some(wrong_day)).await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    assert_eq!(store.periods().await.unwrap().len(), 24, "nothing of a refused period is kept");
}

/// An hour's viewers as far as `read` of the store says, exactly (small audiences).
async fn exact(store: &impl CountStore, video: &str, from: i64, to: i64) -> u64 {
    let estimate = uniques_of(store, video, from, to).await;
    assert!(estimate.exact, "{video} {from}..{to}: {estimate:?}");
    estimate.uniques
}

async fn a_day_read_includes_the_open_hour_and_late_updates_to_folded_hours(store: impl CountStore) {
    store.apply(vec![flush(0, 10, &[("a", 0, T0, 0..10)])]).await.unwrap();
    store.apply(vec![flush(0, 20, &[("a", 0, T0, 10..20)])]).await.unwrap();
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 20, "the open hour's every flush");
    // 11:00 opens (10:00 is folded into the day), then a late flush to 10:00.
    store.apply(vec![flush(0, 30, &[("a", 0, T0 + HOUR, 100..110)])]).await.unwrap();
    store.apply(vec![flush(0, 40, &[("a", 0, T0, 200..205)])]).await.unwrap();
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 35, "a late update to a folded hour");
    assert_eq!(exact(&store, "a", T0, T0 + HOUR).await, 25);
    // Another salt of the open hour, and another source partition's own hours.
    store.apply(vec![flush(0, 50, &[("a", 2, T0 + HOUR, 300..303)])]).await.unwrap();
    store
        .apply(vec![flush(1, 5, &[("a", 1, T0 - HOUR, 0..50)]), flush(1, 6, &[("a", 1, T0, 400..401)])])
        .await
        .unwrap();
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 69);
    // 12:00 opens: 11:00 and the late 10:00 viewers are folded; nothing is lost or counted twice.
    store.apply(vec![flush(0, 60, &[("a", 0, T0 + 2 * HOUR, 0..2)])]).await.unwrap();
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 69);
    // A re-emitted range: a version below the day's last fold, for an hour with no row yet.
    store.apply(vec![flush(0, 55, &[("a", 0, T0 + 3 * HOUR, 500..507)])]).await.unwrap();
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 76, "an update older than the fold still counts");
    // The next day's first hour: its own day; two days together; every hour apart.
    store.apply(vec![flush(0, 70, &[("a", 0, DAY0 + DAY, 600..601)])]).await.unwrap();
    assert_eq!(exact(&store, "a", DAY0 + DAY, DAY0 + 2 * DAY).await, 1);
    assert_eq!(exact(&store, "a", DAY0, DAY0 + 2 * DAY).await, 77);
    let mut hours = Vec::new();
    for hour in [T0 - HOUR, T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR] {
        hours.push(exact(&store, "a", hour, hour + HOUR).await);
    }
    assert_eq!(hours, vec![50, 26, 13, 2, 7]);
    assert_eq!(exact(&store, "a", DAY0, T0 + 2 * HOUR).await, 69, "edge hours and no whole day");
}

async fn the_day_row_is_written_once_per_new_hour_not_once_per_batch(store: impl CountStore) {
    // Three hours of one video's viewers, twenty batches an hour, two salts
    // (few enough viewers to count exactly).
    let mut written = (0, 0);
    for batch in 0..60_i64 {
        let hour = T0 + (batch / 20) * HOUR;
        let viewers = u32::try_from(batch).unwrap() * 4;
        let salt = u16::try_from(batch % 2).unwrap();
        let outcome =
            store.apply(vec![flush(0, 10 * (batch + 1), &[("a", salt, hour, viewers..viewers + 4)])]).await.unwrap();
        assert_eq!(outcome.sketches_applied, 1);
        written.0 += outcome.sketch_hour_rows_written;
        written.1 += outcome.sketch_day_rows_written;
    }
    assert_eq!(written, (60, 3), "(hour rows, day rows) written over 60 batches of 3 hours");
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 240);
    assert_eq!(exact(&store, "a", T0 + 2 * HOUR, T0 + 3 * HOUR).await, 80);
    // The next day's first batch creates its row and folds the day before's last hour.
    let next_day = store.apply(vec![flush(0, 1_000, &[("a", 0, DAY0 + DAY, 0..1)])]).await.unwrap();
    assert_eq!((next_day.sketch_hour_rows_written, next_day.sketch_day_rows_written), (1, 2));
    assert_eq!(exact(&store, "a", DAY0, DAY0 + DAY).await, 240);
    assert_eq!(exact(&store, "a", DAY0, DAY0 + 2 * DAY).await, 240, "viewer 0 came back the next day");
}

/// A day of flushes over three hours and two source partitions, with late
/// updates to hours already folded.
fn folded_history() -> Vec<CountsEntry> {
    vec![
        flush(0, 10, &[("a", 0, T0, 0..40), ("big", 0, T0, 0..3_000)]),
        flush(1, 3, &[("a", 1, T0, 20..60)]),
        flush(0, 20, &[("a", 0, T0 + HOUR, 50..80), ("big", 0, T0 + HOUR, 2_000..6_000)]),
        flush(0, 30, &[("a", 0, T0, 100..110), ("big", 0, T0, 9_000..9_500)]),
        flush(1, 7, &[("a", 1, T0 + 2 * HOUR, 0..5)]),
        flush(0, 40, &[("a", 0, T0 + 2 * HOUR, 200..210), ("big", 1, T0 + HOUR, 6_000..6_100)]),
        flush(0, 50, &[("a", 0, DAY0 + DAY + HOUR, 0..3)]),
    ]
}

async fn every_hour_and_day(store: &impl CountStore) -> Vec<UniquesEstimate> {
    let mut reads = Vec::new();
    for video in ["a", "big"] {
        for day in [DAY0, DAY0 + DAY] {
            reads.push(uniques_of(store, video, day, day + DAY).await);
            for hour in (day..day + DAY).step_by(usize::try_from(HOUR).unwrap()) {
                reads.push(uniques_of(store, video, hour, hour + HOUR).await);
            }
        }
        reads.push(uniques_of(store, video, DAY0, DAY0 + 2 * DAY).await);
    }
    reads
}

async fn replaying_the_same_chunks_leaves_every_day_and_hour_estimate_unchanged(store: impl CountStore) {
    for entry in folded_history() {
        store.apply(vec![entry]).await.unwrap();
    }
    let reads = every_hour_and_day(&store).await;
    // a's day: 0..80, 100..110 and 200..210; big's: 0..6,100 and 9,000..9,500.
    assert_eq!((reads[0].uniques, reads[0].exact), (100, true), "a's day");
    let big_day = reads[2 * 25 + 1];
    assert!((big_day.uniques as f64 - 6_600.0).abs() / 6_600.0 < 0.032, "{big_day:?}");

    let replay = store.apply(folded_history()).await.unwrap();
    assert_eq!((replay.sketches_applied, replay.sketches_stale), (0, 11));
    assert_eq!((replay.sketch_hour_rows_written, replay.sketch_day_rows_written), (0, 0), "a replay writes nothing");
    for entry in folded_history().into_iter().rev() {
        store.apply(vec![entry.clone(), entry]).await.unwrap();
    }
    assert_eq!(every_hour_and_day(&store).await, reads, "replays changed an estimate");
}

macro_rules! contract {
    ($name:ident, $run:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sketches_merge_over_salts_partitions_hours_and_days_and_replays_change_nothing() {
                $run(super::sketches_merge_over_salts_partitions_hours_and_days_and_replays_change_nothing).await;
            }

            #[tokio::test]
            async fn a_video_nobody_watched_has_no_viewers_and_an_empty_range_is_refused() {
                $run(super::a_video_nobody_watched_has_no_viewers_and_an_empty_range_is_refused).await;
            }

            #[tokio::test]
            async fn batch_counts_of_unique_viewers_answer_exactly_where_every_part_is_counted() {
                $run(super::batch_counts_of_unique_viewers_answer_exactly_where_every_part_is_counted).await;
            }

            #[tokio::test]
            async fn a_day_read_includes_the_open_hour_and_late_updates_to_folded_hours() {
                $run(super::a_day_read_includes_the_open_hour_and_late_updates_to_folded_hours).await;
            }

            #[tokio::test]
            async fn the_day_row_is_written_once_per_new_hour_not_once_per_batch() {
                $run(super::the_day_row_is_written_once_per_new_hour_not_once_per_batch).await;
            }

            #[tokio::test]
            async fn replaying_the_same_chunks_leaves_every_day_and_hour_estimate_unchanged() {
                $run(super::replaying_the_same_chunks_leaves_every_day_and_hour_estimate_unchanged).await;
            }
        }
    };
}

async fn in_sqlite<F, Fut>(body: F)
where
    F: FnOnce(SqliteStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    body(SqliteStore::in_memory().unwrap()).await;
}

contract!(sqlite_in_memory, in_sqlite);
contract!(scylla, in_cassandra);
