//! Archive rows to and from Parquet (arrow + parquet crates).
//!
//! A file is written to a temporary name in its directory, synced, then
//! renamed: a reader never sees half a file, and a crash leaves only a
//! temporary file that the next write of the same range replaces.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, UInt16Builder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// One archived view event, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedView {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Video.
    pub video_id: String,
    /// Salt of its partition key.
    pub salt: u16,
    /// Event time, epoch ms.
    pub ts_ms: i64,
    /// Gateway receive time, epoch ms.
    pub received_ms: i64,
    /// Idempotency key.
    pub event_id: String,
    /// Viewer, when given.
    pub viewer_id: Option<String>,
    /// Attributes JSON, when given.
    pub attributes: Option<String>,
}

/// Why archive I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// File system.
    #[error("archive file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Parquet or Arrow.
    #[error("archive file {path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The Arrow schema of archive files.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("video_id", DataType::Utf8, false),
        Field::new("salt", DataType::UInt16, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("received_ms", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("viewer_id", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, true),
    ]))
}

fn to_batch(rows: &[ArchivedView]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut partition = Int32Builder::with_capacity(rows.len());
    let mut offset = Int64Builder::with_capacity(rows.len());
    let mut video = StringBuilder::new();
    let mut salt = UInt16Builder::with_capacity(rows.len());
    let mut ts = Int64Builder::with_capacity(rows.len());
    let mut received = Int64Builder::with_capacity(rows.len());
    let mut event = StringBuilder::new();
    let mut viewer = StringBuilder::new();
    let mut attributes = StringBuilder::new();
    for row in rows {
        partition.append_value(row.partition);
        offset.append_value(row.offset);
        video.append_value(&row.video_id);
        salt.append_value(row.salt);
        ts.append_value(row.ts_ms);
        received.append_value(row.received_ms);
        event.append_value(&row.event_id);
        viewer.append_option(row.viewer_id.as_deref());
        attributes.append_option(row.attributes.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(video.finish()),
        Arc::new(salt.finish()),
        Arc::new(ts.finish()),
        Arc::new(received.finish()),
        Arc::new(event.finish()),
        Arc::new(viewer.finish()),
        Arc::new(attributes.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Writes `rows` to `path` atomically (temporary file, fsync, rename).
pub fn write_file(path: &Path, rows: &[ArchivedView]) -> Result<(), ArchiveError> {
    let shown = path.display().to_string();
    let io = |source| ArchiveError::Io { path: shown.clone(), source };
    let format = |e: &dyn std::fmt::Display| ArchiveError::Format { path: shown.clone(), message: e.to_string() };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("archive.parquet");
    let temporary = dir.join(format!(".tmp-{name}"));
    let batch = to_batch(rows).map_err(|e| format(&e))?;
    let properties =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_created_by("tally".into()).build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema(), Some(properties)).map_err(|e| format(&e))?;
    writer.write(&batch).map_err(|e| format(&e))?;
    writer.close().map_err(|e| format(&e))?;
    let mut file = File::create(&temporary).map_err(io)?;
    file.write_all(&buffer).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Ok(directory) = File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Reads the `(video_id, event_id, ts_ms)` columns of a file, calling `visit` per row.
pub fn read_views(path: &Path, mut visit: impl FnMut(&str, &str, i64)) -> Result<usize, ArchiveError> {
    let shown = path.display().to_string();
    let format = |e: &dyn std::fmt::Display| ArchiveError::Format { path: shown.clone(), message: e.to_string() };
    let file = File::open(path).map_err(|source| ArchiveError::Io { path: shown.clone(), source })?;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format(&e))?.build().map_err(|e| format(&e))?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| format(&e))?;
        let video = column::<StringArray>(&batch, "video_id").ok_or_else(|| format(&"no video_id column"))?;
        let event = column::<StringArray>(&batch, "event_id").ok_or_else(|| format(&"no event_id column"))?;
        let ts = column::<Int64Array>(&batch, "ts_ms").ok_or_else(|| format(&"no ts_ms column"))?;
        for i in 0..batch.num_rows() {
            visit(video.value(i), event.value(i), ts.value(i));
        }
        rows += batch.num_rows();
    }
    Ok(rows)
}

fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch.column_by_name(name)?.as_any().downcast_ref::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64, video: &str) -> ArchivedView {
        ArchivedView {
            partition: 1,
            offset,
            video_id: video.into(),
            salt: 0,
            ts_ms: 1_795_341_600_000 + offset,
            received_ms: 1_795_341_600_000 + offset,
            event_id: format!("e{offset}"),
            viewer_id: (offset % 2 == 0).then(|| "u".to_owned()),
            attributes: None,
        }
    }

    #[test]
    fn files_round_trip_and_are_byte_identical_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<ArchivedView> = (0..100).map(|i| row(i, if i % 3 == 0 { "a" } else { "b" })).collect();
        let first = dir.path().join("one.parquet");
        let second = dir.path().join("two.parquet");
        write_file(&first, &rows).unwrap();
        write_file(&second, &rows).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());
        let mut seen = Vec::new();
        assert_eq!(read_views(&first, |v, e, t| seen.push((v.to_owned(), e.to_owned(), t))).unwrap(), 100);
        assert_eq!(seen[3], ("a".to_owned(), "e3".to_owned(), 1_795_341_600_003));
        assert!(!dir.path().join(".tmp-one.parquet").exists());
    }
}
