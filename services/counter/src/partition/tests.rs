//! Unit tests of one partition's processing, sealing and forced boundaries.

use std::sync::Arc;

use tally_model::{EventId, VideoId, ViewEvent};

use super::*;

fn rules() -> Rules {
    Rules {
        counting: CountingRule {
            allowed_lateness_ms: 3_600_000,
            dedup_window_ms: 600_000,
            dedup_max_entries: 1_000,
            max_clock_skew_ms: 60_000,
        },
        dlq: DlqLimits { max_ratio: 0.5, min_records: 10, max_consecutive: 3 },
        max_rows_per_flush: 1_000,
        max_buffered_rows: 2,
        flush_interval: Duration::from_secs(1),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
    }
}

/// The record at `offset` with `payload`, without a broker timestamp.
fn at(offset: i64, payload: &[u8]) -> Input<'_> {
    Input { offset, log_ms: None, key: b"", payload }
}

fn record(video: &str, id: &str, ts_ms: i64, received_ms: i64) -> Vec<u8> {
    let event = ViewEvent {
        video_id: VideoId::parse(video).unwrap(),
        ts_ms,
        event_id: EventId::parse(id).unwrap(),
        viewer_id: None,
        attributes: None::<Arc<str>>,
        received_ms,
    };
    let mut out = Vec::new();
    wire::encode(&event, Salt(0), &mut out);
    out
}

#[test]
fn a_range_counts_dedups_and_dead_letters_then_seals() {
    let t = 1_795_341_600_000;
    let mut p = PartitionState::new(0, 0, 1, 10, Dedup::new(600_000, 1_000), vec![]);
    p.process(at(10, &record("v", "e1", t, t)), &rules()).unwrap();
    p.process(at(11, &record("v", "e1", t, t + 1_000)), &rules()).unwrap();
    p.process(at(12, b"garbage"), &rules()).unwrap();
    p.process(at(13, &record("v", "e2", t - 7_200_000, t)), &rules()).unwrap();
    p.process(at(14, &record("v", "e3", t + 60_000, t + 60_000)), &rules()).unwrap();
    p.process(at(12, b"redelivered"), &rules()).unwrap();
    let job = p.seal(Instant::now(), &rules());
    assert_eq!((job.header.start, job.header.end), (10, 15));
    assert_eq!(job.header.stats, FlushStats { read: 5, counted: 2, duplicates: 1, dead_lettered: 2 });
    let rows: Vec<(i64, u32)> = job.rows.iter().map(|r| (r.2, r.3)).collect();
    assert_eq!(rows, vec![(t, 1), (t + 60_000, 1)]);
    let reasons: Vec<(&str, i64)> = job.dead.iter().map(|d| (d.reason.as_str(), d.offset)).collect();
    assert_eq!(reasons, vec![("malformed", 12), ("late", 13)]);
    assert_eq!(job.header.dedup_horizon, 10);
    assert!(!p.due(Instant::now() + Duration::from_secs(5), &rules()), "one flush in flight at a time");
    p.complete(15);
    assert_eq!(p.in_flight(), None);
}

#[test]
fn a_forced_boundary_is_sealed_exactly_and_blocks_until_possible() {
    let t = 1_795_341_600_000;
    let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![2, 4]);
    p.process(at(0, &record("v", "a", t, t)), &rules()).unwrap();
    assert!(!p.due(Instant::now() + Duration::from_secs(60), &rules()), "timers do not cut a forced range");
    p.process(at(1, &record("v", "b", t, t)), &rules()).unwrap();
    assert!(p.due(Instant::now(), &rules()));
    assert_eq!(p.seal(Instant::now(), &rules()).header.end, 2);
    p.process(at(2, &record("v", "c", t, t)), &rules()).unwrap();
    p.process(at(3, &record("v", "d", t, t)), &rules()).unwrap();
    assert!(p.blocked(&rules()), "at the next boundary while the first flush is in flight");
    p.complete(2);
    assert!(!p.blocked(&rules()));
    assert_eq!(p.seal(Instant::now(), &rules()).header.end, 4);
}

