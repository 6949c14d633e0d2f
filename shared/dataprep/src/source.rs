//! Where raw MSD files are read from: a local folder or a prefix in the object store.

use std::path::PathBuf;

use bytes::Bytes;
use protocol::DatasetSource;
use storage::DynStore;

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
    pub async fn read(&self, rel: &str) -> anyhow::Result<Bytes> {
        match self {
            Source::Local(dir) => {
                let path = dir.join(rel);
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Bytes::from(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        anyhow::bail!("file is missing ({} does not exist)", path.display())
                    }
                    Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
                }
            }
            Source::Store { store, prefix } => {
                let key = Self::key(prefix, rel);
                match storage::get(store, &key).await {
                    Ok(b) => Ok(b),
                    Err(storage::StorageError::NotFound { .. }) => {
                        anyhow::bail!("file is missing (no object {key} in the store)")
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Feeds a file's length and bytes into the dataset hash.
    pub async fn hash_into(&self, rel: &str, hasher: &mut blake3::Hasher) -> anyhow::Result<()> {
        hasher.update(rel.as_bytes());
        match self {
            Source::Local(dir) => {
                let path = dir.join(rel);
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        anyhow::bail!("file is missing ({} does not exist)", path.display())
                    }
                    Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
                };
                let len = file.metadata()?.len();
                hasher.update(&len.to_le_bytes());
                let mut h = std::mem::take(hasher);
                let h = tokio::task::spawn_blocking(move || -> anyhow::Result<blake3::Hasher> {
                    h.update_reader(file)?;
                    Ok(h)
                })
                .await??;
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
