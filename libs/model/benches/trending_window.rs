//! What a refresh of a 24-hour trending window costs the query service,
//! two ways:
//! - *every minute*: merging the window's minute sketches (one per minute
//!   and source partition) into one and picking the candidates of a top 100;
//! - *closed hours cached*: what a refresh costs once the query service
//!   keeps the sums of closed hours (`tally_store::trending::hours`): 23
//!   cached hour sums plus the minute rows of the two edge hours (the
//!   partial first hour and the open last one, 60 minutes together) merged,
//!   then the same candidates. Building the hour sums is not measured: a
//!   closed hour is summed once, not per refresh.
//!
//! `cargo bench -p tally-model --bench trending_window` (TALLY_BENCH_PARTITIONS,
//! default 4; TALLY_BENCH_VIDEOS_PER_MINUTE, distinct videos a partition sees
//! in a minute, default 20,000). Each minute's sketch is built as a counter
//! flush builds it (lg 11 slots: past about 1,536 videos it keeps the
//! heaviest), from a zipf 1.1 draw over 100,000 videos; each phase runs 3
//! times and prints its median.

use std::time::Instant;

use tally_model::trending::{sketch_of, Merged, DEFAULT_LG_MAX_MAP_SIZE};

const MINUTES: usize = 1_440;
const VIDEOS: u64 = 100_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
}

/// Views of the `rank`-th most popular video in a minute of `scale` views (zipf 1.1).
fn views(rank: u64, scale: f64) -> u64 {
    ((scale / (rank as f64).powf(1.1)).round() as u64).max(1)
}

fn main() {
    let partitions = env("TALLY_BENCH_PARTITIONS", 4);
    let per_minute = env("TALLY_BENCH_VIDEOS_PER_MINUTE", 20_000) as u64;
    let started = Instant::now();
    let mut rows = Vec::with_capacity(MINUTES * partitions);
    let mut bytes = 0usize;
    for minute in 0..MINUTES as u64 {
        for partition in 0..partitions as u64 {
            // Each partition holds every partitions-th video; the window drifts
            // slowly so that not every minute has the same heavy hitters.
            let names: Vec<(String, u64)> = (0..per_minute)
                .map(|i| {
                    let rank = 1 + ((i * partitions as u64 + partition + minute * 7) % VIDEOS);
                    (format!("video-{rank}"), views(i + 1, 20_000.0))
                })
                .collect();
            let sketch = sketch_of(DEFAULT_LG_MAX_MAP_SIZE, names.iter().map(|(v, n)| (v.as_str(), *n))).unwrap();
            bytes += sketch.len();
            rows.push(sketch);
        }
    }
    eprintln!(
        "built {} minute sketches ({} partitions), {:.1} MiB, in {:.1} s",
        rows.len(),
        partitions,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let every_minute = median_of_3(|| {
        let mut merged = Merged::default();
        for row in &rows {
            merged.add(row).unwrap();
        }
        merged
    });
    println!(
        "24 h window, {} partitions, every minute merged: merge and top-100 candidates, median of 3: {:.3} s ({:.0} us per minute row)",
        partitions,
        every_minute,
        every_minute * 1e6 / rows.len() as f64
    );
    // Minutes 0..30 and 1,410..1,440 are the edges (a window starting mid-hour);
    // the 23 hours between are closed and cached.
    let edge_minutes = 30 * partitions;
    let (head, rest) = rows.split_at(edge_minutes);
    let (closed, tail) = rest.split_at(rest.len() - edge_minutes);
    let hours: Vec<Merged> = closed
        .chunks(60 * partitions)
        .map(|hour| {
            let mut merged = Merged::default();
            for row in hour {
                merged.add(row).unwrap();
            }
            merged
        })
        .collect();
    assert_eq!(hours.len(), 23);
    let cached = median_of_3(|| {
        let mut merged = Merged::default();
        for row in head.iter().chain(tail) {
            merged.add(row).unwrap();
        }
        for hour in &hours {
            merged.absorb(hour);
        }
        merged
    });
    let edge_bytes: usize = head.iter().chain(tail).map(Vec::len).sum();
    println!(
        "24 h window, {} partitions, closed hours cached: 23 hour sums + {} edge minute rows ({:.1} MiB read) merged, top-100 candidates, median of 3: {:.3} s ({:.1}x less)",
        partitions,
        2 * edge_minutes,
        edge_bytes as f64 / (1 << 20) as f64,
        cached,
        every_minute / cached
    );
}

/// The median of 3 runs of `merge` followed by picking a top 100's candidates, seconds.
fn median_of_3(merge: impl Fn() -> Merged) -> f64 {
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let merged = merge();
        let candidates = merged.candidates(100, 1_000);
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!("merged {} sketches, {} candidates in {elapsed:.3} s", merged.inputs(), candidates.videos.len());
        times.push(elapsed);
    }
    times.sort_by(f64::total_cmp);
    times[1]
}
