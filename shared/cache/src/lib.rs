//! The per-host case cache: each preprocessed case is fetched from the object store once per
//! host into a local folder (`SEGTUNE_CACHE_DIR`, one volume shared by every trainer and the
//! evaluator of the host) as one memory-mappable file ([`file`]), and read by region from
//! there, so a process's resident memory is bounded by what it reads, not by the dataset.
//!
//! - **One download per host.** Each case has a lock file; the process that gets it
//!   exclusively (`flock`) downloads while the others wait, then they all map the same file.
//!   The file is written under a temporary name and renamed, so nobody sees half a file.
//! - **Checked.** The manifest's BLAKE3 of the stored `.nii` is verified once per fetch
//!   (datasets preprocessed before the manifest carried checksums are decoded and checked by
//!   the NIfTI reader only); the cache file's header is checked at every open and its body's
//!   checksum the first time a process opens that file: a truncated or bit-flipped file is
//!   deleted and fetched again, never used.
//! - **Bounded.** Files never exceed `SEGTUNE_CACHE_MAX_BYTES` together (space is reserved
//!   under a cache-wide lock before a file is written); the least recently used cases are
//!   evicted whole, but never one a process has mapped: a [`MappedCase`] holds a shared
//!   `flock` on its file and the evictor only removes files it can lock exclusively without
//!   waiting.
//! - **Foreground locations** are computed when a case enters the cache (from the label the
//!   fetch decodes anyway) and stored in its file, so datasets preprocessed by any version
//!   work and no process ever scans a whole label to sample foreground.

pub mod file;

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Seek, SeekFrom, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use augment::{CaseIndex, TrainingCase};
use memmap2::Mmap;
use protocol::CaseEntry;
use storage::DynStore;
use volume::{Geometry, Volume};

use file::{HEADER_LEN, Header};

/// Default bound of the cache folder: 64 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// Extension of a case file.
const CASE_EXT: &str = "case";
/// Extension of a file being written (counted at its final size while it exists).
const TMP_EXT: &str = "tmp";

/// Why a case could not be had from the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("case cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] storage::StorageError),
    #[error(transparent)]
    BadName(#[from] storage::keys::KeyError),
    /// The stored object is not what the manifest says (its checksum differs) or not a
    /// readable volume: fetching again will not help.
    #[error("case {case}: {key}: {problem}")]
    BadObject {
        case: String,
        key: String,
        problem: String,
    },
    /// A file that was just written does not read back (the disk is failing).
    #[error("case cache {path}: {problem}")]
    Unreadable { path: PathBuf, problem: String },
    /// The bound leaves no room for the case: the rest is mapped by running jobs.
    #[error(
        "case cache {dir}: {needed} more bytes do not fit under SEGTUNE_CACHE_MAX_BYTES = {max} \
         ({in_use} bytes held by cases that are mapped or being written)"
    )]
    Full {
        dir: PathBuf,
        needed: u64,
        max: u64,
        in_use: u64,
    },
}

