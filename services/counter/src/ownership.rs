//! The life of one source partition in this counter, as one state machine:
//!
//! ```text
//!   claimed and recovered      revoked, or shutting down      drained
//!  ───────────────────▶ Owned ─────────────────────▶ Draining ────────▶ Released
//!                         ▲                                               │
//!                         └────────── assigned again: a new claim ────────┘
//! ```
//!
//! - **Owned**: its records are counted; flushes are sealed, emitted, and
//!   their ends stored for commit once acknowledged.
//! - **Draining**: no record is counted any more; the flushes in flight are
//!   awaited, what was counted since is sealed (unless the assignment was
//!   lost), and the acknowledged ends are committed synchronously.
//! - **Released**: only the owner token is left. A flush the drain gave up
//!   waiting for may still be acknowledged later (the emitter retries it);
//!   its completion names this owner, which is how it is recognised and
//!   ignored: its end must never be committed for a later owner of the
//!   partition, who has not counted that range (and whose claim fences the
//!   late flush at the writer).
//!
//! Every completion carries the owner of its flush; one that does not match
//! the owner of a partition's Owned or Draining state is ignored and counted
//! (`tally_counter_stale_completions_total`).

use std::collections::HashMap;

use crate::partition::PartitionState;

/// Where one source partition stands.
#[derive(Debug)]
pub enum Slot {
    /// Counting.
    Owned(PartitionState),
    /// Being given up: flushes finish, nothing new is counted.
    Draining(PartitionState),
    /// Given up; `owner` was its last owner.
    Released {
        /// The token of the claim that owned it.
        owner: u64,
    },
}

/// Why a partition could not change state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// Assigned while this counter still holds it: the group protocol
    /// revokes a partition before assigning it again.
    #[error("partition {0} assigned while still owned or draining")]
    AlreadyHeld(i32),
}

/// A completion judged against the current owner of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Its owner released the partition (the drain gave up on the flush).
    Released,
    /// Another owner holds the partition now.
    OtherOwner {
        /// The owner holding it.
        current: u64,
    },
    /// This counter never held the partition.
    Unknown,
}

/// The partitions this counter holds or held (looked up once per record
/// run: a fast hasher).
#[derive(Debug, Default)]
pub struct Partitions {
    slots: HashMap<i32, Slot, foldhash::fast::FixedState>,
}

impl Partitions {
    /// Makes `state` the owned state of its partition: vacant or released
    /// before, never held.
    pub fn own(&mut self, state: PartitionState) -> Result<(), OwnershipError> {
        let partition = state.partition;
        if let Some(Slot::Owned(_) | Slot::Draining(_)) = self.slots.get(&partition) {
            return Err(OwnershipError::AlreadyHeld(partition));
        }
        self.slots.insert(partition, Slot::Owned(state));
        Ok(())
    }

    /// The owned state of `partition` (not draining, not released).
    pub fn owned_mut(&mut self, partition: i32) -> Option<&mut PartitionState> {
        match self.slots.get_mut(&partition) {
            Some(Slot::Owned(state)) => Some(state),
            _ => None,
        }
    }

    /// Every owned state.
    pub fn owned(&self) -> impl Iterator<Item = &PartitionState> {
        self.slots.values().filter_map(|slot| match slot {
            Slot::Owned(state) => Some(state),
            _ => None,
        })
    }

    /// Every owned state, mutably.
    pub fn owned_iter_mut(&mut self) -> impl Iterator<Item = &mut PartitionState> {
        self.slots.values_mut().filter_map(|slot| match slot {
            Slot::Owned(state) => Some(state),
            _ => None,
        })
    }

    /// Partitions owned.
    pub fn owned_count(&self) -> usize {
        self.owned().count()
    }

    /// The state of `partition` while this counter holds it (owned or draining).
    pub fn held(&self, partition: i32) -> Option<&PartitionState> {
        match self.slots.get(&partition) {
            Some(Slot::Owned(state) | Slot::Draining(state)) => Some(state),
            _ => None,
        }
    }

    /// Every held state (owned or draining), mutably.
    pub fn held_iter_mut(&mut self) -> impl Iterator<Item = &mut PartitionState> {
        self.slots.values_mut().filter_map(|slot| match slot {
            Slot::Owned(state) | Slot::Draining(state) => Some(state),
            Slot::Released { .. } => None,
        })
    }

