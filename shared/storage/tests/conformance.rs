//! The store contract, run on every backend: `memory://`, `file://` and `s3://` against a real
//! S3-compatible server (pip's moto, started per test by test-support), over HTTP and over
//! HTTPS (the client's TLS stack: rustls with ring as the process-wide crypto provider). Then the failure
//! cases: a file store that stops accepting writes, an S3 endpoint that goes down and comes
//! back. Figures are printed (`--nocapture`); docs/reliability.md ("Object store") has them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use storage::{DynStore, StorageError};
use test_support::S3Server;

/// A store of each kind and what keeps it alive.
enum Backend {
    Memory,
    File(tempfile::TempDir),
    S3(S3Server),
}

impl Backend {
    fn open(self, name: &str) -> Option<(DynStore, Backend)> {
        let store = match &self {
            Backend::Memory => storage::open("memory://").unwrap(),
            Backend::File(dir) => {
                storage::open(&format!("file://{}", dir.path().join("store").display())).unwrap()
            }
            Backend::S3(s3) => {
                let bucket = s3.create_bucket(name);
                // A prefix, as deployments use: s3://bucket/prefix.
                storage::open_with(&format!("{bucket}/segtune"), s3.options()).unwrap()
            }
        };
        Some((store, self))
    }
}

fn memory() -> Option<Backend> {
    Some(Backend::Memory)
}
fn file() -> Option<Backend> {
    Some(Backend::File(tempfile::tempdir().unwrap()))
}
fn s3() -> Option<Backend> {
    S3Server::start().map(Backend::S3)
}
fn s3_tls() -> Option<Backend> {
    S3Server::start_tls().map(Backend::S3)
}

/// One test per backend for each body.
macro_rules! on_every_store {
    ($($body:ident),* $(,)?) => {
        mod memory_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let (store, _keep) = super::memory().unwrap().open("conformance").unwrap();
                super::$body(store).await;
            })*
        }
        mod file_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let (store, _keep) = super::file().unwrap().open("conformance").unwrap();
                super::$body(store).await;
            })*
        }
        mod s3_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let Some(backend) = super::s3() else { return };
                let (store, _keep) = backend.open("conformance").unwrap();
                super::$body(store).await;
            })*
        }
        mod s3_tls_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() {
                let Some(backend) = super::s3_tls() else { return };
                let (store, _keep) = backend.open("conformance").unwrap();
                super::$body(store).await;
            })*
        }
    };
}

on_every_store!(
    round_trip_list_and_delete,
    readers_never_see_a_partial_object,
    streamed_upload_round_trip_and_abort,
);

