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
//! Failures: every operation is retried [`RETRIES`] times in all with a doubling backoff from
//! 100 ms (sleeps 0.1 + 0.2 + 0.4 + 0.8 s); an S3 request is also retried inside object_store
//! ([`s3_retry`]: 2 retries, at most 5 s per request). What still fails is a
//! [`StorageError`] whose [`StorageError::is_transient`] tells a worker to nak (retry later)
//! rather than dead-letter.

pub mod keys;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
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
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::NotFound {
                    key: key.to_string(),
                });
            }
            Err(source) => {
                let err = StorageError::Store {
                    op,
                    key: key.to_string(),
                    source,
                };
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
