//! Embedded-store write throughput: delta rows per second applied (with
//! version checks, hour/day/total rollups and progress) in batches the way
//! the writer sends them, to a SQLite file in WAL mode.
//!
//! `cargo bench -p tally-store --bench apply` prints the median of 5 runs of
//! 200,000 fresh rows each, plus the replay rate (every row stale), for the
//! default durability (`synchronous = FULL`, a sync per commit) and for
//! `store.sqlite-synchronous = "normal"`, run by run alternately; and the
//! rate of one-row commits (the cost of a commit alone) in both modes.

use std::time::Instant;

use tally_model::counts::{Delta, FlushChunk, FlushHeader};
use tally_model::Salt;
use tally_store::{CountStore, SqliteStore, Synchronous};

const ROWS: usize = 200_000;
const CHUNK_ROWS: usize = 5_000;
const CHUNKS_PER_BATCH: usize = 4;
const RUNS: usize = 5;
const SMALL_COMMITS: usize = 500;

fn chunks() -> Vec<FlushChunk> {
    let t0 = 1_795_341_600_000i64;
    (0..ROWS / CHUNK_ROWS)
        .map(|c| FlushChunk {
            header: FlushHeader {
                source_partition: (c % 12) as u32,
                start: c as i64 * 1_000,
                end: (c as i64 + 1) * 1_000,
                chunk_count: 1,
                max_received_ms: t0,
                ..FlushHeader::default()
            },
            deltas: (0..CHUNK_ROWS)
                .map(|r| Delta {
                    video_id: format!("video-{}", (c * CHUNK_ROWS + r) % 50_000),
                    salt: Salt(0),
                    minute: t0 + ((c * CHUNK_ROWS + r) / 50_000) as i64 * 60_000,
                    count: 3,
                })
                .collect(),
            uniques: Vec::new(),
            trending: Vec::new(),
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let chunks = chunks();
    let modes = [Synchronous::Full, Synchronous::Normal];
    // Rates per mode: fresh rows, then replayed (all stale); the modes alternate run by run.
    let mut rates: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); modes.len()];
    for _ in 0..RUNS {
        for (mode, (fresh, replay)) in modes.iter().zip(rates.iter_mut()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open_with(&dir.path().join("counts.db"), *mode).expect("store");
            for (into, expect_applied) in [(&mut *fresh, true), (&mut *replay, false)] {
                let started = Instant::now();
                for batch in chunks.chunks(CHUNKS_PER_BATCH) {
                    let outcome = store
                        .apply(batch.iter().cloned().map(tally_store::CountsEntry::chunk).collect())
                        .await
                        .expect("apply");
                    assert_eq!(outcome.applied > 0, expect_applied);
                }
                into.push(ROWS as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    // The cost per commit alone: one-row batches (what a quiet writer sends).
    let mut commits: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..RUNS {
        for (mode, into) in modes.iter().zip(commits.iter_mut()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open_with(&dir.path().join("counts.db"), *mode).expect("store");
            let started = Instant::now();
            for (i, chunk) in chunks.iter().cycle().take(SMALL_COMMITS).enumerate() {
                let mut one = chunk.clone();
                one.deltas.truncate(1);
                one.header.end = i as i64 + 1;
                store.apply(vec![tally_store::CountsEntry::chunk(one)]).await.expect("apply");
            }
            into.push(SMALL_COMMITS as f64 / started.elapsed().as_secs_f64());
        }
    }
    for (mode, into) in modes.iter().zip(commits.iter_mut()) {
        into.sort_by(f64::total_cmp);
        println!(
            "sqlite store apply (synchronous {mode:?}), {SMALL_COMMITS} one-row commits x {RUNS} runs: median {:.0} commits/s (min {:.0}, max {:.0})",
            into[RUNS / 2],
            into[0],
            into[RUNS - 1]
        );
    }
    for (mode, (fresh, replay)) in modes.iter().zip(rates.iter_mut()) {
        fresh.sort_by(f64::total_cmp);
        replay.sort_by(f64::total_cmp);
        println!(
            "sqlite store apply (synchronous {mode:?}), {ROWS} rows in batches of {} x {RUNS} runs: median {:.0} rows/s fresh (min {:.0}, max {:.0}); replay (all stale) median {:.0} rows/s",
            CHUNK_ROWS * CHUNKS_PER_BATCH,
            fresh[RUNS / 2],
            fresh[0],
            fresh[RUNS - 1],
            replay[RUNS / 2]
        );
    }
}
