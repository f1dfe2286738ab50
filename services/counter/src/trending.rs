//! The trending sketches of a flush: one frequent-items sketch per minute
//! the flush touched, of that minute's `(video, views)` over every salt
//! ([`tally_model::trending`]).
//!
//! The writer adds a minute's sketch to its `(minute, source partition)` row
//! only for a newer flush version, so a re-emitted range must carry exactly
//! the same sketches: they are built from the sealed rows alone, which are
//! sorted, so the same range gives the same bytes.

use std::collections::BTreeMap;

use tally_model::counts::MinuteSketch;
use tally_model::trending::{self, TrendingError};
use tally_model::Salt;

/// The sketches of `rows` (a flush's sorted deltas `(video, salt, minute,
/// views)`), one per minute, in minute order.
pub fn minute_sketches(
    lg_max_map_size: u8,
    rows: &[(Box<str>, Salt, i64, u32)],
) -> Result<Vec<MinuteSketch>, TrendingError> {
    let mut minutes: BTreeMap<i64, Vec<(&str, u64)>> = BTreeMap::new();
    for (video, _salt, minute, views) in rows {
        minutes.entry(*minute).or_default().push((video, u64::from(*views)));
    }
    minutes
        .into_iter()
        .map(|(minute, views)| {
            Ok(MinuteSketch { minute, sketch: trending::sketch_of(lg_max_map_size, views.into_iter())? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(video: &str, salt: u16, minute: i64, views: u32) -> (Box<str>, Salt, i64, u32) {
        (Box::from(video), Salt(salt), minute, views)
    }

    #[test]
    fn one_sketch_per_minute_with_salts_merged() {
        let rows = vec![row("a", 0, 0, 2), row("a", 1, 0, 3), row("a", 0, 60_000, 1), row("b", 0, 0, 4)];
        let sketches = minute_sketches(6, &rows).unwrap();
        let minutes: Vec<i64> = sketches.iter().map(|s| s.minute).collect();
        assert_eq!(minutes, vec![0, 60_000]);
        let first = trending::deserialize(&sketches[0].sketch).unwrap();
        assert_eq!((first.estimate("a"), first.estimate("b")), (5, 4));
        let second = trending::deserialize(&sketches[1].sketch).unwrap();
        assert_eq!((second.estimate("a"), second.estimate("b")), (1, 0));
    }

    #[test]
    fn no_rows_no_sketches_and_bad_sizes_are_refused() {
        assert!(minute_sketches(6, &[]).unwrap().is_empty());
        assert_eq!(minute_sketches(2, &[row("a", 0, 0, 1)]).err(), Some(TrendingError::LgMaxMapSize(2)));
    }
}
