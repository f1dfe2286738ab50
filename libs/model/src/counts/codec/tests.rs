//! Round trips and refusals of the counts format.

use super::*;

fn header() -> FlushHeader {
    FlushHeader {
        epoch: 2,
        source_partition: 3,
        owner: 0xfeed_beef_0000_0001,
        start: 100,
        end: 250,
        chunk_index: 1,
        chunk_count: 2,
        dedup_horizon: 40,
        max_received_ms: 1_795_341_600_000,
        stats: FlushStats { read: 150, counted: 140, duplicates: 8, dead_lettered: 2 },
    }
}

fn chunk_of(record: CountsRecord) -> FlushChunk {
    match record {
        CountsRecord::Chunk(chunk) => chunk,
        CountsRecord::Claim(claim) => panic!("expected a chunk, got {claim:?}"),
    }
}

#[test]
fn chunks_round_trip() {
    let deltas = [("v1", Salt(0), 1_795_341_600_000, 7u32), ("v2", Salt(9), 1_795_341_660_000, 1)];
    let bytes = encode(&header(), deltas.iter().copied());
    let chunk = chunk_of(decode(&bytes).unwrap());
    assert_eq!(chunk.header, header());
    assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Chunk(header()));
    assert_eq!(chunk.deltas.len(), 2);
    assert_eq!(chunk.deltas[1], Delta { video_id: "v2".into(), salt: Salt(9), minute: 1_795_341_660_000, count: 1 });
    assert_eq!(bytes.len(), HEADER_LEN + 1 + 4 + 4 + encoded_delta_len("v1") + encoded_delta_len("v2"));
    assert!(chunk.uniques.is_empty());
}

fn small_sketch(viewers: &[&str]) -> Vec<u8> {
    let mut sketch = crate::uniques::new_sketch(12).unwrap();
    for viewer in viewers {
        sketch.update_with_coupon(crate::uniques::viewer_coupon(viewer));
    }
    crate::uniques::serialize(&sketch)
}

#[test]
fn chunks_with_sketches_round_trip() {
    let sketch = small_sketch(&["a", "b"]);
    let deltas = [("v1", Salt(0), 1_795_341_660_000, 3u32)];
    let sketches = [("v1", Salt(0), 1_795_341_600_000, sketch.as_slice())];
    let bytes = encode_chunk(&header(), deltas.iter().copied(), sketches.iter().copied());
    let chunk = chunk_of(decode(&bytes).unwrap());
    assert_eq!(chunk.deltas.len(), 1);
    assert_eq!(
        chunk.uniques,
        vec![SketchDelta { video_id: "v1".into(), salt: Salt(0), hour: 1_795_341_600_000, sketch: sketch.clone() }]
    );
    assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Chunk(header()));
    let only_sketches = encode_chunk(&header(), std::iter::empty(), sketches.iter().copied());
    let chunk = chunk_of(decode(&only_sketches).unwrap());
    assert!(chunk.deltas.is_empty());
    assert_eq!(chunk.uniques.len(), 1);
    assert_eq!(only_sketches.len(), HEADER_LEN + 1 + 4 + 4 + encoded_sketch_len("v1", &sketch));
}

#[test]
fn version_2_chunks_are_still_read() {
    // Version 2: the header, then the deltas without section framing.
    let mut bytes = encode(&header(), std::iter::empty());
    bytes[0] = 2;
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&[2, b'v', b'9', 0, 4]);
    bytes.extend_from_slice(&60_000i64.to_be_bytes());
    bytes.extend_from_slice(&5u32.to_be_bytes());
    let chunk = chunk_of(decode(&bytes).unwrap());
    assert_eq!(chunk.deltas, vec![Delta { video_id: "v9".into(), salt: Salt(4), minute: 60_000, count: 5 }]);
    assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Chunk(header()));
}

