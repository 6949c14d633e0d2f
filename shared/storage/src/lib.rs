//! Object storage from a URL (`SEGTUNE_STORE`) and the segtune key layout.
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/dir` or a plain path (`./segtune-data/store`) | local files (created if missing) |
//! | `s3://bucket/prefix` | S3 or MinIO, configured from the usual `AWS_*` env vars (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for MinIO), or explicitly with [`open_with`] |
//! | `memory://` | in-process, for tests |
//!
//! Every `put` of object_store is atomic (local files are written to a temporary name and
//! renamed; S3 objects appear whole), so a reader never sees half an object. Completeness of
//! a multi-object artefact (a dataset) is marked by writing its manifest last.
//!
//! Large objects can be streamed instead ([`upload`]): an [`Upload`] is a blocking
//! `std::io::Write` over object_store's multipart upload (8 MiB parts, at most two in flight,
//! so about 24 MiB held per upload whatever the object's size) that hashes what it sends.
//! The object appears whole when [`Upload::finish`] completes it (local files: a staging file
//! renamed; S3: CompleteMultipartUpload); an upload that fails or is dropped unfinished is
//! aborted and leaves nothing at its key.
//!
//! Failures: every operation is retried [`RETRIES`] times in all with a doubling backoff from
//! 100 ms (sleeps 0.1 + 0.2 + 0.4 + 0.8 s); an S3 request is also retried inside object_store
//! ([`s3_retry`]: 2 retries, at most 5 s per request). What still fails is a
//! [`StorageError`] whose [`StorageError::is_transient`] tells a worker to nak (retry later)
//! rather than dead-letter.

pub mod keys;

use std::{io, sync::Arc, time::Duration};

use bytes::Bytes;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    memory::InMemory,
    path::Path,
    prefix::PrefixStore,
};

pub use object_store;

pub type DynStore = Arc<dyn ObjectStore>;

/// Default store when `SEGTUNE_STORE` is unset.
pub const DEFAULT_STORE: &str = "./segtune-data/store";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("SEGTUNE_STORE {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("object {key} not found in the store")]
    NotFound { key: String },
    #[error("store operation {op} on {key} failed: {source}")]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl StorageError {
    /// True for errors worth retrying (network, throttling), false for missing keys and bad URLs.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::AlreadyExists { .. }
            ),
            _ => false,
        }
    }
}

/// Opens the store named by `url` (see the module docs for the accepted forms).
pub fn open(url: &str) -> Result<DynStore, StorageError> {
    open_with(url, [] as [(&str, &str); 0])
}

/// The retry policy of S3 requests inside object_store. Its default (10 retries within 3 min)
/// would hold a worker for minutes on an endpoint that is down, on top of this crate's own
/// retries; a short one surfaces the outage as a transient error the job queue retries later.
pub fn s3_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
    }
}

/// [`open`] with explicit S3 options that win over the `AWS_*` env vars: object_store's
/// `AmazonS3ConfigKey` names or aliases (`aws_endpoint`, `aws_allow_http`,
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, ...). Lets a test or a tool
/// point at a given server without touching the process environment. Other schemes take no
/// options.
pub fn open_with<K: AsRef<str>, V: Into<String>>(
    url: &str,
    options: impl IntoIterator<Item = (K, V)>,
) -> Result<DynStore, StorageError> {
    let options: Vec<(K, V)> = options.into_iter().collect();
    let bad = |problem: String| StorageError::BadUrl {
        url: url.to_string(),
        problem,
    };
    if !options.is_empty() && !url.starts_with("s3://") {
        return Err(bad("store options apply to s3:// URLs only".into()));
    }
    if url == "memory://" || url == "memory:///" {
        return Ok(Arc::new(InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("expected s3://bucket[/prefix]".into()));
        }
        // The HTTP client's TLS uses rustls with whatever provider is the process default;
        // ring is the only one compiled in. Installing it twice is harmless (Err ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key
                .as_ref()
                .parse()
                .map_err(|e: object_store::Error| bad(e.to_string()))?;
            builder = builder.with_config(key, value);
        }
        let s3 = builder
            .with_bucket_name(bucket)
            .with_retry(s3_retry())
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    let dir = if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad(
                "file URLs need an absolute path (file:///abs/dir); use a plain path for a relative one"
                    .into(),
            ));
        }
        std::path::PathBuf::from(rest)
    } else if url.contains("://") {
        return Err(bad(
            "unknown scheme: expected file://, s3:// or memory://".into()
        ));
    } else {
        std::path::PathBuf::from(url)
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(fs))
}

fn path(key: &str) -> Path {
    Path::from(key)
}

/// Writes `bytes` at `key` atomically, retrying transient failures with backoff.
pub async fn put(store: &DynStore, key: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
    let bytes: Bytes = bytes.into();
    retry("put", key, || async {
        store
            .put(&path(key), PutPayload::from_bytes(bytes.clone()))
            .await
            .map(|_| ())
    })
    .await
}