    /// Whether this counter holds `partition` (owned or draining).
    pub fn holds(&self, partition: i32) -> bool {
        self.held(partition).is_some()
    }

    /// The held state of `partition` if `owner` holds it; otherwise why not.
    pub fn held_by(&mut self, partition: i32, owner: u64) -> Result<&mut PartitionState, Stale> {
        match self.slots.get_mut(&partition) {
            Some(Slot::Owned(state) | Slot::Draining(state)) => {
                if state.owner == owner {
                    Ok(state)
                } else {
                    Err(Stale::OtherOwner { current: state.owner })
                }
            }
            Some(Slot::Released { owner: released }) if *released == owner => Err(Stale::Released),
            Some(Slot::Released { .. }) | None => Err(Stale::Unknown),
        }
    }

    /// Owned partitions `selected` picks start draining.
    pub fn drain(&mut self, selected: impl Fn(i32) -> bool) {
        for partition in self.picked(|p, slot| selected(p) && matches!(slot, Slot::Owned(_))) {
            if let Some(Slot::Owned(state)) = self.slots.remove(&partition) {
                self.slots.insert(partition, Slot::Draining(state));
            }
        }
    }

    /// Whether a draining partition `selected` picks still has a flush in flight.
    pub fn draining_in_flight(&self, selected: impl Fn(i32) -> bool) -> bool {
        self.slots.iter().any(|(p, slot)| matches!(slot, Slot::Draining(s) if selected(*p) && s.in_flight().is_some()))
    }

    /// Every draining state `selected` picks, mutably.
    pub fn draining_mut(&mut self, selected: impl Fn(i32) -> bool) -> impl Iterator<Item = &mut PartitionState> {
        self.slots.iter_mut().filter_map(move |(p, slot)| match slot {
            Slot::Draining(state) if selected(*p) => Some(state),
            _ => None,
        })
    }

    /// Draining partitions `selected` picks are released; returns their final states.
    pub fn release(&mut self, selected: impl Fn(i32) -> bool) -> Vec<PartitionState> {
        let mut released = Vec::new();
        for partition in self.picked(|p, slot| selected(p) && matches!(slot, Slot::Draining(_))) {
            if let Some(Slot::Draining(state)) = self.slots.remove(&partition) {
                self.slots.insert(partition, Slot::Released { owner: state.owner });
                released.push(state);
            }
        }
        released
    }

    /// Partitions that `pick` picks.
    fn picked(&self, pick: impl Fn(i32, &Slot) -> bool) -> Vec<i32> {
        self.slots.iter().filter(|(p, slot)| pick(**p, slot)).map(|(p, _)| *p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_model::counting::Dedup;

    fn state(partition: i32, owner: u64) -> PartitionState {
        PartitionState::new(partition, 0, owner, 0, Dedup::new(1_000, 10), vec![])
    }

    #[test]
    fn a_partition_goes_from_owned_through_draining_to_released_and_can_be_owned_again() {
        let mut partitions = Partitions::default();
        partitions.own(state(0, 1)).unwrap();
        partitions.own(state(1, 2)).unwrap();
        assert_eq!(partitions.own(state(0, 3)), Err(OwnershipError::AlreadyHeld(0)));
        partitions.drain(|p| p == 0);
        assert!(partitions.owned_mut(0).is_none(), "a draining partition counts nothing");
        assert!(partitions.holds(0));
        assert_eq!(partitions.own(state(0, 3)), Err(OwnershipError::AlreadyHeld(0)));
        let released = partitions.release(|p| p == 0);
        assert_eq!(released.len(), 1);
        assert!(!partitions.holds(0));
        assert_eq!(partitions.held_by(0, 1).err(), Some(Stale::Released));
        partitions.own(state(0, 3)).unwrap();
        assert_eq!(partitions.held_by(0, 1).err(), Some(Stale::OtherOwner { current: 3 }));
        assert!(partitions.held_by(0, 3).is_ok());
        assert_eq!(partitions.held_by(7, 3).err(), Some(Stale::Unknown));
        assert_eq!(partitions.owned_count(), 2);
    }
}
