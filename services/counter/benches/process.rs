//! Counter CPU cost per event, broker excluded: decode + late check + dedup +
//! aggregate + seal, through `PartitionState::process_run` as the processing
//! thread calls it, on one core, over records shaped like real traffic
//! (zipf-like video popularity over 100k videos, 10% resends).
//!
//! `cargo bench -p tally-counter --bench process` prints the median of 7
//! runs of 2,000,000 records each (events per second, one thread, and per
//! CPU-second of that thread). Viewers (`TALLY_BENCH_VIEWERS`): `distinct`
//! (the default) gives every event a viewer pseudonym as the gateway writes
//! them (32 hex digits) drawn from a million viewers, so the counter
//! sketches unique viewers; `none` sends no viewer id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_counter::dlq::DlqLimits;
use tally_counter::partition::{Input, PartitionState, Rules};
use tally_model::counting::{CountingRule, Dedup};
use tally_model::{wire, EventId, Salt, VideoId, ViewEvent};

/// The allocator the `tally` binary runs with, so the dedup window's memory
/// (and its page size) is what production gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 2_000_000;
const RUNS: usize = 7;

/// A viewer pseudonym as the gateway writes them, for viewer number `n`.
fn pseudonym(n: u64) -> Arc<str> {
    let mixed = u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) << 64 | u128::from(n);
    Arc::from(format!("{mixed:032x}"))
}

/// CPU time of the calling thread so far (Linux: `/proc/thread-self/schedstat`, in ns).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(text.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
}

fn records(viewers: bool) -> Vec<Vec<u8>> {
    // The test kit's xorshift generator; this odd seed gives the sequence the figures were measured with.
    let mut generator = tally_testkit::views::Load::new(0x9e37_79b9_7f4a_7c15);
    let mut rand = move || generator.rand();
    let now = 1_795_341_600_000i64;
    (0..RECORDS)
        .map(|i| {
            // One in ten records resends an earlier event (same id, same video).
            let k = if i > 0 && rand() % 10 == 0 { rand() % i as u64 } else { i as u64 };
            let spread = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            let video = format!("video-{}", 100_000 / (spread % 100_000 + 1));
            let id = format!("evt-{k}");
            let received = now + (i as i64) / 10; // 10k events/s of receive time
            let event = ViewEvent {
                video_id: VideoId::parse(&video).expect("video"),
                ts_ms: received - (rand() % 60_000) as i64,
                event_id: EventId::parse(&id).expect("id"),
                // A resend repeats its viewer; viewers watch several videos.
                viewer_id: viewers.then(|| pseudonym(k.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1_000_000)),
                attributes: None,
                received_ms: received,
            };
            let mut out = Vec::with_capacity(80);
            wire::encode(&event, Salt::NONE, &mut out);
            out
        })
        .collect()
}

fn main() {
    let viewers = match std::env::var("TALLY_BENCH_VIEWERS").as_deref() {
        Ok("none") => false,
        Ok("distinct") | Err(_) => true,
        Ok(other) => panic!("TALLY_BENCH_VIEWERS must be distinct or none, not {other}"),
    };
    let records = records(viewers);
    let rules = Rules {
        counting: CountingRule {
            allowed_lateness_ms: 3_600_000,
            dedup_window_ms: 600_000,
            dedup_max_entries: 2_000_000,
            max_clock_skew_ms: 60_000,
        },
        dlq: DlqLimits { max_ratio: 0.5, min_records: 100, max_consecutive: 1_000 },
        max_rows_per_flush: 100_000,
        max_buffered_rows: 1_000_000,
        flush_interval: Duration::from_secs(1),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
    };
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut duplicates = 0;
    for _ in 0..RUNS {
        let mut state = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 2_000_000), vec![]);
        let records: Vec<(i64, &[u8])> = records.iter().enumerate().map(|(o, p)| (o as i64, &p[..])).collect();
        let started = Instant::now();
        let cpu_before = thread_cpu();
        // As the processing thread does: runs of records, in passes.
        for flush in records.chunks(100_000) {
            let mut i = 0;
            while i < flush.len() {
                i += state
                    .process_run(
                        &flush[i..],
                        |r| Input { offset: r.0, log_ms: None, key: b"", payload: r.1 },
                        started,
                        &rules,
                    )
                    .expect("no poison");
            }
            // Seal every 100k records, as a 1 s flush interval would at 100k/s.
            let job = state.seal(Instant::now(), &rules);
            duplicates += job.header.stats.duplicates;
            state.complete(job.header.end);
        }
        let elapsed = started.elapsed().as_secs_f64();
        rates.push(RECORDS as f64 / elapsed);
        cpu_rates.push(RECORDS as f64 / (thread_cpu() - cpu_before).as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    cpu_rates.sort_by(f64::total_cmp);
    println!(
        "viewers: {}; per CPU-second of the thread: median {:.0} events (min {:.0}, max {:.0})",
        if viewers { "a pseudonym on every event (1,000,000 viewers)" } else { "none" },
        cpu_rates[RUNS / 2],
        cpu_rates[0],
        cpu_rates[RUNS - 1]
    );
    println!(
        "counter process (decode+dedup+aggregate+seal), 1 thread, {RECORDS} records x {RUNS} runs: median {:.0} events/s (min {:.0}, max {:.0}); duplicates per run {}",
        rates[RUNS / 2],
        rates[0],
        rates[RUNS - 1],
        duplicates / RUNS as u32
    );
}
