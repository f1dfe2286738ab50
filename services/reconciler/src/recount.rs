//! Recounting a period from the archive: distinct `event_id` per
//! `(video_id, minute)` of event time, salts merged, late events included.
//!
//! Files are laid out by receive hour; an event of the period may have been
//! received up to `allowed lateness` (or longer, if it was late and replayed)
//! after it, so the files of `[from, to + lookahead)` are read.

use std::collections::{BTreeMap, HashSet};

use tally_model::timestamp::minute_bucket;

use crate::archive::parquet_io::{self, ArchiveError};
use crate::archive::storage::ArchiveStorage;

/// The batch count of one period.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recount {
    /// Distinct views per `(video, minute)`.
    pub minutes: BTreeMap<(String, i64), i64>,
    /// Archive rows read.
    pub rows_read: u64,
    /// Rows that repeated an `(video, event_id)` already seen in the period.
    pub duplicates: u64,
}

/// Recounts `[from_ms, to_ms)` from `archive`, reading files of receive
/// hours up to `to_ms + lookahead_ms`. Files are fetched one at a time and
/// decoded off the async runtime.
pub async fn recount(
    archive: &ArchiveStorage,
    from_ms: i64,
    to_ms: i64,
    lookahead_ms: i64,
) -> Result<Recount, ArchiveError> {
    let files = archive.files_between(from_ms, to_ms.saturating_add(lookahead_ms)).await?;
    let mut state = (HashSet::<(String, String)>::new(), Recount::default());
    for file in files {
        let bytes = archive.get(&file).await?;
        let (mut seen, mut out) = state;
        state = tokio::task::spawn_blocking(move || {
            let rows = parquet_io::read_views(bytes, &file, |video, event, ts| {
                if ts < from_ms || ts >= to_ms {
                    return;
                }
                if seen.insert((video.to_owned(), event.to_owned())) {
                    *out.minutes.entry((video.to_owned(), minute_bucket(ts))).or_default() += 1;
                } else {
                    out.duplicates += 1;
                }
            })?;
            out.rows_read += rows as u64;
            Ok::<_, ArchiveError>((seen, out))
        })
        .await
        .map_err(|e| ArchiveError::Format { path: archive.describe(), message: e.to_string() })??;
    }
    Ok(state.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::layout;
    use crate::archive::parquet_io::{encode, ArchivedView};

    async fn put(archive: &ArchiveStorage, received_ms: i64, range: (i64, i64), rows: &[ArchivedView]) {
        let name = format!("{}/{}", layout::hour_prefix(received_ms), layout::file_name(0, range.0, range.1));
        archive.put(&name, encode(rows, &name).unwrap()).await.unwrap();
    }

    fn view(offset: i64, video: &str, event: &str, ts: i64, received: i64) -> ArchivedView {
        ArchivedView {
            partition: 0,
            offset,
            video_id: video.into(),
            salt: (offset % 3) as u16,
            ts_ms: ts,
            received_ms: received,
            event_id: event.into(),
            viewer_id: None,
            attributes: None,
        }
    }

    #[tokio::test]
    async fn distinct_events_per_minute_with_salts_merged_and_late_events_included() {
        let dir = tempfile::tempdir().unwrap();
        let archive = ArchiveStorage::Local(dir.path().to_owned());
        let t0 = 1_795_341_600_000; // 10:00
        let hour1 = vec![
            view(0, "a", "e1", t0, t0),
            view(1, "a", "e1", t0, t0 + 5_000), // resend
            view(2, "a", "e2", t0 + 61_000, t0 + 61_000),
            view(3, "b", "e1", t0 + 1_000, t0 + 1_000),
        ];
        put(&archive, t0, (0, 4), &hour1).await;
        // Received two hours later (late), event time inside the period.
        let late = vec![view(4, "a", "e9", t0 + 2_000, t0 + 2 * 3_600_000)];
        put(&archive, t0 + 2 * 3_600_000, (4, 5), &late).await;
        let counted = recount(&archive, t0, t0 + 3_600_000, 3 * 3_600_000).await.unwrap();
        assert_eq!(counted.rows_read, 5);
        assert_eq!(counted.duplicates, 1);
        assert_eq!(counted.minutes.get(&("a".to_owned(), t0)), Some(&2));
        assert_eq!(counted.minutes.get(&("a".to_owned(), t0 + 60_000)), Some(&1));
        assert_eq!(counted.minutes.get(&("b".to_owned(), t0)), Some(&1));
        let without_late = recount(&archive, t0, t0 + 3_600_000, 0).await.unwrap();
        assert_eq!(without_late.minutes.get(&("a".to_owned(), t0)), Some(&1));
    }
}
