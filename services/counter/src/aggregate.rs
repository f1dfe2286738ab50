//! In-memory pre-aggregation of one partition's open range: views per
//! `(video_id, salt, minute)`.

use std::collections::HashMap;

use tally_model::Salt;

/// One row's position and count: (salt, minute, views).
type Cell = (Salt, i64, u32);

/// Counts of one open range.
#[derive(Debug)]
pub struct Aggregate {
    /// Per video: its first cell inline and any others after it (almost
    /// always none: one minute of an unsalted video), so a video costs one
    /// allocation, its id, which moves into its last flushed row.
    rows: HashMap<Box<str>, (Cell, Vec<Cell>), foldhash::fast::RandomState>,
    distinct: usize,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self { rows: HashMap::with_hasher(foldhash::fast::RandomState::default()), distinct: 0 }
    }
}

impl Aggregate {
    /// Counts one view.
    pub fn add(&mut self, video_id: &str, salt: Salt, minute: i64) {
        let Some((first, more)) = self.rows.get_mut(video_id) else {
            self.rows.insert(Box::from(video_id), ((salt, minute, 1), Vec::new()));
            self.distinct += 1;
            return;
        };
        if first.0 == salt && first.1 == minute {
            first.2 += 1;
            return;
        }
        match more.iter_mut().find(|(s, m, _)| *s == salt && *m == minute) {
            Some(cell) => cell.2 += 1,
            None => {
                more.push((salt, minute, 1));
                self.distinct += 1;
            }
        }
    }

    /// Distinct rows held.
    pub fn distinct_rows(&self) -> usize {
        self.distinct
    }

    /// Takes every row out, sorted (so a re-emitted flush is byte-identical).
    pub fn drain_sorted(&mut self) -> Vec<(Box<str>, Salt, i64, u32)> {
        let mut out = Vec::with_capacity(self.distinct);
        for (video, (first, more)) in self.rows.drain() {
            for (salt, minute, count) in more {
                out.push((video.clone(), salt, minute, count));
            }
            out.push((video, first.0, first.1, first.2));
        }
        self.distinct = 0;
        out.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_summed_per_video_salt_and_minute() {
        let mut agg = Aggregate::default();
        for _ in 0..3 {
            agg.add("b", Salt(0), 60_000);
        }
        agg.add("a", Salt(2), 0);
        agg.add("a", Salt(1), 0);
        agg.add("a", Salt(1), 0);
        agg.add("a", Salt(1), 60_000);
        assert_eq!(agg.distinct_rows(), 4);
        let rows = agg.drain_sorted();
        let flat: Vec<(&str, u16, i64, u32)> = rows.iter().map(|(v, s, m, c)| (&**v, s.0, *m, *c)).collect();
        assert_eq!(flat, vec![("a", 1, 0, 2), ("a", 1, 60_000, 1), ("a", 2, 0, 1), ("b", 0, 60_000, 3)]);
        assert_eq!(agg.distinct_rows(), 0);
        assert!(agg.drain_sorted().is_empty());
    }
}
