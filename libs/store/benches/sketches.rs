//! Embedded-store cost of unique-viewer sketches: batches the way the writer
//! sends them, each with a sketch per (video, source partition) for the
//! current hour, over three hours, to a SQLite file in WAL mode; then a
//! whole-day read of every video.
//!
//! `cargo bench -p tally-store --bench sketches` prints the median of 3 runs:
//! milliseconds per batch applied, sketch rows written per batch (hour and
//! day), milliseconds per whole-day read.

use std::time::Instant;

use tally_model::counts::{FlushChunk, FlushHeader, SketchDelta};
use tally_model::{uniques, Salt};
use tally_store::{CountStore, CountsEntry, SqliteStore, Synchronous};

const VIDEOS: u32 = 100;
const PARTITIONS: u32 = 4;
const HOURS: i64 = 3;
const BATCHES_PER_HOUR: i64 = 30;
const VIEWERS_PER_SKETCH: u32 = 40;
const RUNS: usize = 3;
const T0: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY0: i64 = T0 - 10 * 3_600_000;

fn sketch(first_viewer: u32) -> Vec<u8> {
    let mut sketch = uniques::new_sketch(uniques::DEFAULT_LG_K).expect("lgK");
    for viewer in first_viewer..first_viewer + VIEWERS_PER_SKETCH {
        sketch.update_with_coupon(uniques::viewer_coupon(&format!("viewer-{viewer}")));
    }
    uniques::serialize(&sketch)
}

/// Every batch: one chunk per source partition, a sketch per video of viewers seen nowhere else.
fn batches() -> Vec<Vec<CountsEntry>> {
    let mut next_viewer = 0;
    (0..HOURS * BATCHES_PER_HOUR)
        .map(|batch| {
            let hour = T0 + (batch / BATCHES_PER_HOUR) * 3_600_000;
            (0..PARTITIONS)
                .map(|partition| {
                    let uniques = (0..VIDEOS)
                        .map(|video| {
                            next_viewer += VIEWERS_PER_SKETCH;
                            SketchDelta {
                                video_id: format!("video-{video}"),
                                salt: Salt(0),
                                hour,
                                sketch: sketch(next_viewer),
                            }
                        })
                        .collect();
                    let header = FlushHeader {
                        source_partition: partition,
                        start: batch * 10,
                        end: (batch + 1) * 10,
                        chunk_count: 1,
                        max_received_ms: hour,
                        ..FlushHeader::default()
                    };
                    CountsEntry::chunk(FlushChunk { header, deltas: Vec::new(), uniques, trending: Vec::new() })
                })
                .collect()
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let batches = batches();
    let (mut apply_ms, mut read_ms) = (Vec::new(), Vec::new());
    let mut rows = (0, 0);
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_with(&dir.path().join("counts.db"), Synchronous::Normal).expect("store");
        rows = (0, 0);
        let started = Instant::now();
        for batch in batches.clone() {
            let outcome = store.apply(batch).await.expect("apply");
            rows.0 += outcome.sketch_hour_rows_written;
            rows.1 += outcome.sketch_day_rows_written;
        }
        apply_ms.push(started.elapsed().as_secs_f64() * 1_000.0 / batches.len() as f64);
        let started = Instant::now();
        for video in 0..VIDEOS {
            let read = store.uniques(format!("video-{video}"), DAY0, DAY0 + 86_400_000).await.expect("read");
            assert!(read.estimate.uniques > 0, "video-{video} has viewers");
        }
        read_ms.push(started.elapsed().as_secs_f64() * 1_000.0 / f64::from(VIDEOS));
    }
    let per_batch = |n: u64| n as f64 / batches.len() as f64;
    println!(
        "{} batches of {PARTITIONS} chunks x {VIDEOS} videos' sketches ({VIEWERS_PER_SKETCH} viewers each), {HOURS} hours:",
        batches.len()
    );
    println!("  apply: {:.2} ms per batch (median of {RUNS})", median(apply_ms));
    println!("  rows written per batch: {:.1} hour, {:.1} day", per_batch(rows.0), per_batch(rows.1));
    println!("  whole-day read: {:.3} ms per video (median of {RUNS})", median(read_ms));
}