/// Reads the whole object at `key`.
pub async fn get(store: &DynStore, key: &str) -> Result<Bytes, StorageError> {
    retry("get", key, || async {
        match store.get(&path(key)).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        }
    })
    .await
}

/// True when an object exists at `key`.
pub async fn exists(store: &DynStore, key: &str) -> Result<bool, StorageError> {
    match retry("head", key, || async { store.head(&path(key)).await }).await {
        Ok(_) => Ok(true),
        Err(StorageError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lists object keys under `prefix` (recursively).
pub async fn list(store: &DynStore, prefix: &str) -> Result<Vec<String>, StorageError> {
    use futures::TryStreamExt;
    let p = path(prefix);
    let metas: Vec<_> = retry("list", prefix, || store.list(Some(&p)).try_collect()).await?;
    let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
    keys.sort();
    Ok(keys)
}

/// Deletes every object under `prefix`.
pub async fn delete_prefix(store: &DynStore, prefix: &str) -> Result<(), StorageError> {
    for key in list(store, prefix).await? {
        retry("delete", &key, || async { store.delete(&path(&key)).await }).await?;
    }
    Ok(())
}

/// Part size of an [`Upload`]: S3 wants every part but the last to be at least 5 MiB.
pub const UPLOAD_PART: usize = 8 << 20;

/// Parts of one [`Upload`] in flight at once; with the part being filled, an upload holds at
/// most `(UPLOAD_IN_FLIGHT + 1) × UPLOAD_PART` bytes.
pub const UPLOAD_IN_FLIGHT: usize = 2;

/// A streaming upload to one key: write the object's bytes, then [`Upload::finish`].
///
/// It blocks on `handle`, whose runtime runs the part uploads (a multi-thread runtime, or a
/// current-thread one while its `block_on` runs on another thread), so use it from a plain
/// thread or `tokio::task::spawn_blocking`, never from an async task. Its writes fail once a
/// part has failed to upload; [`Upload::finish`] then returns that [`StorageError`] (with
/// [`StorageError::is_transient`] as for any other operation). Parts are not retried by this
/// crate (the bytes are gone; S3 requests are retried inside object_store, [`s3_retry`]):
/// a failed upload is redone whole by its caller. An upload that fails, is
/// [aborted](Upload::abort) or is dropped without [`Upload::finish`] is aborted in the store,
/// and nothing appears at its key.
pub struct Upload {
    key: String,
    handle: tokio::runtime::Handle,
    /// `None` once finished or aborted.
    parts: Option<WriteMultipart>,
    /// Bytes in the part being filled.
    filled: usize,
    hasher: blake3::Hasher,
    len: u64,
    failed: Option<StorageError>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("len", &self.len)
            .field("open", &self.parts.is_some())
            .field("failed", &self.failed)
            .finish()
    }
}

/// Starts a streaming upload of the object at `key` (see [`Upload`]); starting it is retried
/// like any other operation. Blocks on `handle`: call it off the runtime's async threads.
pub fn upload(
    store: &DynStore,
    key: &str,
    handle: tokio::runtime::Handle,
) -> Result<Upload, StorageError> {
    let p = path(key);
    let multipart = handle.block_on(retry("put_multipart", key, || store.put_multipart(&p)))?;
    Ok(Upload {
        key: key.to_string(),
        handle,
        parts: Some(WriteMultipart::new_with_chunk_size(multipart, UPLOAD_PART)),
        filled: 0,
        hasher: blake3::Hasher::new(),
        len: 0,
        failed: None,
    })
}

impl Upload {
    /// The key this upload writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True while nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Why the writes failed, if a part failed to upload.
    pub fn error(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }

    /// Sends what is left and completes the upload: the object appears whole at the key.
    /// Returns the BLAKE3 hash (hex) and the length of the bytes written. On an error the
    /// upload is aborted and nothing appears.
    pub fn finish(mut self) -> Result<(String, u64), StorageError> {
        let parts = self.parts.take().expect("an open upload");
        if let Some(err) = self.failed.take() {
            self.abort_parts(parts);
            return Err(err);
        }
        // The full parts first, so that their failure is the one reported (WriteMultipart's
        // finish reports its abort's error, if any, instead of the cause).
        let mut parts = parts;
        if let Err(source) = self.handle.block_on(parts.wait_for_capacity(0)) {
            self.abort_parts(parts);
            return Err(store_error("upload part", &self.key, source));
        }
        // WriteMultipart::finish aborts the upload itself when the last part or the
        // completion fails.
        self.handle
            .block_on(parts.finish())
            .map_err(|source| store_error("complete upload", &self.key, source))?;
        Ok((self.hasher.finalize().to_hex().to_string(), self.len))
    }

    /// Abandons the upload: the parts sent are discarded and nothing appears at the key.
    /// Waits for the store to discard them (a failure to is logged, not returned).
    pub fn abort(mut self) {
        if let Some(parts) = self.parts.take() {
            self.abort_parts(parts);
        }
    }

    fn abort_parts(&self, parts: WriteMultipart) {
        if let Err(e) = self.handle.block_on(parts.abort()) {
            tracing::warn!(key = %self.key, error = %e, "could not abort an upload");
        }
    }

    fn fail(&mut self, source: object_store::Error) -> io::Error {
        let err = store_error("upload part", &self.key, source);
        let io = io::Error::other(err.to_string());
        self.failed = Some(err);
        io
    }
}

impl io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(err) = &self.failed {
            return Err(io::Error::other(err.to_string()));
        }
        let Some(parts) = self.parts.as_mut() else {
            return Err(io::Error::other(format!(
                "upload of {} has ended",
                self.key
            )));
        };
        let n = buf.len().min(UPLOAD_PART - self.filled);
        let buf = &buf[..n];
        {
            // A filled part is sent by a task spawned on the store's runtime.
            let _runtime = self.handle.enter();
            parts.write(buf);
        }
        self.hasher.update(buf);
        self.len += n as u64;
        self.filled += n;
        if self.filled == UPLOAD_PART {
            self.filled = 0;
            // Back pressure: the producer waits while UPLOAD_IN_FLIGHT parts are in flight.
            if let Err(source) = self
                .handle
                .block_on(parts.wait_for_capacity(UPLOAD_IN_FLIGHT))
            {
                return Err(self.fail(source));
            }
        }
        Ok(n)
    }

    /// Parts are sent as they fill; the last one goes with [`Upload::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    /// Unfinished: abort in the background (a drop cannot block; it may run on an async task).
    /// Nothing was published either way: only completing makes the object appear.
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            let key = std::mem::take(&mut self.key);
            self.handle.spawn(async move {
                if let Err(e) = parts.abort().await {
                    tracing::warn!(%key, error = %e, "could not abort a dropped upload");
                }
            });
        }
    }
}

