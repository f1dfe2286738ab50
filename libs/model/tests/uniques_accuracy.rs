//! Issue 17's accuracy acceptance on the sketch path: 1,000 videos whose
//! audiences run from 1 to 1,000,000 distinct viewers (log-spaced), each
//! audience's views spread over 4 source partitions and 3 hours as the
//! counter sketches them, serialized, then merged as a read merges stored
//! rows (hour sketches into a union). Every estimate must lie within 3.2 % of
//! the exact count, and audiences below 100 must be counted exactly.
//! (The end-to-end path through Kafka, counter, writer and store is tested
//! on a smaller set in the workspace's `tests/uniques.rs`.)
//!
//! `TALLY_TEST_LG_K=12 cargo nextest run -p tally-model --test
//! uniques_accuracy --no-capture` measures another lgK (BENCHMARKS.md).

use tally_model::uniques::{self, Merged, UniquesEstimate, DEFAULT_LG_K};

const VIDEOS: u32 = 1_000;
const PARTITIONS: usize = 4;
const HOURS: usize = 3;

/// A viewer pseudonym as the gateway writes them: 32 hex digits.
fn pseudonym(video: u32, viewer: u32, out: &mut [u8; 32]) -> &str {
    // Distinct per (video, viewer); the hash in the sketch does the mixing.
    let value = (u128::from(video) << 64) | u128::from(viewer) | (0xa5 << 120);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(out).unwrap()
}

fn audience(video: u32) -> u32 {
    1e6f64.powf(f64::from(video) / f64::from(VIDEOS - 1)).round() as u32
}

#[test]
fn a_thousand_audiences_from_1_to_1_000_000_are_estimated_within_3_2_percent_and_exactly_below_100() {
    let mut failures = Vec::new();
    let mut worst = 0f64;
    let mut buffer = [0u8; 32];
    let lg_k = std::env::var("TALLY_TEST_LG_K").map_or(DEFAULT_LG_K, |v| v.parse().expect("TALLY_TEST_LG_K: 4 to 21"));
    for video in 0..VIDEOS {
        let exact = audience(video);
        let mut sketches: Vec<_> = (0..PARTITIONS * HOURS).map(|_| uniques::new_sketch(lg_k).unwrap()).collect();
        for viewer in 0..exact {
            // Some viewers come back in another hour on another partition.
            let cell = (viewer as usize * 7) % sketches.len();
            let coupon = uniques::viewer_coupon(pseudonym(video, viewer, &mut buffer));
            sketches[cell].update_with_coupon(coupon);
            if viewer % 5 == 0 {
                sketches[(cell + 5) % (PARTITIONS * HOURS)].update_with_coupon(coupon);
            }
        }
        let mut merged = Merged::default();
        for sketch in &sketches {
            merged.add(&uniques::serialize(sketch)).unwrap();
        }
        let UniquesEstimate { uniques, lower_bound, upper_bound, exact: said_exact } = merged.estimate();
        let error = (uniques as f64 - f64::from(exact)).abs() / f64::from(exact);
        worst = worst.max(error);
        if error > 0.032 || (exact < 100 && (uniques != u64::from(exact) || !said_exact)) {
            failures.push((exact, uniques, said_exact));
        }
        assert!(lower_bound <= uniques && uniques <= upper_bound);
    }
    println!(
        "lgK {lg_k}: worst relative error over {VIDEOS} audiences {:.4}; {} outside the bounds",
        worst,
        failures.len()
    );
    assert!(failures.is_empty(), "(exact, estimate, said exact) outside the bounds: {failures:?}");
}
