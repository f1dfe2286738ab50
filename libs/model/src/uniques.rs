//! Unique viewers: HyperLogLog sketches (Apache DataSketches HLL) of viewer
//! pseudonyms, and what every service does with them.
//!
//! Why HLL: its union is a register-wise maximum, so merging the same sketch
//! twice changes nothing. Sketches are kept per owner (source partition) like
//! count rows, and a replayed or re-emitted range cannot inflate uniques.
//! Below a few thousand viewers an HLL sketch holds the exact set of
//! "coupons" (list and set modes): small cardinalities are exact.
//!
//! Compatibility: a viewer is hashed as DataSketches Java and C++ hash a
//! string (MurmurHash3 x64 128, seed 9001, over the UTF-8 bytes with no
//! length prefix), and sketches are stored in the DataSketches serialization
//! (`HLL_4`), so Druid, Spark or the DataSketches libraries can read and
//! merge Tally's sketches.
//!
//! lgK: [`DEFAULT_LG_K`] is 14, not 12. At lgK 12 the relative standard error
//! of a merged sketch is about 1.6 %, so 3.2 % is only two standard
//! deviations: over 1,000 audiences of 1 to 1,000,000 viewers (the accuracy
//! test, `libs/model/tests/uniques_accuracy.rs`), 7 merged estimates fell
//! outside 3.2 % (worst 4.5 %). At lgK 14 (0.8 %) none did (worst 2.2 %;
//! BENCHMARKS.md, "Unique viewers"). A sketch of lgK 14 takes 8 KiB once past
//! about 1,500 viewers, 4 bytes per viewer below. Sketches of different lgK
//! still merge (the union takes the smaller).

use datasketches::common::NumStdDev;
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{Coupon, HllType, HllUnion};

/// A DataSketches HLL sketch (re-exported: services need no direct dependency).
pub use datasketches::hll::HllSketch;

/// The lgK sketches are built with unless configured otherwise.
pub const DEFAULT_LG_K: u8 = 14;

/// The largest lgK a union keeps (the DataSketches maximum).
const MAX_LG_K: u8 = 21;

/// The storage type of every serialized sketch (the most compact one).
const STORED_TYPE: HllType = HllType::Hll4;

/// Why a sketch could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UniquesError {
    /// The bytes are not a DataSketches HLL sketch.
    #[error("not an HLL sketch: {0}")]
    Malformed(String),
    /// lgK outside what DataSketches allows (4..=21).
    #[error("lgK {0} is outside 4..=21")]
    LgK(u8),
}

/// The coupon (hash) of one viewer pseudonym, as DataSketches Java/C++ hash a string.
pub fn viewer_coupon(viewer: &str) -> Coupon {
    Coupon::from_value(raw_bytes::from_str(viewer))
}

/// An empty sketch of `lg_k`.
pub fn new_sketch(lg_k: u8) -> Result<HllSketch, UniquesError> {
    HllSketch::new(lg_k, HllType::Hll8).map_err(|_| UniquesError::LgK(lg_k))
}

/// A sketch's bytes as stored and sent (DataSketches serialization, `HLL_4`).
pub fn serialize(sketch: &HllSketch) -> Vec<u8> {
    if sketch.target_type() == STORED_TYPE {
        return sketch.serialize();
    }
    let mut union = HllUnion::new(sketch.lg_config_k()).unwrap_or_else(|_| unreachable!("lgK of a built sketch"));
    union.update(sketch);
    union.to_sketch(STORED_TYPE).serialize()
}

/// Reads a serialized sketch.
pub fn deserialize(bytes: &[u8]) -> Result<HllSketch, UniquesError> {
    HllSketch::deserialize(bytes).map_err(|e| UniquesError::Malformed(e.to_string()))
}

/// A union of serialized sketches, built up one at a time.
pub struct Merged {
    union: HllUnion,
    inputs: usize,
}

impl Default for Merged {
    fn default() -> Self {
        Self { union: HllUnion::new(MAX_LG_K).unwrap_or_else(|_| unreachable!("21 is valid")), inputs: 0 }
    }
}

impl Merged {
    /// Merges one serialized sketch in.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), UniquesError> {
        self.union.update(&deserialize(bytes)?);
        self.inputs += 1;
        Ok(())
    }

    /// Merges a sketch in.
    pub fn add_sketch(&mut self, sketch: &HllSketch) {
        self.union.update(sketch);
        self.inputs += 1;
    }

    /// How many sketches were merged.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The union, serialized for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.union.to_sketch(STORED_TYPE).serialize()
    }

    /// The estimate of the union, always by the estimator that depends on
    /// the registers alone (DataSketches' composite estimator): a sketch
    /// built in one range keeps the HIP estimator, which depends on the order
    /// of its updates, and a counter crash or rebalance re-cuts ranges. So
    /// the same viewers give the same estimate however flushes split them.
    pub fn estimate(&self) -> UniquesEstimate {
        let merged = self.union.to_sketch(HllType::Hll8);
        // Merging a register array into a non-empty union rebuilds its
        // estimator from the registers (merging is idempotent: the registers
        // and coupons stay as they are). The library has no other way to ask.
        let mut registers_only = HllUnion::new(MAX_LG_K).unwrap_or_else(|_| unreachable!("21 is valid"));
        registers_only.update(&merged);
        registers_only.update(&merged);
        UniquesEstimate::of(&registers_only.to_sketch(HllType::Hll8))
    }
}