async fn round_trip_list_and_delete(store: DynStore) {
    // put / get / overwrite / empty object
    storage::put(&store, "a/b/c.bin", vec![1u8, 2, 3])
        .await
        .unwrap();
    assert_eq!(
        storage::get(&store, "a/b/c.bin").await.unwrap().as_ref(),
        &[1, 2, 3]
    );
    storage::put(&store, "a/b/c.bin", vec![9u8]).await.unwrap();
    assert_eq!(
        storage::get(&store, "a/b/c.bin").await.unwrap().as_ref(),
        &[9]
    );
    storage::put(&store, "a/empty", Bytes::new()).await.unwrap();
    assert!(storage::get(&store, "a/empty").await.unwrap().is_empty());
    // A few MiB (more than one network read; object_store sends a single PUT).
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    storage::put(&store, "a/big", big.clone()).await.unwrap();
    assert_eq!(
        storage::get(&store, "a/big").await.unwrap().as_ref(),
        &big[..]
    );

    // exists
    assert!(storage::exists(&store, "a/b/c.bin").await.unwrap());
    assert!(!storage::exists(&store, "a/b/missing").await.unwrap());
    assert!(
        !storage::exists(&store, "a/b").await.unwrap(),
        "a prefix is not an object"
    );

    // list: recursive, sorted, by whole path segments ("a/b" does not list "a/bc/..").
    storage::put(&store, "a/bc/d", vec![4u8]).await.unwrap();
    storage::put(&store, "z", vec![5u8]).await.unwrap();
    assert_eq!(
        storage::list(&store, "a").await.unwrap(),
        ["a/b/c.bin", "a/bc/d", "a/big", "a/empty"]
    );
    assert_eq!(storage::list(&store, "a/b").await.unwrap(), ["a/b/c.bin"]);
    assert!(storage::list(&store, "nothing").await.unwrap().is_empty());

    // delete_prefix removes that prefix only.
    storage::delete_prefix(&store, "a/b").await.unwrap();
    assert!(!storage::exists(&store, "a/b/c.bin").await.unwrap());
    assert_eq!(
        storage::list(&store, "").await.unwrap(),
        ["a/bc/d", "a/big", "a/empty", "z"]
    );
    storage::delete_prefix(&store, "nothing").await.unwrap();

    // Errors: a missing key is NotFound (named, not retried); a bad key is refused.
    let t = Instant::now();
    let err = storage::get(&store, "a/b/c.bin").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(!err.is_transient() && err.to_string().contains("a/b/c.bin"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "NotFound is not retried"
    );
}

/// Writers replace a large object again and again while readers read it: every read is one
/// whole version (right length, one fill byte), never a mix or a prefix. object_store writes
/// a file to a temporary name and renames it; an S3 PUT appears whole.
async fn readers_never_see_a_partial_object(store: DynStore) {
    const LEN: usize = 8 << 20;
    const VERSIONS: u8 = 6;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for v in 1..=VERSIONS {
                storage::put(&store, "ckpt/model.safetensors", vec![v; LEN])
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut reads = 0;
    while !writer.is_finished() {
        match storage::get(&store, "ckpt/model.safetensors").await {
            Ok(b) => {
                reads += 1;
                assert_eq!(b.len(), LEN, "a read saw a partial object");
                let v = b[0];
                assert!(b.iter().all(|&x| x == v), "a read mixed two versions");
                seen.insert(v);
            }
            Err(StorageError::NotFound { .. }) => assert!(seen.is_empty()),
            Err(e) => panic!("{e}"),
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let last = storage::get(&store, "ckpt/model.safetensors")
        .await
        .unwrap();
    assert!(last.len() == LEN && last.iter().all(|&x| x == VERSIONS));
    // Only the object itself: no temporary file or upload left listed.
    assert_eq!(
        storage::list(&store, "ckpt").await.unwrap(),
        ["ckpt/model.safetensors"]
    );
    eprintln!(
        "{reads} whole reads of an 8 MiB object during {VERSIONS} overwrites, versions seen {seen:?}"
    );
}

/// A streamed (multipart) upload of 20 MiB + 3 bytes, written in odd-sized pieces so that
/// writes straddle the 8 MiB parts: the object appears only when finished, reads back
/// byte-identical, and the hash and length returned are BLAKE3's and the bytes'. An empty
/// upload stores an empty object. An aborted upload, and one dropped unfinished, leave
/// nothing at their keys (nor in a listing).
async fn streamed_upload_round_trip_and_abort(store: DynStore) {
    let data: Vec<u8> = (0..(20 << 20) + 3).map(|i: u32| (i % 253) as u8).collect();
    let handle = tokio::runtime::Handle::current();
    let (s, d) = (store.clone(), data.clone());
    let (hash, len, seen_before_finish) = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut up = storage::upload(&s, "up/big.nii", handle.clone()).unwrap();
        for piece in d.chunks(1_000_003) {
            up.write_all(piece).unwrap();
        }
        let seen = handle.block_on(storage::exists(&s, "up/big.nii")).unwrap();
        let (hash, len) = up.finish().unwrap();
        (hash, len, seen)
    })
    .await
    .unwrap();
    assert!(!seen_before_finish, "an unfinished upload is not visible");
    assert_eq!(len, data.len() as u64);
    assert_eq!(hash, blake3::hash(&data).to_hex().as_str());
    let back = storage::get(&store, "up/big.nii").await.unwrap();
    assert!(back.as_ref() == &data[..], "read back differs");

    let handle = tokio::runtime::Handle::current();
    let s = store.clone();
    let (empty_hash, empty_len) = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let up = storage::upload(&s, "up/empty", handle.clone()).unwrap();
        let (hash, len) = up.finish().unwrap();

        let mut aborted = storage::upload(&s, "up/aborted", handle.clone()).unwrap();
        aborted.write_all(&vec![1u8; 9 << 20]).unwrap();
        aborted.abort();
        let mut dropped = storage::upload(&s, "up/dropped", handle.clone()).unwrap();
        dropped.write_all(&vec![2u8; 9 << 20]).unwrap();
        drop(dropped);
        (hash, len)
    })
    .await
    .unwrap();
    assert_eq!(
        (empty_hash.as_str(), empty_len),
        (blake3::hash(b"").to_hex().as_str(), 0)
    );
    assert!(storage::get(&store, "up/empty").await.unwrap().is_empty());
    for key in ["up/aborted", "up/dropped"] {
        assert!(!storage::exists(&store, key).await.unwrap(), "{key} exists");
    }
    assert_eq!(
        storage::list(&store, "up").await.unwrap(),
        ["up/big.nii", "up/empty"]
    );
}

/// Makes `dir` refuse writes: chmod 0555, or, where that does not stop writes (root), turns
/// it into a plain file so that every write below it fails with ENOTDIR. Returns the undo.
fn break_dir(dir: &std::path::Path) -> Box<dyn FnOnce()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join(".probe");
    let read_only_works = std::fs::write(&probe, b"x").is_err();
    let dir = dir.to_path_buf();
    let undo: Box<dyn FnOnce()> = if read_only_works {
        eprintln!("store dir made read-only (chmod 0555)");
        Box::new(move || {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap()
        })
    } else {
        // Root ignores the mode bits.
        std::fs::remove_file(&probe).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let aside = dir.with_extension("aside");
        std::fs::rename(&dir, &aside).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        eprintln!(
            "running as root: chmod does not stop writes; store dir replaced by a file (ENOTDIR)"
        );
        Box::new(move || {
            std::fs::remove_file(&dir).unwrap();
            std::fs::rename(&aside, &dir).unwrap();
        })
    };
    undo
}