#[test]
fn newer_versions_unknown_sections_and_damaged_sketches_are_refused_clearly() {
    let mut newer = encode(&header(), [("v1", Salt(0), 0, 1u32)].into_iter());
    newer[0] = 4;
    let error = decode(&newer).unwrap_err();
    assert_eq!(error, CountsError::UnsupportedVersion(4));
    assert!(error.to_string().contains("reads versions 2 to 3"), "{error}");
    assert_eq!(decode_head(&newer), Err(CountsError::UnsupportedVersion(4)));
    let mut unknown = encode(&header(), std::iter::empty());
    unknown.extend_from_slice(&[9, 0, 0, 0, 0]);
    assert_eq!(decode(&unknown), Err(CountsError::UnknownSection(9)));
    let garbage = b"not a sketch".as_slice();
    let bad = encode_chunk(&header(), std::iter::empty(), [("v1", Salt(0), 0, garbage)].into_iter());
    assert_eq!(decode(&bad), Err(CountsError::Malformed("sketch is not an HLL sketch")));
    let off_hour = small_sketch(&["a"]);
    let bad = encode_chunk(&header(), std::iter::empty(), [("v1", Salt(0), 60_000, off_hour.as_slice())].into_iter());
    assert_eq!(decode(&bad), Err(CountsError::Malformed("sketch hour not on an hour")));
    let mut repeated = encode(&header(), std::iter::empty());
    repeated.extend_from_slice(&[1, 0, 0, 0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0]);
    assert_eq!(decode(&repeated), Err(CountsError::Malformed("a section kind repeated")));
}

#[test]
fn claims_round_trip_and_long_claimant_names_are_cut() {
    let claim = Claim {
        source_partition: 7,
        owner: u64::MAX - 3,
        resume_from: 12_345,
        claimed_at_ms: 1_795_341_600_000,
        claimant: "host-a/4242".into(),
    };
    let bytes = encode_claim(&claim);
    assert_eq!(decode(&bytes).unwrap(), CountsRecord::Claim(claim.clone()));
    assert_eq!(decode_head(&bytes).unwrap(), RecordHead::Claim(claim.clone()));
    let long = Claim { claimant: "é".repeat(200), ..claim };
    let CountsRecord::Claim(decoded) = decode(&encode_claim(&long)).unwrap() else { panic!("not a claim") };
    assert_eq!(decoded.claimant, "é".repeat(127));
}

#[test]
fn versions_order_by_epoch_then_end_offset() {
    let a = FlushHeader { epoch: 0, end: 1_000_000, ..header() };
    let b = FlushHeader { epoch: 0, end: 1_000_001, ..header() };
    let c = FlushHeader { epoch: 1, end: 5, ..header() };
    assert!(a.version() < b.version() && b.version() < c.version());
}

#[test]
fn damaged_and_unknown_records_are_rejected() {
    let bytes = encode(&header(), [("v1", Salt(0), 0, 1u32)].into_iter());
    assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    let mut versioned = bytes.clone();
    versioned[0] = 1;
    assert_eq!(decode(&versioned), Err(CountsError::UnsupportedVersion(1)), "version 1 cannot be fenced");
    let mut kind = bytes.clone();
    kind[1] = 9;
    assert_eq!(decode(&kind), Err(CountsError::UnknownKind(9)));
    let inverted = FlushHeader { start: 300, ..header() };
    assert!(decode(&encode(&inverted, std::iter::empty())).is_err());
    let mut trailing = encode_claim(&Claim::default());
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(CountsError::Malformed("trailing bytes")));
}

#[test]
fn trending_sketches_round_trip_and_damaged_ones_are_refused() {
    let sketch = crate::trending::sketch_of(4, [("v1", 3u64), ("v2", 1)].into_iter()).unwrap();
    let deltas = [("v1", Salt(0), 120_000, 3u32), ("v2", Salt(0), 120_000, 1)];
    let bytes = encode_sections(
        &header(),
        deltas.iter().copied(),
        std::iter::empty(),
        [(120_000i64, sketch.as_slice())].into_iter(),
    );
    let chunk = chunk_of(decode(&bytes).unwrap());
    assert_eq!(chunk.trending, vec![MinuteSketch { minute: 120_000, sketch: sketch.clone() }]);
    assert_eq!(chunk.deltas.len(), 2);
    let only =
        encode_sections(&header(), std::iter::empty(), std::iter::empty(), [(0i64, sketch.as_slice())].into_iter());
    assert_eq!(only.len(), HEADER_LEN + 1 + 4 + 4 + encoded_minute_sketch_len(&sketch));
    let off_minute =
        encode_sections(&header(), std::iter::empty(), std::iter::empty(), [(1i64, sketch.as_slice())].into_iter());
    assert_eq!(decode(&off_minute), Err(CountsError::Malformed("trending minute not on a minute")));
    let garbage =
        encode_sections(&header(), std::iter::empty(), std::iter::empty(), [(0i64, b"junk".as_slice())].into_iter());
    assert_eq!(decode(&garbage), Err(CountsError::Malformed("trending sketch is not a frequent-items sketch")));
}
