//! Where archive files are kept: a local directory (written to a temporary
//! name, synced, renamed) or an object store through `object_store` (S3 and
//! S3-compatible stores; a single PUT is atomic, so a reader never sees half a
//! file). Paths inside are the Hive layout of [`layout`](super::layout),
//! `dt=…/hour=…/views-p…-…-….parquet`, relative to the root or URL prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tally_config::Secret;

use super::layout::{self, FileRange, HOUR_MS};
use super::parquet_io::ArchiveError;

/// The archive's storage. Cheap to clone.
#[derive(Clone)]
pub enum ArchiveStorage {
    /// A local directory (the default: `archiver.dir`).
    Local(PathBuf),
    /// An object store (`archiver.url`).
    Object {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Prefix of the archive inside the store.
        prefix: ObjectPath,
        /// The URL, for messages.
        url: String,
    },
}

impl std::fmt::Debug for ArchiveStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ArchiveStorage {
    /// The object store at `url` (e.g. `s3://bucket/archive`) with `options`
    /// (`aws_endpoint`, `aws_region`, `aws_allow_http`, credentials, …) when
    /// `url` is set, else the directory `dir`.
    pub fn from_config(dir: &Path, url: &str, options: &BTreeMap<String, Secret>) -> Result<Self, ArchiveError> {
        if url.is_empty() {
            return Ok(Self::Local(dir.to_owned()));
        }
        let invalid = |message: String| ArchiveError::Format { path: url.to_owned(), message };
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("invalid archiver.url: {e}")))?;
        let options = options.iter().map(|(k, v)| (k.as_str(), v.expose().to_owned()));
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| invalid(format!("object store: {e}")))?;
        Ok(Self::Object { store: Arc::from(store), prefix, url: url.to_owned() })
    }

    /// Where the archive is, for logs and start-up lines.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(dir) => dir.display().to_string(),
            Self::Object { url, .. } => url.clone(),
        }
    }

    /// Stores `bytes` at `relative` atomically and durably.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(relative);
                tokio::task::spawn_blocking(move || write_local(&path, &bytes))
                    .await
                    .map_err(|e| ArchiveError::Format { path: relative.to_owned(), message: e.to_string() })?
            }
            Self::Object { store, prefix, .. } => {
                let location = child(prefix, relative);
                store.put(&location, PutPayload::from(bytes)).await.map_err(|e| remote(&location, &e))?;
                Ok(())
            }
        }
    }

    /// The whole content of `relative`.
    pub async fn get(&self, relative: &str) -> Result<Bytes, ArchiveError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(relative);
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|source| ArchiveError::Io { path: path.display().to_string(), source })?;
                Ok(Bytes::from(bytes))
            }
            Self::Object { store, prefix, .. } => {
                let location = child(prefix, relative);
                let result = store.get(&location).await.map_err(|e| remote(&location, &e))?;
                result.bytes().await.map_err(|e| remote(&location, &e))
            }
        }
    }

    /// Every archive file with its range, in path order.
    pub async fn list(&self) -> Result<Vec<(String, FileRange)>, ArchiveError> {
        self.list_under(None).await
    }

    /// The files of the receive hours `[from_ms, to_ms)`, in path order.
    pub async fn files_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, ArchiveError> {
        let mut out = Vec::new();
        let mut hour = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
        while hour < to_ms {
            out.extend(self.list_under(Some(&layout::hour_prefix(hour))).await?.into_iter().map(|(path, _)| path));
            hour += HOUR_MS;
        }
        Ok(out)
    }

    async fn list_under(&self, sub: Option<&str>) -> Result<Vec<(String, FileRange)>, ArchiveError> {
        let mut files: Vec<(String, FileRange)> = match self {
            Self::Local(dir) => {
                let (root, sub) = (dir.clone(), sub.map(str::to_owned));
                tokio::task::spawn_blocking(move || layout::list_relative(&root, sub.as_deref()))
                    .await
                    .map_err(|e| ArchiveError::Format { path: dir.display().to_string(), message: e.to_string() })?
                    .map_err(|source| ArchiveError::Io { path: dir.display().to_string(), source })?
            }
            Self::Object { store, prefix, .. } => {
                let under = match sub {
                    Some(sub) => child(prefix, sub),
                    None => prefix.clone(),
                };
                let listed: Vec<object_store::ObjectMeta> =
                    store.list(Some(&under)).try_collect().await.map_err(|e| remote(&under, &e))?;
                listed
                    .into_iter()
                    .filter_map(|meta| {
                        let relative: Vec<String> =
                            meta.location.prefix_match(prefix)?.map(|p| p.as_ref().to_owned()).collect();
                        let range = layout::parse_file_name(relative.last()?)?;
                        Some((relative.join("/"), range))
                    })
                    .collect()
            }
        };
        files.sort();
        Ok(files)
    }
}

