//! The fencing fold over one batch, shared by both stores: the stored owners
//! plus the batch's claims decide, in log order, which chunks are applied
//! (see [`tally_model::counts::fence`]).

use tally_model::counts::{Admission, CountsRecord, Fences, FlushChunk, Owner};

use crate::model::{ApplyOutcome, CountsEntry};

/// What a batch comes to once fenced.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Chunks to apply, in log order.
    pub chunks: Vec<FlushChunk>,
    /// Owners to store (after the chunks).
    pub owners: Vec<(u32, Owner)>,
    /// What was not admitted: `fenced` and `fenced_chunks` for chunks of
    /// superseded owners that came after their successor's claim (zombies);
    /// `stale` for the deltas of chunks that came before it (a replay of a
    /// range decided when first read). `applied` is 0.
    pub fenced: ApplyOutcome,
}

/// Folds `entries` over the `stored` owners.
pub fn admit(stored: Vec<(u32, Owner)>, entries: Vec<CountsEntry>) -> Admitted {
    let mut fences = Fences::new(stored);
    let mut admitted = Admitted::default();
    for entry in entries {
        match entry.record {
            CountsRecord::Claim(claim) => {
                if fences.claim(&claim, entry.offset) {
                    tracing::info!(
                        source_partition = claim.source_partition,
                        claimant = claim.claimant,
                        resume_from = claim.resume_from,
                        counts_offset = entry.offset,
                        "source partition claimed by a new owner"
                    );
                }
            }
            CountsRecord::Chunk(chunk) => match fences.admit(&chunk.header) {
                Admission::Admitted => admitted.chunks.push(chunk),
                Admission::Fenced { .. } if fences.precedes_claim(&chunk.header, entry.offset) => {
                    // A replay (a restarted writer): decided when first read, no zombie now.
                    admitted.fenced.stale += chunk.deltas.len() as u64;
                }
                Admission::Fenced { current } => {
                    let h = chunk.header;
                    tracing::warn!(
                        source_partition = h.source_partition,
                        start = h.start,
                        end = h.end,
                        owner = format_args!("{:016x}", h.owner),
                        current = format_args!("{current:016x}"),
                        "fenced a chunk of a superseded owner (a counter that lost its partition still emitted)"
                    );
                    admitted.fenced.fenced += chunk.deltas.len() as u64;
                    admitted.fenced.fenced_chunks += 1;
                }
            },
        }
    }
    admitted.owners = fences.changed();
    admitted
}

/// An owner token as a signed database integer (bit for bit).
pub fn token_to_db(owner: u64) -> i64 {
    i64::from_be_bytes(owner.to_be_bytes())
}

/// The inverse of [`token_to_db`].
pub fn token_from_db(owner: i64) -> u64 {
    u64::from_be_bytes(owner.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use tally_model::counts::{Claim, FlushHeader};

    use super::*;

    fn claim(offset: i64, owner: u64) -> CountsEntry {
        CountsEntry { offset, record: CountsRecord::Claim(Claim { source_partition: 0, owner, ..Claim::default() }) }
    }

    fn chunk(offset: i64, owner: u64, start: i64, end: i64) -> CountsEntry {
        let header = FlushHeader { owner, start, end, chunk_count: 1, ..FlushHeader::default() };
        CountsEntry {
            offset,
            record: CountsRecord::Chunk(FlushChunk {
                header,
                deltas: vec![],
                uniques: Vec::new(),
                trending: Vec::new(),
            }),
        }
    }

    #[test]
    fn chunks_before_a_claim_are_admitted_and_after_it_fenced() {
        let admitted = admit(
            vec![],
            vec![
                claim(0, 1),
                chunk(1, 1, 0, 10),
                chunk(2, 1, 10, 20),
                claim(3, 2),
                chunk(4, 1, 20, 30),
                chunk(5, 2, 10, 20),
            ],
        );
        let ranges: Vec<(u64, i64)> = admitted.chunks.iter().map(|c| (c.header.owner, c.header.start)).collect();
        assert_eq!(ranges, vec![(1, 0), (1, 10), (2, 10)]);
        assert_eq!(admitted.fenced.fenced_chunks, 1);
        assert_eq!(admitted.owners, vec![(0, Owner { owner: 2, claim_offset: 3 })]);
    }

    #[test]
    fn a_replay_over_stored_owners_fences_only_chunks_after_the_claim() {
        let header = |offset, owner, start| chunk(offset, owner, start, start + 10);
        let mut zombie = header(4, 1, 20);
        if let CountsRecord::Chunk(c) = &mut zombie.record {
            c.deltas.push(tally_model::counts::Delta {
                video_id: "a".into(),
                salt: tally_model::Salt(0),
                minute: 0,
                count: 1,
            });
        }
        let mut replayed = header(1, 1, 0);
        if let CountsRecord::Chunk(c) = &mut replayed.record {
            c.deltas.push(tally_model::counts::Delta {
                video_id: "a".into(),
                salt: tally_model::Salt(0),
                minute: 0,
                count: 1,
            });
        }
        let stored = vec![(0, Owner { owner: 2, claim_offset: 3 })];
        let admitted = admit(stored, vec![claim(0, 1), replayed, claim(3, 2), zombie, header(5, 2, 10)]);
        assert_eq!(admitted.chunks.len(), 1);
        assert_eq!((admitted.fenced.fenced_chunks, admitted.fenced.fenced, admitted.fenced.stale), (1, 1, 1));
        assert!(admitted.owners.is_empty(), "the replayed claims are older than the stored one");
    }

    #[test]
    fn tokens_survive_the_database_round_trip() {
        for token in [0, 1, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            assert_eq!(token_from_db(token_to_db(token)), token);
        }
    }
}