impl CacheError {
    /// True when trying again later may succeed (the store failed, or the bound is full of
    /// cases other jobs have mapped); false for bad objects and names.
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::Store(e) => e.is_transient(),
            CacheError::Io { .. } | CacheError::Full { .. } => true,
            CacheError::BadName(_)
            | CacheError::BadObject { .. }
            | CacheError::Unreadable { .. } => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters of one [`CaseCache`] (this process's view).
#[derive(Debug, Default)]
pub struct Stats {
    /// Objects read from the store (two per case fetched: image and label).
    pub gets: AtomicU64,
    /// Cases found in the cache folder, valid.
    pub hits: AtomicU64,
    /// Cache files found corrupt or truncated, deleted and fetched again.
    pub refetched: AtomicU64,
    /// Cases evicted by this process.
    pub evicted: AtomicU64,
}

/// The cache folder of this host, as one process uses it.
pub struct CaseCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Files whose body checksum this process has verified ([`file_key`]).
    verified: Mutex<HashSet<FileKey>>,
    stats: Stats,
}

impl CaseCache {
    /// The cache folder `dir` (created when the first case is fetched), bounded by
    /// `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Arc<CaseCache> {
        Arc::new(CaseCache {
            dir: dir.into(),
            max_bytes,
            verified: Mutex::new(HashSet::new()),
            stats: Stats::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The cache file of a case.
    pub fn case_path(&self, dataset_id: &str, case_id: &str) -> Result<PathBuf, CacheError> {
        storage::keys::check_name("dataset id", dataset_id)?;
        storage::keys::check_name("case name", case_id)?;
        Ok(self
            .dir
            .join(dataset_id)
            .join(format!("{case_id}.{CASE_EXT}")))
    }

    /// The bytes a case's file takes (known from the manifest before any download).
    pub fn case_bytes(case: &CaseEntry) -> u64 {
        let n: usize = case.shape.iter().product();
        // The index holds at most MAX_FG_PER_CLASS voxels per class.
        let classes = case.label_counts.len().saturating_sub(1);
        let index = 4 + classes * (12 + 8 * augment::MAX_FG_PER_CLASS);
        (HEADER_LEN + 4 * n * case.channels + n + 8 + index) as u64
    }

    /// The case, mapped: from the cache folder, or fetched from `store` first (one process
    /// per host downloads; the others wait for it). Blocks: call it from a blocking thread
    /// with a tokio runtime handle for the store, or use [`CaseCache::get`].
    pub fn get_blocking(
        &self,
        rt: &tokio::runtime::Handle,
        store: &DynStore,
        dataset_id: &str,
        case: &CaseEntry,
    ) -> Result<MappedCase, CacheError> {
        let path = self.case_path(dataset_id, &case.id)?;
        let folder = path.parent().expect("case files live in a dataset folder");
        std::fs::create_dir_all(folder).map_err(io(folder))?;
        let lock_path = path.with_extension("lock");
        let lock = open_lock(&lock_path)?;
        flock(&lock, libc::LOCK_EX, &lock_path)?;
        let source = source_checksum(case);
        for attempt in 0..2 {
            if path.exists() {
                match self.map(&path, &source, &case.id) {
                    Ok(m) => {
                        touch(&path);
                        if attempt == 0 {
                            self.stats.hits.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(m);
                    }
                    Err(Invalid::Corrupt(problem)) if attempt == 0 => {
                        tracing::warn!(path = %path.display(), %problem,
                            "corrupt case cache file; fetching the case again");
                        self.stats.refetched.fetch_add(1, Ordering::Relaxed);
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                    Err(Invalid::Corrupt(problem)) => {
                        return Err(CacheError::Unreadable { path, problem });
                    }
                    Err(Invalid::Io(e)) => return Err(e),
                }
            }
            self.fetch(rt, store, case, &path, source)?;
        }
        // Fetched and renamed, yet gone: another host shares this folder and evicted it, or
        // the disk lost it.
        drop(lock);
        Err(CacheError::Unreadable {
            path,
            problem: "vanished right after it was written".into(),
        })
    }

    /// [`CaseCache::get_blocking`] on a blocking thread.
    pub async fn get(
        self: &Arc<Self>,
        store: &DynStore,
        dataset_id: &str,
        case: &CaseEntry,
    ) -> Result<MappedCase, CacheError> {
        let (cache, store, id, case) = (
            self.clone(),
            store.clone(),
            dataset_id.to_string(),
            case.clone(),
        );
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || cache.get_blocking(&rt, &store, &id, &case))
            .await
            .map_err(|e| CacheError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Maps a case file and checks it; the returned case holds a shared lock on it.
    fn map(&self, path: &Path, source: &[u8; 32], case_id: &str) -> Result<MappedCase, Invalid> {
        let f = File::open(path).map_err(|e| Invalid::Io(io(path)(e)))?;
        flock(&f, libc::LOCK_SH, path).map_err(Invalid::Io)?;
        let meta = f.metadata().map_err(|e| Invalid::Io(io(path)(e)))?;
        // SAFETY: cache files are never modified in place (written under another name and
        // renamed), and the shared lock keeps the evictor from deleting it while mapped.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Invalid::Io(io(path)(e)))?;
        let header = Header::decode(&map, meta.len()).map_err(Invalid::Corrupt)?;
        if header.source != [0; 32] && source != &[0; 32] && &header.source != source {
            return Err(Invalid::Corrupt(
                "built from other stored bytes than the manifest names".into(),
            ));
        }
        let key = file_key(&meta);
        if !self.verified.lock().expect("verified set").contains(&key) {
            // Read through the file, not the map: checking must not make the pages resident
            // in this process.
            let mut hasher = blake3::Hasher::new();
            let mut r = &f;
            r.seek(SeekFrom::Start(HEADER_LEN as u64))
                .map_err(|e| Invalid::Io(io(path)(e)))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = r.read(&mut buf).map_err(|e| Invalid::Io(io(path)(e)))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if hasher.finalize().as_bytes() != &header.body_hash {
                return Err(Invalid::Corrupt("body checksum mismatch".into()));
            }
            self.verified.lock().expect("verified set").insert(key);
        }
        let (o, l) = header.index;
        let index = file::decode_index(&map[o..o + l], header.dims).map_err(Invalid::Corrupt)?;
        Ok(MappedCase {
            id: case_id.to_string(),
            header,
            index,
            map,
            _file: f,
        })
    }

    /// Downloads, checks, decodes and writes one case file (temp + rename). Called with the
    /// case's lock held.
    fn fetch(
        &self,
        rt: &tokio::runtime::Handle,
        store: &DynStore,
        case: &CaseEntry,
        path: &Path,
        source: [u8; 32],
    ) -> Result<(), CacheError> {
        let started = std::time::Instant::now();
        let get = |key: &str, expected: Option<&str>| -> Result<_, CacheError> {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            let bytes = rt.block_on(storage::get(store, key))?;
            if let Some(want) = expected {
                let got = blake3::hash(&bytes).to_hex();
                if got.as_str() != want {
                    return Err(CacheError::BadObject {
                        case: case.id.clone(),
                        key: key.to_string(),
                        problem: format!(
                            "BLAKE3 {got} differs from the manifest's {want} (changed or \
                             corrupt in the store)"
                        ),
                    });
                }
            }
            Ok(bytes)
        };
        let bad = |key: &str, problem: String| CacheError::BadObject {
            case: case.id.clone(),
            key: key.to_string(),
            problem,
        };
        let limits = volume::ReadLimits::default();
        let bytes = get(&case.image_key, case.image_blake3.as_deref())?;
        let image = volume::read_nifti_bytes(&bytes, &case.image_key, &limits)
            .map_err(|e| bad(&case.image_key, e.to_string()))?
            .volume;
        drop(bytes);
        let bytes = get(&case.label_key, case.label_blake3.as_deref())?;
        let label = volume::nifti::read_nifti_labels_bytes(&bytes, &case.label_key, &limits)
            .map_err(|e| bad(&case.label_key, e.to_string()))?
            .volume;
        drop(bytes);
        if label.dims != image.dims || label.channels != 1 {
            return Err(bad(
                &case.label_key,
                format!(
                    "label is {:?} × {} channel(s), the image {:?}",
                    label.dims, label.channels, image.dims
                ),
            ));
        }
        if image.channels > file::MAX_CHANNELS {
            return Err(bad(
                &case.image_key,
                format!(
                    "{} channels, at most {} cached",
                    image.channels,
                    file::MAX_CHANNELS
                ),
            ));
        }
        let index = CaseIndex::new(&label);
        let index_bytes = file::encode_index(&index);
        let mut header = Header::layout(image.dims, image.channels, index_bytes.len());
        header.geometry = image.geometry;
        header.source = source;
        header.mins = (0..image.channels)
            .map(|c| {
                image
                    .channel(c)
                    .iter()
                    .copied()
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();

        let tmp = path.with_extension(format!("{}.{TMP_EXT}", std::process::id()));
        let f = self.reserve(&tmp, header.file_len as u64)?;
        let written = (|| -> std::io::Result<()> {
            let mut hasher = blake3::Hasher::new();
            let mut w = BufWriter::with_capacity(1 << 20, &f);
            w.seek(SeekFrom::Start(HEADER_LEN as u64))?;
            file::write_f32s(&image.data, &mut w, &mut hasher)?;
            hasher.update(&label.data);
            w.write_all(&label.data)?;
            let pad = header.index.0 - (header.label.0 + header.label.1);
            hasher.update(&vec![0; pad]);
            w.write_all(&vec![0; pad])?;
            hasher.update(&index_bytes);
            w.write_all(&index_bytes)?;
            header.body_hash = *hasher.finalize().as_bytes();
            w.seek(SeekFrom::Start(0))?;
            w.write_all(&header.encode())?;
            w.flush()?;
            drop(w);
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path)(e));
        }
        // This process wrote (and hashed) these bytes: no need to read them back to check.
        if let Ok(meta) = std::fs::metadata(path) {
            self.verified
                .lock()
                .expect("verified set")
                .insert(file_key(&meta));
        }
        tracing::info!(case = %case.id, bytes = header.file_len,
            seconds = started.elapsed().as_secs_f64(), "case fetched into the cache");
        Ok(())
    }

    /// Creates `tmp` at its final size once the cache has room for it (evicting the least
    /// recently used unmapped cases), under the cache-wide lock, so concurrent writers never
    /// take the total past the bound. The file is returned locked (exclusive), so an evictor
    /// can tell it from the leftover of a crashed writer.
    fn reserve(&self, tmp: &Path, bytes: u64) -> Result<File, CacheError> {
        let lock_path = self.dir.join(".cache.lock");
        let lock = open_lock(&lock_path)?;
        flock(&lock, libc::LOCK_EX, &lock_path)?;
        self.make_room(bytes)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(io(tmp))?;
        flock(&f, libc::LOCK_EX, tmp)?;
        f.set_len(bytes).map_err(io(tmp))?;
        Ok(f)
    }

    /// Evicts least recently used cases until `bytes` more fit; the cache-wide lock is held.
    fn make_room(&self, bytes: u64) -> Result<(), CacheError> {
        let mut files = self.files()?;
        let mut total: u64 = files.iter().map(|f| f.bytes).sum();
        if total + bytes <= self.max_bytes {
            return Ok(());
        }
        files.sort_by_key(|f| f.used);
        for f in &files {
            if total + bytes <= self.max_bytes {
                break;
            }
            if self.try_evict(&f.path) {
                total -= f.bytes;
            }
        }
        if total + bytes > self.max_bytes {
            return Err(CacheError::Full {
                dir: self.dir.clone(),
                needed: bytes,
                max: self.max_bytes,
                in_use: total,
            });
        }
        Ok(())
    }

    /// Removes a case file (or a crashed writer's leftover) if nobody has it mapped or open
    /// for writing: both locks taken without waiting, or it stays.
    fn try_evict(&self, path: &Path) -> bool {
        let is_tmp = path.extension().is_some_and(|e| e == TMP_EXT);
        // A case's lock first (no download or open of it in progress), then the file itself
        // (nobody holds it mapped).
        let case_lock = if is_tmp {
            None
        } else {
            match open_lock(&path.with_extension("lock")) {
                Ok(l) if try_flock(&l, libc::LOCK_EX) => Some(l),
                _ => return false,
            }
        };
        let Ok(f) = File::open(path) else {
            return false;
        };
        if !try_flock(&f, libc::LOCK_EX) {
            return false;
        }
        let removed = std::fs::remove_file(path).is_ok();
        if removed && !is_tmp {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %path.display(), "evicted from the case cache");
        }
        drop(case_lock);
        removed
    }

    /// Bytes the cache folder holds (case files and files being written).
    pub fn usage(&self) -> Result<u64, CacheError> {
        Ok(self.files()?.iter().map(|f| f.bytes).sum())
    }

    fn files(&self) -> Result<Vec<CachedFile>, CacheError> {
        let mut out = Vec::new();
        let dirs = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for d in dirs.flatten() {
            if !d.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let counted = path
                    .extension()
                    .is_some_and(|x| x == CASE_EXT || x == TMP_EXT);
                if !counted {
                    continue;
                }
                // A file removed meanwhile is simply not counted.
                let Ok(meta) = e.metadata() else { continue };
                out.push(CachedFile {
                    path,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }
}

/// A file's identity: device, inode and birth time (where the file system records it), so an
/// inode number reused by a later file is not taken for a file verified before.
type FileKey = (u64, u64, Option<SystemTime>);

fn file_key(meta: &std::fs::Metadata) -> FileKey {
    (meta.dev(), meta.ino(), meta.created().ok())
}

struct CachedFile {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

enum Invalid {
    Corrupt(String),
    Io(CacheError),
}

/// What the manifest says the stored case is (zero when it says nothing).
fn source_checksum(case: &CaseEntry) -> [u8; 32] {
    match (&case.image_blake3, &case.label_blake3) {
        (Some(i), Some(l)) => {
            let mut h = blake3::Hasher::new();
            h.update(i.as_bytes());
            h.update(b"\0");
            h.update(l.as_bytes());
            *h.finalize().as_bytes()
        }
        _ => [0; 32],
    }
}

/// Marks a case as just used (its modification time orders the eviction).
fn touch(path: &Path) {
    if let Ok(f) = OpenOptions::new().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn open_lock(path: &Path) -> Result<File, CacheError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))
}

fn flock(f: &File, op: libc::c_int, path: &Path) -> Result<(), CacheError> {
    loop {
        // SAFETY: flock on a descriptor this File owns.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io(path)(e));
        }
    }
}

fn try_flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor this File owns.
    unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// A case mapped from its cache file. While it lives, its file cannot be evicted (a shared
/// `flock`, released on drop).
pub struct MappedCase {
    id: String,
    header: Header,
    index: CaseIndex,
    map: Mmap,
    _file: File,
}

impl MappedCase {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// Bytes of the cache file.
    pub fn file_bytes(&self) -> usize {
        self.header.file_len
    }

    fn voxels(&self) -> usize {
        self.header.dims.iter().product()
    }

    /// The image, copied out of the map (one case at a time: the evaluator's sliding window).
    pub fn image_volume(&self) -> Volume<f32> {
        let n = self.voxels() * self.header.channels;
        let data = self.image_all()[..n].to_vec();
        self.release();
        Volume::new(
            data,
            self.header.dims,
            self.header.channels,
            self.header.geometry,
        )
    }

    /// The label, copied out of the map.
    pub fn label_volume(&self) -> Volume<u8> {
        let data = self.label().to_vec();
        self.release();
        Volume::new(data, self.header.dims, 1, self.header.geometry)
    }

    fn image_all(&self) -> &[f32] {
        let (o, l) = self.header.image;
        let bytes = &self.map[o..o + l];
        // SAFETY: the image starts HEADER_LEN (4096) bytes into a page-aligned map, so it is
        // aligned for f32; every bit pattern is an f32; the file is little-endian, as this
        // target is (checked at compile time in `file`).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), l / 4) }
    }

    /// Lets go of this process's mapping of every page (they stay in the OS page cache and
    /// fault back in when read again), so resident memory does not grow with what was read.
    pub fn release(&self) {
        // SAFETY: a read-only shared file mapping: dropped pages are read again from the file
        // (unchanged: cache files are never written in place), so no data is lost and
        // concurrent readers only take a page fault.
        unsafe {
            let _ = self
                .map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed);
        }
    }
}

impl TrainingCase for MappedCase {
    fn dims(&self) -> [usize; 3] {
        self.header.dims
    }
    fn channels(&self) -> usize {
        self.header.channels
    }
    fn image_channel(&self, c: usize) -> &[f32] {
        let n = self.voxels();
        &self.image_all()[c * n..(c + 1) * n]
    }
    fn label(&self) -> &[u8] {
        let (o, l) = self.header.label;
        &self.map[o..o + l]
    }
    fn index(&self) -> &CaseIndex {
        &self.index
    }
    fn channel_min(&self, c: usize) -> f32 {
        self.header.mins[c]
    }
    fn patch_read(&self) {
        self.release();
    }
}