/// Seals, with the checks the processing thread makes, the records
/// `(offset, payload)` processed one by one (`passes` false) or in runs.
fn sealed<'a>(records: &'a [(i64, Vec<u8>)], forced: Vec<i64>, passes: bool) -> Vec<String> {
    let rules = Rules {
        max_rows_per_flush: 5,
        max_buffered_rows: 1_000,
        flush_interval: Duration::from_secs(3_600),
        uniques_lg_k: tally_model::uniques::DEFAULT_LG_K,
        trending_lg_max_map_size: tally_model::trending::DEFAULT_LG_MAX_MAP_SIZE,
        ..rules()
    };
    let now = Instant::now();
    let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 8), forced);
    let mut jobs = Vec::new();
    let mut seal_if_due = |p: &mut PartitionState| {
        if p.due(now, &rules) {
            let job = p.seal(now, &rules);
            p.complete(job.header.end);
            let dead: Vec<(i64, &str)> = job.dead.iter().map(|d| (d.offset, d.reason.as_str())).collect();
            jobs.push(format!("{:?} {:?} {:?}", job.header, job.rows, dead));
        }
    };
    let mut i = 0;
    while i < records.len() {
        if passes {
            let view = |r: &'a (i64, Vec<u8>)| Input { offset: r.0, log_ms: None, key: b"key", payload: &r.1 };
            i += p.process_run(&records[i..], view, now, &rules).unwrap();
        } else {
            p.process(Input { offset: records[i].0, log_ms: None, key: b"key", payload: &records[i].1 }, &rules)
                .unwrap();
            i += 1;
        }
        seal_if_due(&mut p);
    }
    jobs
}

#[test]
fn runs_in_passes_seal_exactly_what_one_by_one_seals() {
    let t = 1_795_341_600_000;
    let mut records = Vec::new();
    let mut offset = 0;
    for i in 0..200i64 {
        let payload = match i % 23 {
            7 => b"garbage".to_vec(),
            11 => record("v", "late", t - 7_200_000, t + i),
            // Resends, some inside the (8-entry) window and some after it.
            _ if i % 5 == 0 => record(&format!("v{}", i % 7), &format!("e{}", i / 2), t, t + i),
            _ => record(&format!("v{}", i % 7), &format!("e{i}"), t + (i % 3) * 60_000, t + i),
        };
        records.push((offset, payload));
        // Gaps in offsets (compaction, control records) and a redelivered record.
        offset += if i % 17 == 0 { 3 } else { 1 };
        if i == 90 {
            records.push((offset - 5, record("v", "redelivered", t, t)));
        }
    }
    // Ends a previous owner emitted: after records 4, 9, 10, 40, 41 and 120.
    let forced: Vec<i64> = [4, 9, 10, 40, 41, 120].iter().map(|i| records[*i].0 + 1).collect();
    let one_by_one = sealed(&records, forced.clone(), false);
    assert!(one_by_one.len() > 15, "row limits and forced boundaries cut many flushes: {}", one_by_one.len());
    assert_eq!(sealed(&records, forced, true), one_by_one);
}

#[test]
fn a_run_stops_at_the_record_that_trips_the_dead_letter_limit() {
    let t = 1_795_341_600_000;
    let records: Vec<(i64, Vec<u8>)> = (0..10)
        .map(|i| (i, if (2..5).contains(&i) { b"x".to_vec() } else { record("v", &format!("e{i}"), t, t) }))
        .collect();
    let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![]);
    let err = p
        .process_run(
            &records,
            |r| Input { offset: r.0, log_ms: None, key: b"", payload: &r.1 },
            Instant::now(),
            &rules(),
        )
        .unwrap_err();
    assert_eq!(err.consecutive, 3);
    assert_eq!(p.next_offset(), 5, "nothing after the tripping record");
    assert_eq!(p.buffered_rows(), 1, "the records before it were counted");
}

#[test]
fn a_run_of_poison_trips_the_limit() {
    let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![]);
    p.process(at(0, b"x"), &rules()).unwrap();
    p.process(at(1, b"x"), &rules()).unwrap();
    let err = p.process(at(2, b"x"), &rules()).unwrap_err();
    assert_eq!(err.consecutive, 3);
}

/// The record at `offset` that the broker logged at `log_ms`.
fn logged(offset: i64, log_ms: i64, payload: &[u8]) -> Input<'_> {
    Input { offset, log_ms: Some(log_ms), key: b"", payload }
}

