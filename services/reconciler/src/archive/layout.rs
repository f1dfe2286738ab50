//! Where archive files live: a Hive layout by gateway receive time,
//! `dt=YYYY-MM-DD/hour=HH/views-p<partition>-<start>-<end>.parquet`, each file
//! one contiguous offset range `[start, end)` of one partition, so a file name
//! says exactly which records it holds and a replay can never add a duplicate.

use std::path::{Path, PathBuf};

use tally_model::timestamp::format_rfc3339_ms;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The `dt=…/hour=…` directory of the hour holding `received_ms`.
pub fn hour_dir(root: &Path, received_ms: i64) -> PathBuf {
    let start = received_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let stamp = format_rfc3339_ms(start); // 2026-11-22T10:00:00Z
    root.join(format!("dt={}", &stamp[..10])).join(format!("hour={}", &stamp[11..13]))
}

/// File name of partition `partition`'s range `[start, end)`.
pub fn file_name(partition: i32, start: i64, end: i64) -> String {
    format!("views-p{partition:05}-{start:020}-{end:020}.parquet")
}

/// Parses a file name back into `(partition, start, end)`.
pub fn parse_file_name(name: &str) -> Option<FileRange> {
    let rest = name.strip_prefix("views-p")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let partition = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let end = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((partition, start, end))
}

/// A file's `(partition, start, end)`.
pub type FileRange = (i32, i64, i64);

/// Every archive file under `root`, with its range, in path order.
pub fn list(root: &Path) -> std::io::Result<Vec<(PathBuf, FileRange)>> {
    let mut files = Vec::new();
    let Ok(days) = std::fs::read_dir(root) else { return Ok(files) };
    for day in days {
        let day = day?.path();
        if !day.is_dir() {
            continue;
        }
        for hour in std::fs::read_dir(&day)? {
            let hour = hour?.path();
            if !hour.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&hour)? {
                let path = file?.path();
                if let Some(range) = path.file_name().and_then(|n| n.to_str()).and_then(parse_file_name) {
                    files.push((path, range));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Files of the receive hours `[from_ms, to_ms)`.
pub fn files_between(root: &Path, from_ms: i64, to_ms: i64) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut hour = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
    while hour < to_ms {
        let dir = hour_dir(root, hour);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries {
                let path = entry?.path();
                if path.file_name().and_then(|n| n.to_str()).and_then(parse_file_name).is_some() {
                    out.push(path);
                }
            }
        }
        hour += HOUR_MS;
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_directories_round_trip() {
        let name = file_name(3, 100, 250);
        assert_eq!(name, "views-p00003-00000000000000000100-00000000000000000250.parquet");
        assert_eq!(parse_file_name(&name), Some((3, 100, 250)));
        assert_eq!(parse_file_name(".tmp-views-p00003-1-2.parquet"), None);
        let dir = hour_dir(Path::new("/a"), 1_795_341_659_000);
        assert_eq!(dir, Path::new("/a/dt=2026-11-22/hour=10"));
    }
}
