//! Fencing: which chunks of the counts topic count.
//!
//! Each source partition has one owner at a time: the counter whose
//! [`Claim`] came last in the counts partition. A chunk is admitted only
//! when it carries the current owner's token; chunks of a superseded owner
//! (a zombie that woke up after its session expired and its successor
//! claimed) are fenced, whatever their range.
//!
//! Why that is enough: a new owner writes its claim before reading the
//! counts partition's tail, and reads the tail up to its claim. Every chunk
//! of an earlier owner that lands before the claim is therefore seen by the
//! new owner, which re-emits the same ranges (same boundaries, same deltas,
//! same versions: no-ops where already applied); every chunk that lands
//! after the claim is fenced here. No range is counted twice, none is lost.
//!
//! The fold is deterministic in log order and idempotent under replay: a
//! claim only takes over from an older one (smaller counts offset), and a
//! repeated claim of the current owner (a producer retry) changes nothing.

use std::collections::{BTreeMap, HashMap};

use super::{Claim, FlushHeader};

/// The owner of a source partition as the fold knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The owner's token.
    pub owner: u64,
    /// Counts offset of its claim; `-1` when it was adopted from a chunk
    /// because no claim was known (any claim then supersedes it).
    pub claim_offset: i64,
}

/// What the fold decided about a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Apply it.
    Admitted,
    /// Drop it: another owner claimed the partition.
    Fenced {
        /// The owner in charge.
        current: u64,
    },
}

/// Owners of source partitions, folded from claims in log order.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    owners: HashMap<u32, Owner>,
    changed: BTreeMap<u32, Owner>,
}

impl Fences {
    /// Starts from owners already stored.
    pub fn new(known: impl IntoIterator<Item = (u32, Owner)>) -> Self {
        Self { owners: known.into_iter().collect(), changed: BTreeMap::new() }
    }

    /// Folds a claim found at `offset` of the counts partition; returns
    /// whether the owner changed.
    pub fn claim(&mut self, claim: &Claim, offset: i64) -> bool {
        let takes_over = match self.owners.get(&claim.source_partition) {
            None => true,
            Some(current) => current.owner != claim.owner && offset > current.claim_offset,
        };
        if takes_over {
            self.set(claim.source_partition, Owner { owner: claim.owner, claim_offset: offset });
        }
        takes_over
    }

    /// Decides about a chunk. A chunk of a partition nobody claimed yet
    /// (its claim is older than what the fold has seen) makes its owner current.
    pub fn admit(&mut self, header: &FlushHeader) -> Admission {
        match self.owners.get(&header.source_partition) {
            Some(current) if current.owner == header.owner => Admission::Admitted,
            Some(current) => Admission::Fenced { current: current.owner },
            None => {
                self.set(header.source_partition, Owner { owner: header.owner, claim_offset: -1 });
                Admission::Admitted
            }
        }
    }

    /// Whether a chunk read at `offset` of its counts partition comes before
    /// the claim of its partition's current owner. Such a chunk is a replay (a
    /// restarted writer reading its partition again): the log was folded past
    /// it when the claim was stored, so it was admitted or fenced then. Not
    /// admitting it again is right either way, and it is no new zombie chunk.
    /// `offset < 0` (position unknown) is never a replay.
    pub fn precedes_claim(&self, header: &FlushHeader, offset: i64) -> bool {
        offset >= 0 && self.owners.get(&header.source_partition).is_some_and(|current| offset < current.claim_offset)
    }

    /// The current owner of `source_partition`.
    pub fn owner(&self, source_partition: u32) -> Option<Owner> {
        self.owners.get(&source_partition).copied()
    }

    /// Owners changed since [`Fences::new`] (to be stored), by source partition.
    pub fn changed(&self) -> Vec<(u32, Owner)> {
        self.changed.iter().map(|(p, o)| (*p, *o)).collect()
    }

    fn set(&mut self, source_partition: u32, owner: Owner) {
        self.owners.insert(source_partition, owner);
        self.changed.insert(source_partition, owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(partition: u32, owner: u64) -> Claim {
        Claim { source_partition: partition, owner, ..Claim::default() }
    }

    fn chunk(partition: u32, owner: u64) -> FlushHeader {
        FlushHeader { source_partition: partition, owner, chunk_count: 1, ..FlushHeader::default() }
    }

    #[test]
    fn a_zombie_chunk_after_its_successors_claim_is_fenced() {
        let mut fences = Fences::default();
        assert!(fences.claim(&claim(3, 1), 10));
        assert_eq!(fences.admit(&chunk(3, 1)), Admission::Admitted);
        assert!(fences.claim(&claim(3, 2), 20));
        assert_eq!(fences.admit(&chunk(3, 1)), Admission::Fenced { current: 2 });
        assert_eq!(fences.admit(&chunk(3, 2)), Admission::Admitted);
        assert_eq!(fences.admit(&chunk(4, 1)), Admission::Admitted, "owners are per source partition");
    }

    #[test]
    fn a_repeated_claim_does_not_fence_its_own_owner() {
        let mut fences = Fences::default();
        fences.claim(&claim(0, 7), 10);
        assert!(!fences.claim(&claim(0, 7), 11), "a producer retry wrote the claim twice");
        assert_eq!(fences.admit(&chunk(0, 7)), Admission::Admitted);
        assert_eq!(fences.owner(0), Some(Owner { owner: 7, claim_offset: 10 }));
    }

    #[test]
    fn replaying_older_claims_over_stored_owners_changes_nothing() {
        let stored = [(0, Owner { owner: 9, claim_offset: 50 })];
        let mut fences = Fences::new(stored);
        assert!(!fences.claim(&claim(0, 8), 40), "replayed from before the stored claim");
        assert_eq!(fences.admit(&chunk(0, 8)), Admission::Fenced { current: 9 });
        assert!(fences.changed().is_empty());
        assert!(fences.claim(&claim(0, 10), 60));
        assert_eq!(fences.changed(), vec![(0, Owner { owner: 10, claim_offset: 60 })]);
    }

    #[test]
    fn a_chunk_before_the_current_claim_is_a_replay_and_one_after_it_a_zombie() {
        // A writer restarted and reads the partition again over the owners it stored.
        let fences = Fences::new([(0, Owner { owner: 2, claim_offset: 20 })]);
        assert!(fences.precedes_claim(&chunk(0, 1), 10), "counter 1's chunk came before counter 2's claim");
        assert!(!fences.precedes_claim(&chunk(0, 1), 21), "after the claim: a zombie");
        assert!(!fences.precedes_claim(&chunk(0, 1), -1), "position unknown");
        assert!(!fences.precedes_claim(&chunk(1, 1), 10), "partition 1 has no owner");
    }

    #[test]
    fn an_unclaimed_owner_is_adopted_until_a_claim_arrives() {
        let mut fences = Fences::default();
        assert_eq!(fences.admit(&chunk(1, 5)), Admission::Admitted);
        assert_eq!(fences.owner(1), Some(Owner { owner: 5, claim_offset: -1 }));
        assert!(fences.claim(&claim(1, 6), 0));
        assert_eq!(fences.admit(&chunk(1, 5)), Admission::Fenced { current: 6 });
    }
}
