//! One storage stack for metadata and data: `object_store` behind iceberg's
//! [`Storage`] trait. Local files, S3 and R2 differ only in the URL scheme and
//! the options (endpoint, region, credentials), never in code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::retry::RetryPolicy;

/// Options passed to `object_store` builders (`aws_endpoint`, `aws_region`,
/// `aws_access_key_id`, ...). Values are never printed: `Debug` shows keys only.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreOptions(pub BTreeMap<String, String>);

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// An S3 (or R2, or any S3 API) store for `bucket_url`: the usual `AWS_*`
/// variables first, then the configured options (`aws_endpoint`,
/// `aws_region` — `auto` for R2 —, `aws_access_key_id`,
/// `aws_secret_access_key`, `aws_virtual_hosted_style_request`,
/// `aws_allow_http`, `timeout`, `connect_timeout`, ...), then retries
/// (`retry_max_retries`, `retry_timeout`). Large files go up in multipart
/// uploads (the writer buffers 10 MiB parts).
fn s3_store(
    bucket_url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    use object_store::RetryConfig;
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::from_env().with_url(bucket_url);
    let mut retry = RetryConfig::default();
    for (k, v) in options {
        match k.as_str() {
            "retry_max_retries" => retry.max_retries = v.parse().unwrap_or(retry.max_retries),
            "retry_timeout" => {
                retry.retry_timeout = humantime::parse_duration(v).unwrap_or(retry.retry_timeout)
            }
            _ => {
                let key: AmazonS3ConfigKey = k.parse()?;
                builder = builder.with_config(key, v);
            }
        }
    }
    Ok(Arc::new(builder.with_retry(retry).build()?))
}

/// An iceberg [`Storage`] over `object_store`, one store per bucket.
#[derive(Clone, Serialize, Deserialize)]
pub struct ObjectStoreStorage {
    options: StoreOptions,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
    #[serde(skip)]
    opened: Arc<AtomicU64>,
    /// Injected faults around every store opened (the gauntlet only).
    #[serde(skip)]
    faults: Option<Arc<crate::faults::Faults>>,
}

impl fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreStorage")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn io_err(
    what: &str,
    path: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> iceberg::Error {
    let kind = match e.to_string().contains("not found") {
        true => iceberg::ErrorKind::DataInvalid,
        false => iceberg::ErrorKind::Unexpected,
    };
    iceberg::Error::new(kind, format!("{what} {path}")).with_source(e)
}

impl ObjectStoreStorage {
    /// A storage using `options` for every remote store it opens.
    pub fn new(options: StoreOptions) -> Self {
        Self {
            options,
            stores: Arc::default(),
            opened: Arc::default(),
            faults: None,
        }
    }

    /// The same storage with `faults` injected around every store it opens
    /// (see [`crate::faults`]).
    pub fn with_faults(mut self, faults: Option<Arc<crate::faults::Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// Files opened for reading so far (all clones share the count): what a
    /// scan plan or a maintenance run costs in requests.
    pub fn files_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The store and the object path for a location (`file:///…`, `s3://bucket/…`
    /// or a plain absolute path). The key is the location's text after the
    /// bucket, taken literally (see [`split_location`]); `s3a` and `s3n` share
    /// the `s3` store of their bucket.
    pub fn resolve(&self, location: &str) -> iceberg::Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let Some(parts) = split_location(location) else {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("{location} is neither a URL nor an absolute path"),
            ));
        };
        let path =
            ObjectPath::parse(parts.path).map_err(|e| io_err("bad object path", location, e))?;
        let scheme = parts.store_scheme();
        if scheme == "file" {
            let store = self.store_for("file://", || Ok(Arc::new(LocalFileSystem::new())))?;
            return Ok((store, path));
        }
        let bucket_key = format!("{scheme}://{}", parts.authority);
        let options = self.options.0.clone();
        let store = self.store_for(&bucket_key, || {
            if scheme == "s3" {
                return s3_store(&bucket_key, &options)
                    .map_err(|e| io_err("opening object store for", location, e));
            }
            let base = Url::parse(&bucket_key).map_err(|e| io_err("bad URL", location, e))?;
            let (store, _) = object_store::parse_url_opts(&base, options)
                .map_err(|e| io_err("opening object store for", location, e))?;
            Ok(Arc::from(store))
        })?;
        Ok((store, path))
    }

    fn store_for(
        &self,
        key: &str,
        make: impl FnOnce() -> iceberg::Result<Arc<dyn ObjectStore>>,
    ) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut stores = lock(&self.stores);
        if let Some(s) = stores.get(key) {
            return Ok(s.clone());
        }
        let mut store = make()?;
        if let Some(faults) = &self.faults {
            store = Arc::new(crate::faults::store::FaultStore::new(store, faults.clone()));
        }
        stores.insert(key.to_string(), store.clone());
        Ok(store)
    }
}