/// Issue 15, item 6: one gateway whose clock runs 20 minutes ahead must not
/// empty the dedup window of the partitions it feeds. The window trusts the
/// broker's timestamp of a record (plus the allowed skew) over a receive
/// time further ahead of it, and counts each such record as clamped.
#[test]
fn a_gateway_clock_running_ahead_does_not_empty_the_dedup_window() {
    let t = 1_795_341_600_000;
    let ahead = 20 * 60_000;
    let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![]);
    // Gateway A, on time: e1 at t.
    p.process(logged(0, t, &record("v", "e1", t, t)), &rules()).unwrap();
    // Gateway B, 20 minutes ahead, one second later: another view, and a
    // resend of e1 through it.
    p.process(logged(1, t + 1_000, &record("w", "x", t + ahead + 1_000, t + ahead + 1_000)), &rules()).unwrap();
    p.process(logged(2, t + 2_000, &record("v", "e1", t, t + ahead + 2_000)), &rules()).unwrap();
    // Gateway A two minutes later: e1 resent once more.
    p.process(logged(3, t + 120_000, &record("v", "e1", t, t + 120_000)), &rules()).unwrap();
    let job = p.seal(Instant::now(), &rules());
    assert_eq!(
        job.header.stats,
        FlushStats { read: 4, counted: 2, duplicates: 2, dead_lettered: 0 },
        "e1 once (whichever gateway resent it), x once"
    );
    assert_eq!(p.take_clock_skew_clamped(), 2, "both records of gateway B were clamped");
    assert_eq!(
        job.header.max_received_ms,
        t + 120_000,
        "the window's newest time is the broker's, plus the skew at most"
    );
}

/// Issue 15, item 5: a forced end (the end of a range a previous owner
/// emitted) that the offsets jump over, because the records up to it were
/// deleted by retention while the partition waited, must not stop the
/// partition from flushing for ever. The range is sealed at the forced end
/// (the previous owner's version), the empty range after it too, and the
/// records after the jump flush as usual.
#[test]
fn a_forced_end_the_offsets_jump_over_is_sealed_there_and_flushing_goes_on() {
    let t = 1_795_341_600_000;
    let rules = rules();
    let now = Instant::now();
    // A previous owner emitted ranges ending at 20 and 30; offsets 12..35 are gone.
    let mut p = PartitionState::new(0, 0, 1, 10, Dedup::new(600_000, 1_000), vec![20, 30]);
    let records: Vec<(i64, Vec<u8>)> = [10, 11, 35, 36].map(|o| (o, record("v", &format!("e{o}"), t, t))).to_vec();
    fn view(r: &(i64, Vec<u8>)) -> Input<'_> {
        Input { offset: r.0, log_ms: None, key: b"", payload: &r.1 }
    }
    let mut sealed = Vec::new();
    let mut seal = |p: &mut PartitionState, at: Instant| {
        let job = p.seal(at, &rules);
        let views: u32 = job.rows.iter().map(|r| r.3).sum();
        sealed.push((job.header.start, job.header.end, views));
        p.complete(job.header.end);
    };
    let mut i = 0;
    for _ in 0..100 {
        if i == records.len() {
            break;
        }
        i += p.process_run(&records[i..], view, now, &rules).unwrap();
        if p.due(now, &rules) {
            seal(&mut p, now);
        }
    }
    assert_eq!(i, records.len(), "the partition stopped taking records at offset {}", records[i.min(3)].0);
    let later = now + Duration::from_secs(2);
    assert!(p.due(later, &rules), "the records after the jump flush on the timer (stalled: next {})", p.next_offset());
    seal(&mut p, later);
    assert_eq!(sealed, vec![(10, 20, 2), (20, 30, 0), (30, 37, 2)], "(start, end, views) of each flush");
}

/// Trending: a flush carries one frequent-items sketch per minute its
/// deltas touched, of that minute's views over every salt, and a range
/// sealed again (a re-emission after a takeover) carries the same bytes.
#[test]
fn a_flush_carries_one_trending_sketch_per_minute_it_touched() {
    let t = 1_795_341_600_000;
    let records: Vec<(i64, Vec<u8>)> =
        [("v", t), ("w", t + 5_000), ("v", t + 61_000), ("v", t + 180_000), ("v", t + 1)]
            .iter()
            .enumerate()
            .map(|(i, (video, ts))| (i as i64, record(video, &format!("e{i}"), *ts, *ts)))
            .collect();
    let seal = || {
        let mut p = PartitionState::new(0, 0, 1, 0, Dedup::new(600_000, 1_000), vec![]);
        for (offset, payload) in &records {
            p.process(at(*offset, payload), &rules()).unwrap();
        }
        p.seal(Instant::now(), &rules())
    };
    let job = seal();
    let minutes: Vec<i64> = job.trending.iter().map(|s| s.minute).collect();
    assert_eq!(minutes, vec![t, t + 60_000, t + 180_000], "minutes without views get no sketch");
    let first = tally_model::trending::deserialize(&job.trending[0].sketch).unwrap();
    assert_eq!((first.estimate("v"), first.estimate("w")), (2, 1));
    assert_eq!(seal().trending, job.trending, "the same range gives byte-identical sketches");
}
