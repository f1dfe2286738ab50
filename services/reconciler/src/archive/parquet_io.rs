//! Archive rows to and from Parquet (arrow + parquet crates).
//!
//! Files are encoded in memory and stored by [`storage`](super::storage),
//! which makes the write atomic (temporary name + rename locally, a single
//! PUT in an object store).

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, UInt16Builder};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
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
    /// The broker's timestamp of the record (log-append time), epoch ms,
    /// when it had one; the recount's dedup window needs it as the counter's does.
    pub log_ms: Option<i64>,
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
    /// The object store.
    #[error("archive object {path}: {message}")]
    Remote {
        /// The object.
        path: String,
        /// What went wrong.
        message: String,
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
        Field::new("log_ms", DataType::Int64, true),
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
    let mut log = Int64Builder::with_capacity(rows.len());
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
        log.append_option(row.log_ms);
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
        Arc::new(log.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Encodes `rows` as one Parquet file (snappy), byte-identical for identical rows.
pub fn encode(rows: &[ArchivedView], shown: &str) -> Result<Vec<u8>, ArchiveError> {
    let format = |e: &dyn std::fmt::Display| ArchiveError::Format { path: shown.to_owned(), message: e.to_string() };
    let batch = to_batch(rows).map_err(|e| format(&e))?;
    let properties =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_created_by("tally".into()).build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema(), Some(properties)).map_err(|e| format(&e))?;
    writer.write(&batch).map_err(|e| format(&e))?;
    writer.close().map_err(|e| format(&e))?;
    Ok(buffer)
}

/// The columns of one archived row the recount reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Video.
    pub video_id: &'a str,
    /// Idempotency key.
    pub event_id: &'a str,
    /// Event time, epoch ms.
    pub ts_ms: i64,
    /// Gateway receive time, epoch ms.
    pub received_ms: i64,
    /// The broker's timestamp, when known (files written before it was
    /// archived have no `log_ms` column).
    pub log_ms: Option<i64>,
    /// The viewer's pseudonym, when the event had a viewer id.
    pub viewer_id: Option<&'a str>,
}

/// Reads a file's bytes, calling `visit` per row in file (offset) order.
pub fn read_views(bytes: Bytes, shown: &str, mut visit: impl FnMut(&RowRef<'_>)) -> Result<usize, ArchiveError> {
    let format = |e: &dyn std::fmt::Display| ArchiveError::Format { path: shown.to_owned(), message: e.to_string() };
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| format(&e))?.build().map_err(|e| format(&e))?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| format(&e))?;
        let missing = |name: &str| format(&format_args!("no {name} column"));
        let partition = column::<Int32Array>(&batch, "partition").ok_or_else(|| missing("partition"))?;
        let offset = column::<Int64Array>(&batch, "offset").ok_or_else(|| missing("offset"))?;
        let video = column::<StringArray>(&batch, "video_id").ok_or_else(|| missing("video_id"))?;
        let event = column::<StringArray>(&batch, "event_id").ok_or_else(|| missing("event_id"))?;
        let ts = column::<Int64Array>(&batch, "ts_ms").ok_or_else(|| missing("ts_ms"))?;
        let received = column::<Int64Array>(&batch, "received_ms").ok_or_else(|| missing("received_ms"))?;
        let log = column::<Int64Array>(&batch, "log_ms");
        let viewer = column::<StringArray>(&batch, "viewer_id");
        for i in 0..batch.num_rows() {
            visit(&RowRef {
                partition: partition.value(i),
                offset: offset.value(i),
                video_id: video.value(i),
                event_id: event.value(i),
                ts_ms: ts.value(i),
                received_ms: received.value(i),
                log_ms: log.filter(|log| log.is_valid(i)).map(|log| log.value(i)),
                viewer_id: viewer.filter(|viewer| viewer.is_valid(i)).map(|viewer| viewer.value(i)),
            });
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
            log_ms: (offset % 3 != 0).then_some(1_795_341_600_000 + offset + 7),
            event_id: format!("e{offset}"),
            viewer_id: (offset % 2 == 0).then(|| "u".to_owned()),
            attributes: None,
        }
    }

    #[test]
    fn files_round_trip_and_are_byte_identical_when_rewritten() {
        let rows: Vec<ArchivedView> = (0..100).map(|i| row(i, if i % 3 == 0 { "a" } else { "b" })).collect();
        let first = encode(&rows, "one").unwrap();
        let second = encode(&rows, "two").unwrap();
        assert_eq!(first, second);
        let mut seen = Vec::new();
        let mut viewers = Vec::new();
        let read = read_views(Bytes::from(first), "one", |r| {
            seen.push((r.partition, r.offset, r.video_id.to_owned(), r.event_id.to_owned(), r.ts_ms, r.log_ms));
            viewers.push(r.viewer_id.map(str::to_owned));
        })
        .unwrap();
        assert_eq!(read, 100);
        assert_eq!(seen[3], (1, 3, "a".to_owned(), "e3".to_owned(), 1_795_341_600_003, None));
        assert_eq!(seen[4].5, Some(1_795_341_600_011));
        assert_eq!((viewers[4].as_deref(), viewers[5].as_deref()), (Some("u"), None));
    }

    #[test]
    fn a_truncated_file_is_a_format_error() {
        let bytes = encode(&[row(0, "a")], "one").unwrap();
        let cut = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        assert!(matches!(read_views(cut, "one", |_| {}), Err(ArchiveError::Format { .. })));
    }
}