/// A location cut into its parts, as written: Iceberg locations are strings,
/// not URLs. `s3://b/t/name=a%20b/f` names the key `t/name=a%20b/f` — Java's
/// S3FileIO and PyIceberg's PyArrowFileIO read it so, and Java engines write
/// partition values percent-encoded into keys — so nothing is decoded here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocationParts<'a> {
    /// The scheme as written (`s3a`, `file`, ...); `file` for a plain path.
    pub scheme: &'a str,
    /// The bucket (or host); empty for local files.
    pub authority: &'a str,
    /// Everything after the authority, from its `/` on (may be empty).
    pub path: &'a str,
}

impl LocationParts<'_> {
    /// The scheme whose store serves this location: `s3a` and `s3n` (Hadoop's
    /// names) are `s3`; schemes compare case-insensitively.
    pub fn store_scheme(&self) -> String {
        match self.scheme.to_ascii_lowercase().as_str() {
            "s3a" | "s3n" => "s3".to_string(),
            s => s.to_string(),
        }
    }
}

/// Cut `location` into scheme, authority and path without decoding anything:
/// `scheme://authority/path`, `file:/path` (Hadoop's form) or an absolute
/// path. `None` for anything else (a relative path).
pub fn split_location(location: &str) -> Option<LocationParts<'_>> {
    let is_scheme = |s: &str| {
        s.len() > 1
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    if let Some((scheme, rest)) = location.split_once("://")
        && is_scheme(scheme)
    {
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let file = scheme.eq_ignore_ascii_case("file");
        return Some(LocationParts {
            scheme,
            // `file://host/x` is a local file whatever the host says.
            authority: if file { "" } else { authority },
            path,
        });
    }
    let (scheme, path) = match location.split_once(':') {
        Some((scheme, path)) if scheme.eq_ignore_ascii_case("file") => (scheme, path),
        _ => ("file", location),
    };
    path.starts_with('/').then_some(LocationParts {
        scheme,
        authority: "",
        path,
    })
}

/// A file found by listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Its key in its store (no scheme, no bucket): what [`ObjectStoreStorage::key`] gives.
    pub key: String,
    /// Its full location (`file:///…`, `s3://bucket/…`).
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

impl ObjectStoreStorage {
    /// The key of a location in its store, as written (`file:///x` and `/x`
    /// are `x`; `s3://b/a%20b` is `a%20b`). To compare locations from
    /// different writers, use `maintain::paths::normalize` instead.
    pub fn key(&self, location: &str) -> iceberg::Result<String> {
        Ok(self.resolve(location)?.1.as_ref().to_string())
    }

    /// Every file under `prefix` (a directory location).
    pub async fn list(&self, prefix: &str) -> crate::Result<Vec<ListedFile>> {
        let (store, path) = self
            .resolve(prefix)
            .map_err(|e| crate::Error::iceberg(format!("listing {prefix}"), e))?;
        // Listed locations keep the prefix's scheme as written, so they
        // compare equal to the prefix's own form.
        let base = match split_location(prefix) {
            Some(p) if p.store_scheme() != "file" => format!("{}://{}", p.scheme, p.authority),
            _ => "file://".to_string(),
        };
        let mut out = Vec::new();
        let mut listing = store.list(Some(&path));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| {
                crate::Error::new(crate::ErrorKind::Storage, format!("listing {prefix}"))
                    .with_source(e)
            })?;
            let key = meta.location.as_ref().to_string();
            out.push(ListedFile {
                location: format!("{base}/{key}"),
                key,
                size: meta.size,
                last_modified: meta.last_modified,
            });
        }
        Ok(out)
    }

    /// Delete many files, batched per store (S3 deletes up to 1000 keys a
    /// request) and retried; files already gone count as deleted. Returns
    /// the locations that could not be deleted.
    pub async fn delete_many(&self, locations: Vec<String>) -> Vec<(String, String)> {
        type Batch = (Arc<dyn ObjectStore>, Vec<(String, ObjectPath)>);
        let mut by_store: HashMap<String, Batch> = HashMap::new();
        let mut failed = Vec::new();
        for loc in locations {
            match self.resolve(&loc) {
                Ok((store, path)) => {
                    let key = format!("{store}");
                    by_store
                        .entry(key)
                        .or_insert_with(|| (store, Vec::new()))
                        .1
                        .push((loc, path));
                }
                Err(e) => failed.push((loc, e.to_string())),
            }
        }
        for (_, (store, files)) in by_store {
            let pending = Mutex::new(
                files
                    .into_iter()
                    .map(|(location, path)| (location, path, String::new()))
                    .collect::<Vec<_>>(),
            );
            let what = format!("deleting files from {store}");
            let _ = crate::retry::retry(DELETE_RETRY, &what, || async {
                let batch = std::mem::take(&mut *lock(&pending));
                let left = delete_batch(&store, batch).await;
                let outcome = match left.first() {
                    None => Ok(()),
                    Some((location, _, why)) => Err(crate::Error::new(
                        crate::ErrorKind::Storage,
                        format!(
                            "{} files not deleted, {location} for one: {why}",
                            left.len()
                        ),
                    )),
                };
                *lock(&pending) = left;
                outcome
            })
            .await;
            let left = pending.into_inner().unwrap_or_else(|p| p.into_inner());
            failed.extend(left.into_iter().map(|(location, _, why)| (location, why)));
        }
        failed
    }
}

