//! Where raw MSD files are read from: a local folder or a prefix in the object store.

use std::path::PathBuf;

use bytes::Bytes;
use protocol::DatasetSource;
use storage::{DynStore, StorageError};

/// Why a source file could not be read. The messages name the path or key but not the file
/// as `dataset.json` lists it: the caller reports that next to them.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("file is missing ({} does not exist)", path.display())]
    MissingFile { path: PathBuf },
    #[error("file is missing (no object {key} in the store)")]
    MissingObject { key: String },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The blocking task hashing a local file did not finish (it panicked).
    #[error("cannot read {}: {source}", path.display())]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Store(StorageError),
}

impl SourceError {
    fn local(path: PathBuf, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            SourceError::MissingFile { path }
        } else {
            SourceError::Io { path, source }
        }
    }
}

pub enum Source {
    Local(PathBuf),
    Store { store: DynStore, prefix: String },
}

impl Source {
    pub fn open(source: &DatasetSource, store: DynStore) -> Self {
        match source {
            DatasetSource::Local { path } => Source::Local(PathBuf::from(path)),
            DatasetSource::Store { prefix } => Source::Store {
                store,
                prefix: prefix.trim_end_matches('/').to_string(),
            },
        }
    }

    fn key(prefix: &str, rel: &str) -> String {
        if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}/{rel}")
        }
    }

    /// Reads a file given relative to the task folder. Errors read "file is missing" or
    /// the I/O problem; the caller adds the file name.
    pub async fn read(&self, rel: &str) -> Result<Bytes, SourceError> {
        match self {
            Source::Local(dir) => {
                let path = dir.join(rel);
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Bytes::from(b)),
                    Err(e) => Err(SourceError::local(path, e)),
                }
            }
            Source::Store { store, prefix } => {
                let key = Self::key(prefix, rel);
                match storage::get(store, &key).await {
                    Ok(b) => Ok(b),
                    Err(StorageError::NotFound { .. }) => Err(SourceError::MissingObject { key }),
                    Err(e) => Err(SourceError::Store(e)),
                }
            }
        }
    }

    /// Feeds a file's length and bytes into the dataset hash.
    pub async fn hash_into(
        &self,
        rel: &str,
        hasher: &mut blake3::Hasher,
    ) -> Result<(), SourceError> {
        hasher.update(rel.as_bytes());
        match self {
            Source::Local(dir) => {
                let path = dir.join(rel);
                let file =
                    std::fs::File::open(&path).map_err(|e| SourceError::local(path.clone(), e))?;
                let len = file
                    .metadata()
                    .map_err(|e| SourceError::local(path.clone(), e))?
                    .len();
                hasher.update(&len.to_le_bytes());
                let mut h = std::mem::take(hasher);
                let h = tokio::task::spawn_blocking(move || -> std::io::Result<blake3::Hasher> {
                    h.update_reader(file)?;
                    Ok(h)
                })
                .await
                .map_err(|source| SourceError::Task {
                    path: path.clone(),
                    source,
                })?
                .map_err(|e| SourceError::local(path, e))?;
                *hasher = h;
                Ok(())
            }
            Source::Store { .. } => {
                let bytes = self.read(rel).await?;
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
                Ok(())
            }
        }
    }
}
