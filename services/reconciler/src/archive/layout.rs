//! Where archive files live: a Hive layout by gateway receive time,
//! `dt=YYYY-MM-DD/hour=HH/views-p<partition>-<start>-<end>.parquet`, each file
//! one contiguous offset range `[start, end)` of one partition, so a file name
//! says exactly which records it holds and a replay can never add a duplicate.

use std::path::{Path, PathBuf};

use tally_model::timestamp::format_rfc3339_ms;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The `dt=…/hour=…` prefix (relative) of the hour holding `received_ms`.
pub fn hour_prefix(received_ms: i64) -> String {
    let start = received_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let stamp = format_rfc3339_ms(start); // 2026-11-22T10:00:00Z
    format!("dt={}/hour={}", &stamp[..10], &stamp[11..13])
}

/// The receive hour (its start, epoch ms) of a file at `relative` path
/// `dt=YYYY-MM-DD/hour=HH/<file>`, the inverse of [`hour_prefix`].
pub fn hour_of(relative: &str) -> Option<i64> {
    let mut parts = relative.split('/');
    let date = parts.next()?.strip_prefix("dt=")?;
    let hour = parts.next()?.strip_prefix("hour=")?;
    if date.len() != 10 || hour.len() != 2 {
        return None;
    }
    tally_model::timestamp::parse_rfc3339_ms(&format!("{date}T{hour}:00:00Z")).ok()
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
    Ok(list_relative(root, None)?.into_iter().map(|(relative, range)| (root.join(relative), range)).collect())
}

/// Archive files under `root` (only below `sub`, a `dt=…[/hour=…]` prefix,
/// when given) as paths relative to `root`, with their ranges, in path order.
pub fn list_relative(root: &Path, sub: Option<&str>) -> std::io::Result<Vec<(String, FileRange)>> {
    let mut files = Vec::new();
    let start = sub.map_or_else(|| root.to_owned(), |s| root.join(s));
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(range) = path.file_name().and_then(|n| n.to_str()).and_then(parse_file_name) {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                let relative = relative.iter().filter_map(|c| c.to_str()).collect::<Vec<_>>().join("/");
                files.push((relative, range));
            }
        }
    }
    files.sort();
    Ok(files)
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
        assert_eq!(hour_prefix(1_795_341_659_000), "dt=2026-11-22/hour=10");
        assert_eq!(hour_of(&format!("dt=2026-11-22/hour=10/{name}")), Some(1_795_341_600_000));
        assert_eq!(hour_of(&name), None);
        assert_eq!(hour_of("dt=2026-11-22/hour=1/x.parquet"), None);
    }
}