/// How [`ObjectStoreStorage::delete_many`] retries: briefly, since a file
/// left undeleted is reported, and orphan removal collects it on a later run.
const DELETE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    min_delay: Duration::from_millis(400),
    max_delay: Duration::from_millis(800),
};

/// A file to delete: its location, its path in the store, and why the last
/// attempt failed.
type Doomed = (String, ObjectPath, String);

/// Delete `files` from `store` in one stream (batched by the store); the
/// files that failed, with why. A file already gone counts as deleted.
async fn delete_batch(store: &Arc<dyn ObjectStore>, files: Vec<Doomed>) -> Vec<Doomed> {
    let paths: Vec<ObjectPath> = files.iter().map(|(_, p, _)| p.clone()).collect();
    let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
    let results: Vec<_> = store.delete_stream(stream).collect().await;
    results
        .into_iter()
        .zip(files)
        .filter_map(|(r, (location, path, _))| match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => Some((location, path, e.to_string())),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (store, p) = self.resolve(path)?;
        match store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err("checking", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (store, p) = self.resolve(path)?;
        let meta = store.head(&p).await.map_err(|e| io_err("stat", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let (store, p) = self.resolve(path)?;
        let got = store
            .get(&p)
            .await
            .map_err(|e| io_err("reading", path, e))?;
        got.bytes().await.map_err(|e| io_err("reading", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store,
            path: p,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        store
            .put(&p, bs.into())
            .await
            .map(|_| ())
            .map_err(|e| io_err("writing", path, e))
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (store, p) = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            inner: Some(BufWriter::new(store, p)),
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (store, p) = self.resolve(path)?;
        let locations = store.list(Some(&p)).map(|m| m.map(|m| m.location)).boxed();
        let mut results = store.delete_stream(locations);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_err("deleting under", path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        let paths: Vec<String> = paths.collect().await;
        match self.delete_many(paths).await.into_iter().next() {
            None => Ok(()),
            Some((path, why)) => Err(iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("deleting {path}: {why}"),
            )),
        }
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

#[derive(Debug)]
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    /// One range, asked for as a list of one: a local store then opens and
    /// reads the file in one blocking call (its `get_range` makes two, and
    /// stats the file), a remote one makes the same single request.
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        let mut got = self
            .store
            .get_ranges(&self.path, std::slice::from_ref(&range))
            .await
            .map_err(|e| io_err("reading", &self.location, e))?;
        got.pop().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("reading {}: the store returned no bytes", self.location),
            )
        })
    }
}

struct ObjectWrite {
    inner: Option<BufWriter>,
    location: String,
}

impl fmt::Debug for ObjectWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWrite")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let w = self.inner.as_mut().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("write after close: {}", self.location),
            )
        })?;
        w.put(bs)
            .await
            .map_err(|e| io_err("writing", &self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let Some(mut w) = self.inner.take() else {
            return Ok(());
        };
        w.shutdown()
            .await
            .map_err(|e| io_err("finishing", &self.location, e))
    }
}

/// Builds [`ObjectStoreStorage`] for iceberg's catalogs and `FileIO`.
#[derive(Clone, Serialize, Deserialize)]
pub struct ObjectStoreFactory {
    storage: ObjectStoreStorage,
}

