//! The viewers of one open range: an HLL sketch per `(video_id, salt, hour)`
//! of the pseudonyms of the views counted ([`tally_model::uniques`]).
//!
//! Built in offset order from the deduplicated views of the range, so a
//! re-emitted range (same records, same dedup state) yields the same sketches
//! byte for byte, like its deltas.

use std::collections::HashMap;

use tally_model::uniques::{self, HllSketch};
use tally_model::Salt;

/// One video's sketch of one hour under one salt.
#[derive(Debug)]
struct HourSketch {
    salt: Salt,
    hour: i64,
    sketch: HllSketch,
}

/// A sealed sketch: video, salt, hour (epoch ms) and its serialized bytes.
pub type SketchRow = (Box<str>, Salt, i64, Vec<u8>);

/// Sketches of one open range.
#[derive(Debug, Default)]
pub struct Viewers {
    /// Per video, its sketches (almost always one: one hour, one salt).
    rows: HashMap<Box<str>, Vec<HourSketch>, foldhash::fast::RandomState>,
}

impl Viewers {
    /// Adds the viewer of one counted view at `ts_ms`; a new sketch gets
    /// `lg_k` (checked by the configuration).
    pub fn add(&mut self, video_id: &str, salt: Salt, ts_ms: i64, viewer: &str, lg_k: u8) {
        let hour = ts_ms.div_euclid(3_600_000) * 3_600_000;
        let coupon = uniques::viewer_coupon(viewer);
        let sketches = match self.rows.get_mut(video_id) {
            Some(sketches) => sketches,
            None => self.rows.entry(Box::from(video_id)).or_default(),
        };
        if let Some(row) = sketches.iter_mut().find(|r| r.salt == salt && r.hour == hour) {
            row.sketch.update_with_coupon(coupon);
            return;
        }
        let mut sketch = uniques::new_sketch(lg_k).unwrap_or_else(|e| panic!("{e}: checked at configuration"));
        sketch.update_with_coupon(coupon);
        sketches.push(HourSketch { salt, hour, sketch });
    }

    /// Whether no viewer was added since the last drain.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Takes every sketch out, serialized and sorted (a re-emitted flush is byte-identical).
    pub fn drain_sorted(&mut self) -> Vec<SketchRow> {
        let mut out: Vec<SketchRow> = Vec::new();
        for (video, sketches) in self.rows.drain() {
            for row in sketches {
                out.push((video.clone(), row.salt, row.hour, uniques::serialize(&row.sketch)));
            }
        }
        out.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_are_sketched_per_video_salt_and_hour() {
        let mut viewers = Viewers::default();
        for (video, salt, ts, viewer) in [
            ("b", 0, 10, "x"),
            ("a", 1, 3_600_000, "x"),
            ("a", 1, 3_600_001, "y"),
            ("a", 1, 3_600_002, "x"),
            ("a", 2, 3_600_000, "x"),
            ("a", 1, 0, "z"),
        ] {
            viewers.add(video, Salt(salt), ts, viewer, 12);
        }
        let rows = viewers.drain_sorted();
        let keys: Vec<(&str, u16, i64, u64)> = rows
            .iter()
            .map(|(v, s, h, bytes)| {
                (&**v, s.0, *h, uniques::UniquesEstimate::of(&uniques::deserialize(bytes).unwrap()).uniques)
            })
            .collect();
        assert_eq!(keys, vec![("a", 1, 0, 1), ("a", 1, 3_600_000, 2), ("a", 2, 3_600_000, 1), ("b", 0, 0, 1)]);
        assert!(viewers.is_empty());
    }

    #[test]
    fn the_same_views_give_the_same_bytes() {
        let build = || {
            let mut viewers = Viewers::default();
            for i in 0..5_000 {
                viewers.add("v", Salt(0), i, &format!("viewer-{}", i % 3_000), 14);
            }
            viewers.drain_sorted()
        };
        assert_eq!(build(), build());
    }
}