/// `prefix/relative` as an object path.
fn child(prefix: &ObjectPath, relative: &str) -> ObjectPath {
    relative.split('/').filter(|p| !p.is_empty()).fold(prefix.clone(), |path, part| path.join(part))
}

fn remote(location: &ObjectPath, e: &dyn std::fmt::Display) -> ArchiveError {
    ArchiveError::Remote { path: location.to_string(), message: e.to_string() }
}

/// Writes `bytes` to `path` atomically and durably: temporary file in the
/// same directory, fsync, rename, fsync of the directory.
fn write_local(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write as _;
    let shown = path.display().to_string();
    let io = |source| ArchiveError::Io { path: shown.clone(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("archive.parquet");
    let temporary = dir.join(format!(".tmp-{name}"));
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Ok(directory) = std::fs::File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_archive_lists_what_was_put_by_hour_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ArchiveStorage::from_config(dir.path(), "", &BTreeMap::new()).unwrap();
        let hour = 1_795_341_600_000; // 2026-11-22T10:00:00Z
        let first = format!("{}/{}", layout::hour_prefix(hour), layout::file_name(0, 0, 10));
        let second = format!("{}/{}", layout::hour_prefix(hour + HOUR_MS), layout::file_name(0, 10, 12));
        storage.put(&first, b"one".to_vec()).await.unwrap();
        storage.put(&second, b"two".to_vec()).await.unwrap();
        let all = storage.list().await.unwrap();
        assert_eq!(all, vec![(first.clone(), (0, 0, 10)), (second.clone(), (0, 10, 12))]);
        assert_eq!(storage.files_between(hour, hour + HOUR_MS).await.unwrap(), vec![first.clone()]);
        assert_eq!(&storage.get(&first).await.unwrap()[..], b"one");
        assert!(!dir.path().join(".tmp-x").exists());
    }

    #[tokio::test]
    async fn an_in_memory_object_store_behaves_like_the_directory() {
        let storage = ArchiveStorage::from_config(Path::new("unused"), "memory:///", &BTreeMap::new()).unwrap();
        let hour = 1_795_341_600_000;
        let name = format!("{}/{}", layout::hour_prefix(hour), layout::file_name(3, 0, 5));
        storage.put(&name, b"parquet".to_vec()).await.unwrap();
        storage.put("dt=2026-11-22/hour=10/not-an-archive-file.txt", b"x".to_vec()).await.unwrap();
        assert_eq!(storage.list().await.unwrap(), vec![(name.clone(), (3, 0, 5))]);
        assert_eq!(storage.files_between(hour, hour + 1).await.unwrap(), vec![name.clone()]);
        assert!(storage.files_between(hour + HOUR_MS, hour + 2 * HOUR_MS).await.unwrap().is_empty());
        assert_eq!(&storage.get(&name).await.unwrap()[..], b"parquet");
    }

    #[test]
    fn an_unparseable_url_is_a_clear_error() {
        let error = ArchiveStorage::from_config(Path::new("x"), "not a url", &BTreeMap::new()).unwrap_err();
        assert!(error.to_string().contains("archiver.url"), "{error}");
    }
}