impl fmt::Debug for ObjectStoreFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreFactory")
            .field("storage", &self.storage)
            .finish()
    }
}

impl ObjectStoreFactory {
    /// A factory whose storages share `storage`'s stores.
    pub fn new(storage: ObjectStoreStorage) -> Self {
        Self { storage }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStoreFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage.clone()))
    }
}

/// A `FileIO` over `storage`.
pub fn file_io(storage: &ObjectStoreStorage) -> FileIO {
    FileIOBuilder::new(Arc::new(ObjectStoreFactory::new(storage.clone()))).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_round_trip_through_file_io() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStoreStorage::new(StoreOptions::default());
        let io = file_io(&storage);
        let loc = format!("file://{}/a/b/c.bin", dir.path().display());
        io.new_output(&loc)
            .unwrap()
            .write(Bytes::from_static(b"firn"))
            .await
            .unwrap();
        assert!(io.exists(&loc).await.unwrap());
        let input = io.new_input(&loc).unwrap();
        assert_eq!(input.read().await.unwrap(), Bytes::from_static(b"firn"));
        let reader = input.reader().await.unwrap();
        assert_eq!(reader.read(1..3).await.unwrap(), Bytes::from_static(b"ir"));
        // Plain absolute paths are local files too.
        let plain = format!("{}/a/b/c.bin", dir.path().display());
        assert!(io.exists(&plain).await.unwrap());
        io.delete(&loc).await.unwrap();
        assert!(!io.exists(&loc).await.unwrap());
        io.delete(&loc).await.unwrap();
    }

    #[test]
    fn locations_split_as_written() {
        let p = split_location("s3a://bucket/t/p=a%20b/f?x#y").unwrap();
        assert_eq!(
            (p.scheme, p.authority, p.path),
            ("s3a", "bucket", "/t/p=a%20b/f?x#y")
        );
        assert_eq!(p.store_scheme(), "s3");
        let p = split_location("file:/w/t").unwrap();
        assert_eq!(
            (p.store_scheme().as_str(), p.authority, p.path),
            ("file", "", "/w/t")
        );
        let p = split_location("file://localhost/w/t").unwrap();
        assert_eq!((p.authority, p.path), ("", "/w/t"));
        let p = split_location("/w/a:b").unwrap();
        assert_eq!((p.scheme, p.path), ("file", "/w/a:b"));
        assert!(split_location("relative/x").is_none());
        assert!(split_location("C:/x").is_none());
    }

    #[test]
    fn keys_are_the_location_text_not_a_decoded_url() {
        let s = ObjectStoreStorage::new(StoreOptions(
            [
                ("aws_region", "us-east-1"),
                ("aws_endpoint", "http://127.0.0.1:1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ));
        // What Java engines and PyIceberg write for the value `zürich`.
        assert_eq!(
            s.key("s3://b/t/p=z%C3%BCrich/f.parquet").unwrap(),
            "t/p=z%C3%BCrich/f.parquet"
        );
        assert_eq!(s.key("s3a://b/t/p=a%2520b/f").unwrap(), "t/p=a%2520b/f");
        assert_eq!(s.key("s3://b/t/p=x y/東京").unwrap(), "t/p=x y/東京");
        assert_eq!(s.key("file:///w/p=k%3Dv/f").unwrap(), "w/p=k%3Dv/f");
        assert_eq!(s.key("/w/p=k%3Dv/f").unwrap(), "w/p=k%3Dv/f");
    }

    #[tokio::test]
    async fn percent_signs_in_local_keys_are_literal() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStoreStorage::new(StoreOptions::default());
        let io = file_io(&storage);
        let root = format!("file://{}", dir.path().display());
        let loc = format!("{root}/p=z%C3%BCrich/f.bin");
        io.new_output(&loc)
            .unwrap()
            .write(Bytes::from_static(b"firn"))
            .await
            .unwrap();
        assert!(dir.path().join("p=z%C3%BCrich/f.bin").exists());
        let listed = storage.list(&format!("{root}/")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, loc);
        storage.delete_many(vec![listed[0].location.clone()]).await;
        assert!(!dir.path().join("p=z%C3%BCrich/f.bin").exists());
    }

    #[test]
    fn debug_hides_option_values() {
        let mut o = BTreeMap::new();
        o.insert("aws_secret_access_key".to_string(), "hunter2".to_string());
        let s = ObjectStoreStorage::new(StoreOptions(o));
        let shown = format!("{s:?}");
        assert!(shown.contains("aws_secret_access_key"));
        assert!(!shown.contains("hunter2"));
    }
}