/// `stored` (when any) merged with `incoming`, serialized for storage: the
/// write both stores make to a sketch row.
pub fn merge_bytes(stored: Option<&[u8]>, incoming: &[&[u8]]) -> Result<Vec<u8>, UniquesError> {
    let mut merged = Merged::default();
    if let Some(stored) = stored {
        merged.add(stored)?;
    }
    for bytes in incoming {
        merged.add(bytes)?;
    }
    Ok(merged.to_bytes())
}

/// Distinct viewers of a sketch, with bounds at two standard deviations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniquesEstimate {
    /// The estimate, rounded.
    pub uniques: u64,
    /// Lower bound (2 standard deviations), rounded down.
    pub lower_bound: u64,
    /// Upper bound (2 standard deviations), rounded up.
    pub upper_bound: u64,
    /// Whether the sketch still holds every viewer's coupon (small
    /// cardinalities): then the estimate is the count itself and both
    /// bounds equal it.
    pub exact: bool,
}

impl UniquesEstimate {
    /// Nobody.
    pub const ZERO: Self = Self { uniques: 0, lower_bound: 0, upper_bound: 0, exact: true };

    /// The estimate of `sketch`.
    pub fn of(sketch: &HllSketch) -> Self {
        if sketch.is_empty() {
            return Self::ZERO;
        }
        let estimate = sketch.estimate();
        let lower = sketch.lower_bound(NumStdDev::Two);
        let upper = sketch.upper_bound(NumStdDev::Two);
        let uniques = estimate.round() as u64;
        // In coupon mode the relative error is about 5e-5: bounds that round
        // to the estimate mean the coupons are the viewers themselves.
        let exact = lower.round() as u64 == uniques && upper.round() as u64 == uniques;
        if exact {
            return Self { uniques, lower_bound: uniques, upper_bound: uniques, exact };
        }
        Self { uniques, lower_bound: lower.floor() as u64, upper_bound: upper.ceil() as u64, exact }
    }
}

/// A 64-bit key of one viewer pseudonym for exact distinct counting (the
/// batch recount keeps one set of keys per video and period): xxh3 of the
/// UTF-8 bytes. Two of one video's 1,000,000 viewers share a key with a
/// probability of about 3e-8.
pub fn viewer_key(viewer: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(viewer.as_bytes())
}

impl UniquesEstimate {
    /// A count known exactly (the batch recount's).
    pub fn counted(viewers: u64) -> Self {
        Self { uniques: viewers, lower_bound: viewers, upper_bound: viewers, exact: true }
    }

