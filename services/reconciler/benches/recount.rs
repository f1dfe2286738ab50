//! Batch recount throughput: archived events read back from Parquet and
//! counted distinct per `(video, minute)`, one thread.
//!
//! `cargo bench -p tally-reconciler --bench recount` writes 1,000,000 events
//! (10 files, 100k videos zipf-like, 10% resends) to a temporary archive, then
//! prints the median of 5 recounts.

use std::time::Instant;

use tally_model::counting::CountingRule;
use tally_reconciler::archive::layout;
use tally_reconciler::archive::parquet_io::{encode, ArchivedView};
use tally_reconciler::archive::storage::ArchiveStorage;
use tally_reconciler::recount::{recount, Scope};

const EVENTS: i64 = 1_000_000;
const PER_FILE: i64 = 100_000;
const RUNS: usize = 5;

fn main() {
    // Decoding runs on a blocking thread per file; the runtime only fetches.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = ArchiveStorage::Local(dir.path().to_owned());
    let hour = 1_795_341_600_000i64;
    // The test kit's xorshift generator; this odd seed gives the sequence the figures were measured with.
    let mut generator = tally_testkit::views::Load::new(0x9e37_79b9_7f4a_7c15);
    let mut rand = move || generator.rand();
    for file in 0..EVENTS / PER_FILE {
        let rows: Vec<ArchivedView> = (file * PER_FILE..(file + 1) * PER_FILE)
            .map(|i| {
                let k = if i > 0 && rand() % 10 == 0 { (rand() % i as u64) as i64 } else { i };
                let spread = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                let ts = hour + (k * 3_600_000 / EVENTS);
                ArchivedView {
                    partition: 0,
                    offset: i,
                    video_id: format!("video-{}", 100_000 / (spread % 100_000 + 1)),
                    salt: 0,
                    ts_ms: ts,
                    received_ms: ts + 50,
                    log_ms: Some(ts + 50),
                    event_id: format!("evt-{k}"),
                    viewer_id: Some("viewer-1234".into()),
                    attributes: None,
                }
            })
            .collect();
        let path =
            format!("{}/{}", layout::hour_prefix(hour), layout::file_name(0, file * PER_FILE, (file + 1) * PER_FILE));
        runtime.block_on(archive.put(&path, encode(&rows, &path).expect("encode"))).expect("write");
    }
    let rule = CountingRule {
        allowed_lateness_ms: 3_600_000,
        dedup_window_ms: 600_000,
        dedup_max_entries: 2_000_000,
        max_clock_skew_ms: 60_000,
    };
    let mut rates = Vec::new();
    let mut distinct = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let scope = Scope { from_ms: hour, to_ms: hour + 3_600_000, lookback_ms: 0, lookahead_ms: 0 };
        let counted = runtime.block_on(recount(&archive, &scope, &rule)).expect("recount");
        rates.push(counted.rows_read as f64 / started.elapsed().as_secs_f64());
        distinct = counted.minutes.values().sum::<i64>();
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "recount from Parquet, 1 thread, {EVENTS} events in {} files x {RUNS} runs: median {:.0} events/s (min {:.0}, max {:.0}); {distinct} distinct views",
        EVENTS / PER_FILE,
        rates[RUNS / 2],
        rates[0],
        rates[RUNS - 1]
    );
}