/// A failed operation's error, classified as [`retry`] does.
fn store_error(op: &'static str, key: &str, source: object_store::Error) -> StorageError {
    match source {
        object_store::Error::NotFound { .. } => StorageError::NotFound {
            key: key.to_string(),
        },
        source => StorageError::Store {
            op,
            key: key.to_string(),
            source,
        },
    }
}

/// Attempts per operation (the first plus four retries), sleeping 0.1, 0.2, 0.4, 0.8 s between.
pub const RETRIES: u32 = 5;

async fn retry<T, F, Fut>(op: &'static str, key: &str, mut f: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, object_store::Error>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(source) => {
                let err = store_error(op, key, source);
                if !err.is_transient() || attempt >= RETRIES {
                    return Err(err);
                }
                tracing::warn!(op, key, attempt, error = %err, "store operation failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trip_and_listing() {
        let dir = std::env::temp_dir().join(format!("segtune-storage-{}", std::process::id()));
        let store = open(dir.to_str().unwrap()).unwrap();
        put(&store, "a/b/c.bin", vec![1u8, 2, 3]).await.unwrap();
        assert_eq!(get(&store, "a/b/c.bin").await.unwrap().as_ref(), &[1, 2, 3]);
        assert!(exists(&store, "a/b/c.bin").await.unwrap());
        assert!(!exists(&store, "a/b/missing").await.unwrap());
        assert!(
            dir.join("a/b/c.bin").is_file(),
            "file store writes real files"
        );
        assert_eq!(
            list(&store, "a").await.unwrap(),
            vec!["a/b/c.bin".to_string()]
        );
        delete_prefix(&store, "a").await.unwrap();
        assert!(!exists(&store, "a/b/c.bin").await.unwrap());
        let url = format!("file://{}", dir.display());
        assert!(open(&url).is_ok());
        std::fs::remove_dir_all(dir).ok();
    }

    /// A file store stages an upload in a file beside its key; finishing renames it into
    /// place, aborting or dropping the upload removes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_upload_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path().to_str().unwrap()).unwrap();
        let handle = tokio::runtime::Handle::current();
        let s = store.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            for (key, end) in [("a/done", 0), ("a/aborted", 1), ("a/dropped", 2)] {
                let mut up = upload(&s, key, handle.clone()).unwrap();
                up.write_all(&vec![5u8; UPLOAD_PART + 1]).unwrap();
                match end {
                    0 => assert_eq!(up.finish().unwrap().1, UPLOAD_PART as u64 + 1),
                    1 => up.abort(),
                    _ => drop(up),
                }
            }
        })
        .await
        .unwrap();
        // The dropped upload's abort runs in the background.
        let files = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir.path().join("a"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        for _ in 0..100 {
            if files().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(files(), ["done"]);
        assert_eq!(get(&store, "a/done").await.unwrap().len(), UPLOAD_PART + 1);
    }

    #[tokio::test]
    async fn missing_key_is_not_found_not_transient() {
        let store = open("memory://").unwrap();
        let err = get(&store, "nope").await.unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn bad_urls_are_explained() {
        for (url, want) in [
            ("ftp://x", "unknown scheme"),
            ("file://relative", "absolute path"),
            ("s3://", "bucket"),
        ] {
            let err = match open(url) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} must be refused"),
            };
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}