/// A file store that stops accepting writes mid-study: the put is retried with backoff
/// (4 sleeps, 1.5 s in all), then fails with a transient error; nothing is stored under the
/// key, and the same store works again once the directory does.
#[tokio::test]
async fn file_store_refusing_writes_is_retried_then_transient() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = storage::open(root.to_str().unwrap()).unwrap();
    storage::put(&store, "studies/s/jobs/j/deliveries/000001", "t1")
        .await
        .unwrap();
    let undo = break_dir(&root.join("studies/s/jobs/j"));

    let t = Instant::now();
    let err = storage::put(
        &store,
        "studies/s/jobs/j/model.safetensors",
        vec![7u8; 1 << 20],
    )
    .await
    .unwrap_err();
    let took = t.elapsed();
    eprintln!(
        "file store refusing writes: put failed after {} attempts in {took:.2?}: {err}",
        storage::RETRIES
    );
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "retried with backoff: {took:?}"
    );

    undo();
    assert!(
        !storage::exists(&store, "studies/s/jobs/j/model.safetensors")
            .await
            .unwrap(),
        "a failed put leaves no object"
    );
    assert_eq!(
        storage::list(&store, "studies").await.unwrap(),
        ["studies/s/jobs/j/deliveries/000001"],
        "and no temporary file"
    );
    storage::put(
        &store,
        "studies/s/jobs/j/model.safetensors",
        vec![7u8; 1 << 20],
    )
    .await
    .unwrap();
    assert_eq!(
        storage::get(&store, "studies/s/jobs/j/model.safetensors")
            .await
            .unwrap()
            .len(),
        1 << 20
    );
}

/// The S3 endpoint goes down during a streamed upload: finishing it fails with a transient
/// error naming the key, and nothing is stored there once the endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_down_mid_upload_is_transient() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let bucket = s3.create_bucket("upload-outage");
    let store = storage::open_with(&bucket, s3.options()).unwrap();
    let handle = tokio::runtime::Handle::current();
    let mut up = {
        let (s, h) = (store.clone(), handle.clone());
        tokio::task::spawn_blocking(move || storage::upload(&s, "k/big", h).unwrap())
            .await
            .unwrap()
    };
    s3.kill();
    let t = Instant::now();
    let err = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        // A full part and a bit: the part is sent (and fails) while the rest is buffered;
        // the failure shows at the latest when finishing.
        let _ = up.write_all(&vec![3u8; (8 << 20) + 5]);
        up.finish().unwrap_err()
    })
    .await
    .unwrap();
    eprintln!(
        "S3 endpoint down: upload failed in {:.2?}: {err}",
        t.elapsed()
    );
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("k/big"), "{err}");
    s3.restart();
    s3.create_bucket("upload-outage");
    assert!(!storage::exists(&store, "k/big").await.unwrap());
}

/// The S3 endpoint goes down (moto killed): put, get, list and exists fail with a transient
/// error after bounded retries (timed); restarted on the same port, the same store handle
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_down_is_transient_and_recovers() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let bucket = s3.create_bucket("outage");
    let store = storage::open_with(&bucket, s3.options()).unwrap();
    storage::put(&store, "k/a", "before").await.unwrap();

    s3.kill();
    let mut worst = Duration::ZERO;
    for op in ["put", "get", "list", "exists"] {
        let t = Instant::now();
        let err = match op {
            "put" => storage::put(&store, "k/b", "during").await.unwrap_err(),
            "get" => storage::get(&store, "k/a").await.unwrap_err(),
            "list" => storage::list(&store, "k").await.unwrap_err(),
            _ => storage::exists(&store, "k/a").await.unwrap_err(),
        };
        let took = t.elapsed();
        worst = worst.max(took);
        eprintln!("S3 endpoint down: {op} failed in {took:.2?}: {err}");
        assert!(err.is_transient(), "{op}: {err}");
        assert!(
            took >= Duration::from_millis(1500),
            "{op} retried: {took:?}"
        );
        assert!(took < Duration::from_secs(20), "{op} bounded: {took:?}");
    }
    eprintln!("S3 endpoint down: slowest failure {worst:.2?}");

    s3.restart();
    // moto keeps objects in memory: the restarted server is empty, as a fresh endpoint.
    s3.create_bucket("outage");
    let t = Instant::now();
    storage::put(&store, "k/b", "after").await.unwrap();
    assert_eq!(
        storage::get(&store, "k/b").await.unwrap().as_ref(),
        b"after"
    );
    eprintln!(
        "S3 endpoint back on port {}: put+get in {:.2?}",
        s3.port,
        t.elapsed()
    );
}
