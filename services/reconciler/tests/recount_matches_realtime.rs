//! The batch recount and the real-time counter count by one rule: the same
//! stream of records, folded by the counter's partition state and recounted
//! from the archive period by period, gives the same views per video and
//! minute, and both equal what the stream was built to hold (an oracle
//! written out by hand below, sharing no code with either).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_counter::dlq::DlqLimits;
use tally_counter::partition::{Input, PartitionState, Rules};
use tally_model::counting::CountingRule;
use tally_model::timestamp::minute_bucket;
use tally_model::{EventId, Salt, VideoId, ViewEvent};
use tally_reconciler::archive::layout::{self, HOUR_MS};
use tally_reconciler::archive::parquet_io::{encode, ArchivedView};
use tally_reconciler::archive::storage::ArchiveStorage;
use tally_reconciler::recount::{recount, Scope};

const MIN: i64 = 60_000;
/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600_000;
const WINDOW_MS: i64 = 10 * MIN;
const LATENESS_MS: i64 = 60 * MIN;

/// One record of the views topic.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    offset: i64,
    video: &'static str,
    event: &'static str,
    ts_ms: i64,
    received_ms: i64,
    /// The broker's (log-append) time.
    log_ms: i64,
}

/// The stream: two partitions, in offset order (= receive order here).
fn stream() -> Vec<Record> {
    let mut records = Vec::new();
    let mut push = |partition: i32, video, event, ts_ms, received_ms| {
        let offset = records.iter().filter(|r: &&Record| r.partition == partition).count() as i64;
        records.push(Record { partition, offset, video, event, ts_ms, received_ms, log_ms: received_ms });
    };
    // Partition 0, video a.
    push(0, "a", "e1", T0 + 10_000, T0 + 10_000);
    push(0, "a", "e1", T0 + 10_000, T0 + 3 * MIN); // resent inside the window: once
    push(0, "a", "e2", T0 + 5 * MIN, T0 + 5 * MIN);
    push(0, "a", "e2", T0 + 5 * MIN, T0 + 20 * MIN); // resent 15 minutes later, past the window: twice
    push(0, "a", "e4", T0 + 10 * MIN, T0 + 50 * MIN); // 40 minutes late, within the allowed lateness
                                                      // Sent without `ts` (the gateway's receive time stands in), then retried
                                                      // after the hour turned: the retry has a time of the next period.
    push(0, "a", "e3", T0 + 59 * MIN + 30_000, T0 + 59 * MIN + 30_000);
    push(0, "a", "e3", T0 + 60 * MIN + 30_000, T0 + 60 * MIN + 30_000);
    push(0, "a", "e5", T0 + 61 * MIN, T0 + 61 * MIN);
    // Partition 1, video b: the same event id as a's, another video.
    push(1, "b", "e1", T0 + MIN, T0 + MIN);
    push(1, "b", "e1", T0 + MIN, T0 + 12 * MIN); // 11 minutes later: twice
                                                 // Through a gateway whose clock runs 20 minutes ahead: it must not empty
                                                 // the window (the broker's time stands in for its receive time).
    push(1, "b", "e8", T0 + 15 * MIN, T0 + 35 * MIN);
    push(1, "b", "e9", T0 + 16 * MIN, T0 + 16 * MIN);
    push(1, "b", "e9", T0 + 16 * MIN, T0 + 18 * MIN); // resent inside the window: once
    push(1, "b", "e7", T0 + 70 * MIN, T0 + 70 * MIN);
    let ahead = records.iter_mut().find(|r| r.event == "e8").expect("e8");
    ahead.log_ms = T0 + 15 * MIN;
    records
}

/// What the stream holds, by the rule (resends of a video's event id
/// received within the window are one view), worked out by hand.
fn oracle() -> BTreeMap<(String, i64), i64> {
    [
        ("a", T0, 1),
        ("a", T0 + 5 * MIN, 2),
        ("a", T0 + 10 * MIN, 1),
        ("a", T0 + 59 * MIN, 1),
        ("a", T0 + 61 * MIN, 1),
        ("b", T0 + MIN, 2),
        ("b", T0 + 15 * MIN, 1),
        ("b", T0 + 16 * MIN, 1),
        ("b", T0 + 70 * MIN, 1),
    ]
    .into_iter()
    .map(|(video, minute, views)| ((video.to_owned(), minute), views))
    .collect()
}