    /// This estimate of a union whose parts (disjoint periods covering it)
    /// were each counted exactly as `parts`: the union holds at least the
    /// largest part and at most their sum, so the bounds and the estimate
    /// are narrowed to that; with one part it is the count itself.
    pub fn within_parts(self, parts: &[u64]) -> Self {
        let (Some(&largest), sum) = (parts.iter().max(), parts.iter().fold(0u64, |a, p| a.saturating_add(*p))) else {
            return self;
        };
        let lower_bound = self.lower_bound.clamp(largest, sum);
        let upper_bound = self.upper_bound.clamp(largest, sum);
        let uniques = self.uniques.clamp(lower_bound, upper_bound);
        if lower_bound == upper_bound {
            return Self::counted(uniques);
        }
        Self { uniques, lower_bound, upper_bound, exact: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(viewers: impl Iterator<Item = String>) -> HllSketch {
        let mut sketch = new_sketch(DEFAULT_LG_K).unwrap();
        for viewer in viewers {
            sketch.update_with_coupon(viewer_coupon(&viewer));
        }
        sketch
    }

    #[test]
    fn viewers_hash_as_datasketches_java_hashes_a_string() {
        // The Java library's HllSketch.update(String) hashes the UTF-8 bytes
        // with MurmurHash3 seed 9001: the same as the raw-bytes wrapper,
        // unlike Rust's own Hash for str (which appends a 0xff terminator).
        assert_eq!(viewer_coupon("viewer-1"), Coupon::from_value(raw_bytes::from_slice(b"viewer-1")));
        assert_ne!(viewer_coupon("viewer-1"), Coupon::from_value("viewer-1"));
    }

    #[test]
    fn small_sets_are_counted_exactly_and_say_so() {
        for n in [1, 2, 7, 99, 100, 1_000] {
            let sketch = sketch_of((0..n).map(|i| format!("viewer-{i}")));
            let estimate = UniquesEstimate::of(&deserialize(&serialize(&sketch)).unwrap());
            assert_eq!((estimate.uniques, estimate.exact), (n, true), "{n} viewers");
            assert_eq!((estimate.lower_bound, estimate.upper_bound), (n, n));
        }
        assert_eq!(UniquesEstimate::of(&new_sketch(DEFAULT_LG_K).unwrap()), UniquesEstimate::ZERO);
    }

    #[test]
    fn merging_the_same_sketch_again_changes_nothing() {
        let a = serialize(&sketch_of((0..50_000).map(|i| format!("a-{i}"))));
        let b = serialize(&sketch_of((25_000..60_000).map(|i| format!("a-{i}"))));
        let once = merge_bytes(Some(&a), &[&b]).unwrap();
        let twice = merge_bytes(Some(&once), &[&b, &a]).unwrap();
        assert_eq!(once, twice, "a union is idempotent, byte for byte");
        let estimate = UniquesEstimate::of(&deserialize(&once).unwrap());
        assert!(!estimate.exact);
        assert!(estimate.lower_bound < 60_000 && 60_000 < estimate.upper_bound, "{estimate:?}");
        assert!((estimate.uniques as f64 - 60_000.0).abs() / 60_000.0 < 0.032, "{estimate:?}");
    }

    #[test]
    fn a_stored_sketch_takes_4_bytes_a_viewer_then_8_kib_at_lg_k_14() {
        // BENCHMARKS.md, "Unique viewers": bytes per (video, hour) row.
        let bytes = |n: u32| serialize(&sketch_of((0..n).map(|i| format!("{i:032x}")))).len();
        let sizes: Vec<(u32, usize)> = [1, 100, 1_000, 2_000, 100_000].into_iter().map(|n| (n, bytes(n))).collect();
        assert_eq!(sizes[..3], [(1, 12), (100, 412), (1_000, 4_012)]);
        assert!(sizes[3..].iter().all(|(_, b)| (8_232..=8_260).contains(b)), "{sizes:?}");
    }

    #[test]
    fn the_estimate_depends_on_the_viewers_not_on_how_flushes_split_them() {
        // One range holding all the viewers (an unmerged sketch keeps the HIP
        // estimator), or the same viewers in three ranges (merged: composite),
        // as after a counter crash re-cut the ranges.
        let viewers = || (0..40_000).map(|i| format!("v-{i}"));
        let mut whole = Merged::default();
        whole.add(&serialize(&sketch_of(viewers()))).unwrap();
        let mut split = Merged::default();
        for part in 0..3 {
            split.add(&serialize(&sketch_of(viewers().skip(part * 13_000).take(14_000)))).unwrap();
        }
        assert_eq!(whole.estimate(), split.estimate());
    }

    #[test]
    fn garbage_is_not_a_sketch() {
        assert!(matches!(deserialize(b"not a sketch"), Err(UniquesError::Malformed(_))));
        assert_eq!(new_sketch(30).err(), Some(UniquesError::LgK(30)));
    }

    #[test]
    fn exact_parts_narrow_an_estimate_and_one_part_is_the_answer() {
        let estimate = UniquesEstimate { uniques: 1_030, lower_bound: 990, upper_bound: 1_070, exact: false };
        assert_eq!(estimate.within_parts(&[1_012]), UniquesEstimate::counted(1_012));
        // Two hours of 600 and 500: the union is 600 to 1,100 viewers.
        let narrowed = estimate.within_parts(&[600, 500]);
        assert_eq!((narrowed.lower_bound, narrowed.upper_bound, narrowed.uniques), (990, 1_070, 1_030));
        let narrowed = estimate.within_parts(&[1_000, 20]);
        assert_eq!(
            (narrowed.lower_bound, narrowed.upper_bound, narrowed.uniques, narrowed.exact),
            (1_000, 1_020, 1_020, false)
        );
        assert_eq!(UniquesEstimate::ZERO.within_parts(&[0, 0]), UniquesEstimate::counted(0));
        assert_eq!(estimate.within_parts(&[]), estimate, "no parts: nothing known");
    }

    #[test]
    fn viewer_keys_are_stable_and_tell_viewers_apart() {
        assert_eq!(viewer_key("viewer-1"), viewer_key("viewer-1"));
        let keys: std::collections::HashSet<u64> = (0..100_000).map(|i| viewer_key(&format!("viewer-{i}"))).collect();
        assert_eq!(keys.len(), 100_000);
    }
}
