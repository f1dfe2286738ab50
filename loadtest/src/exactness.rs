//! Lost and duplicated views: the counts the query API returns against what
//! the run was acknowledged.
//!
//! An acknowledged view must be counted exactly once. A view whose request
//! was never acknowledged (the client gave up while refused) may or may not
//! have reached the broker: a 503 after the ack timeout does not say. So each
//! video's count must lie between its acknowledged views and its
//! acknowledged plus unacknowledged views; below is lost, above duplicated.

use std::collections::{BTreeMap, HashSet};

/// One view: a video and an event id (resends of an id are the same view).
pub type View = (String, u64);

/// A set of views, hashed with foldhash: a run inserts millions.
pub type Views = HashSet<View, foldhash::fast::RandomState>;

/// Per video, the fewest and the most views a correct pipeline counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Distinct acknowledged views per video.
    pub at_least: BTreeMap<String, i64>,
    /// Plus the distinct views of requests never acknowledged.
    pub at_most: BTreeMap<String, i64>,
}

impl Expected {
    /// From the views acknowledged and those sent but never acknowledged.
    pub fn new(acknowledged: &Views, unacknowledged: &Views) -> Self {
        let mut expected = Self::default();
        for (video, _) in acknowledged {
            *expected.at_least.entry(video.clone()).or_default() += 1;
            *expected.at_most.entry(video.clone()).or_default() += 1;
        }
        for (video, id) in unacknowledged {
            if !acknowledged.contains(&(video.clone(), *id)) {
                *expected.at_most.entry(video.clone()).or_default() += 1;
            }
        }
        expected
    }

    /// Every video a count is expected for.
    pub fn videos(&self) -> impl Iterator<Item = &String> {
        self.at_most.keys()
    }

    /// Views acknowledged, in all.
    pub fn acknowledged(&self) -> i64 {
        self.at_least.values().sum()
    }

    /// Lost and duplicated views given the counts `got` (a missing video counts 0).
    pub fn discrepancy(&self, got: &BTreeMap<String, i64>) -> Discrepancy {
        let count = |video: &String| got.get(video).copied().unwrap_or(0);
        let lost = self.at_least.iter().map(|(v, n)| (n - count(v)).max(0)).sum();
        let duplicated = self.at_most.iter().map(|(v, n)| (count(v) - n).max(0)).sum();
        Discrepancy { lost, duplicated }
    }
}

/// Views missing from, and views beyond, the expected counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Discrepancy {
    /// Acknowledged views not counted.
    pub lost: i64,
    /// Views counted more often than they could have been sent.
    pub duplicated: i64,
}

impl Discrepancy {
    /// Neither lost nor duplicated views.
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(list: &[(&str, u64)]) -> Views {
        list.iter().map(|(v, id)| ((*v).to_owned(), *id)).collect()
    }

    fn counts(list: &[(&str, i64)]) -> BTreeMap<String, i64> {
        list.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect()
    }

    #[test]
    fn acknowledged_views_must_be_counted_and_unacknowledged_ones_may_be() {
        // "a": ids 1, 2 acknowledged, 3 never; 2 also in a request given up on.
        let expected = Expected::new(&views(&[("a", 1), ("a", 2), ("b", 7)]), &views(&[("a", 2), ("a", 3), ("c", 9)]));
        assert_eq!(expected.at_least, counts(&[("a", 2), ("b", 1)]));
        assert_eq!(expected.at_most, counts(&[("a", 3), ("b", 1), ("c", 1)]));
        assert_eq!(expected.acknowledged(), 3);
        for exact in [counts(&[("a", 2), ("b", 1)]), counts(&[("a", 3), ("b", 1), ("c", 1)])] {
            assert!(expected.discrepancy(&exact).exact(), "{exact:?}");
        }
        assert_eq!(expected.discrepancy(&counts(&[("a", 1)])), Discrepancy { lost: 2, duplicated: 0 });
        assert_eq!(
            expected.discrepancy(&counts(&[("a", 4), ("b", 1), ("c", 2)])),
            Discrepancy { lost: 0, duplicated: 2 }
        );
    }
}
