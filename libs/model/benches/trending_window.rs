//! What a refresh of a 24-hour trending window costs the query service:
//! merging the window's minute sketches (one per minute and source
//! partition) into one and picking the candidates of a top 100.
//!
//! `cargo bench -p tally-model --bench trending_window` (TALLY_BENCH_PARTITIONS,
//! default 4; TALLY_BENCH_VIDEOS_PER_MINUTE, distinct videos a partition sees
//! in a minute, default 20,000). Each minute's sketch is built as a counter
//! flush builds it (lg 11 slots: past about 1,536 videos it keeps the
//! heaviest), from a zipf 1.1 draw over 100,000 videos; the merge runs 3
//! times and prints the median.

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
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut merged = Merged::default();
        for row in &rows {
            merged.add(row).unwrap();
        }
        let candidates = merged.candidates(100, 1_000);
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!("merged {} sketches, {} candidates in {elapsed:.3} s", merged.inputs(), candidates.videos.len());
        times.push(elapsed);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "24 h window, {} partitions: merge and top-100 candidates, median of 3: {:.3} s ({:.0} us per minute row)",
        partitions,
        times[1],
        times[1] * 1e6 / rows.len() as f64
    );
}