fn payload(r: &Record) -> Vec<u8> {
    let event = ViewEvent {
        video_id: VideoId::parse(r.video).unwrap(),
        ts_ms: r.ts_ms,
        event_id: EventId::parse(r.event).unwrap(),
        viewer_id: None,
        attributes: None::<Arc<str>>,
        received_ms: r.received_ms,
    };
    let mut out = Vec::new();
    tally_model::wire::encode(&event, Salt::NONE, &mut out);
    out
}

/// The counter's configuration of the rule.
fn rule() -> CountingRule {
    CountingRule {
        allowed_lateness_ms: LATENESS_MS,
        dedup_window_ms: WINDOW_MS,
        dedup_max_entries: 1_000,
        max_clock_skew_ms: MIN,
    }
}

/// Views per (video, minute) as the counter counts them, partition by partition.
fn realtime(records: &[Record]) -> BTreeMap<(String, i64), i64> {
    let rules = Rules {
        counting: rule(),
        dlq: DlqLimits { max_ratio: 0.5, min_records: 100, max_consecutive: 100 },
        max_rows_per_flush: 1_000,
        max_buffered_rows: 1_000,
        flush_interval: Duration::from_secs(3_600),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
    };
    let mut out = BTreeMap::new();
    for partition in [0, 1] {
        let mut state = PartitionState::new(partition, 0, 1, 0, rule().window(), vec![]);
        for r in records.iter().filter(|r| r.partition == partition) {
            let record = Input { offset: r.offset, log_ms: Some(r.log_ms), key: b"", payload: &payload(r) };
            state.process(record, &rules).unwrap();
        }
        for (video, _salt, minute, count) in state.seal(Instant::now(), &rules).rows {
            *out.entry((video.to_string(), minute)).or_default() += i64::from(count);
        }
    }
    out
}

fn archived(r: &Record) -> ArchivedView {
    ArchivedView {
        partition: r.partition,
        offset: r.offset,
        video_id: r.video.into(),
        salt: 0,
        ts_ms: r.ts_ms,
        received_ms: r.received_ms,
        log_ms: Some(r.log_ms),
        event_id: r.event.into(),
        viewer_id: None,
        attributes: None,
    }
}

/// Archives the stream as the archiver does: one file per partition and
/// receive hour (a file ends where the receive hour changes).
async fn archive(records: &[Record]) -> (tempfile::TempDir, ArchiveStorage) {
    let dir = tempfile::tempdir().unwrap();
    let archive = ArchiveStorage::Local(dir.path().to_owned());
    for partition in [0, 1] {
        let rows: Vec<&Record> = records.iter().filter(|r| r.partition == partition).collect();
        for file in rows.chunk_by(|a, b| a.received_ms / HOUR_MS == b.received_ms / HOUR_MS) {
            let (start, end) = (file[0].offset, file[file.len() - 1].offset + 1);
            let name =
                format!("{}/{}", layout::hour_prefix(file[0].received_ms), layout::file_name(partition, start, end));
            let rows: Vec<ArchivedView> = file.iter().map(|r| archived(r)).collect();
            archive.put(&name, encode(&rows, &name).unwrap()).await.unwrap();
        }
    }
    (dir, archive)
}

#[tokio::test]
async fn the_recount_of_each_period_equals_the_realtime_counts() {
    let records = stream();
    let expected = oracle();
    assert_eq!(realtime(&records), expected, "the real-time counter");

    let (_dir, archive) = archive(&records).await;
    let mut batch = BTreeMap::new();
    // Recounted one period at a time, as the reconciler's loop does.
    for period in [T0, T0 + HOUR_MS] {
        let scope =
            Scope { from_ms: period, to_ms: period + HOUR_MS, lookback_ms: 15 * MIN, lookahead_ms: 2 * HOUR_MS };
        let counted = recount(&archive, &scope, &rule()).await.unwrap();
        for ((video, minute), views) in counted.minutes {
            assert!(minute >= period && minute < period + HOUR_MS);
            *batch.entry((video, minute_bucket(minute))).or_insert(0) += views;
        }
    }
    assert_eq!(batch, expected, "the batch recount, period by period");
}
