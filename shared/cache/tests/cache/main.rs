//! The case cache against real stores (a `file://` store shared by processes, `memory://`
//! in-process) and real cache folders: one download per host, corrupt files fetched again,
//! the bound and the pins, and patches sampled from mapped cases.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, atomic::Ordering},
};

use augment::{CaseIndex, PatchSampler, TrainingCase, VolumeCase};
use cache::{CacheError, CaseCache, MappedCase};
use protocol::{DatasetSource, Manifest, PreprocessParams};
use rand::SeedableRng;
use storage::DynStore;
use volume::synth::{SynthKind, SynthSpec};

/// Preprocesses a `cases`-case CT phantom task (24 voxels in-plane) into `store`.
async fn dataset(store: &DynStore, cases: usize) -> Manifest {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::new(SynthKind::CtOrgan, cases, 24, 3);
    volume::synth::write_task(&spec, dir.path()).unwrap();
    let source = DatasetSource::Local {
        path: dir.path().to_string_lossy().into_owned(),
    };
    dataprep::preprocess(
        store,
        &source,
        &PreprocessParams::default(),
        &dataprep::Options::default(),
    )
    .await
    .expect("preprocessing the phantom task")
    .manifest
}

/// The case's voxels as the store holds them (decoded in memory, the old path).
async fn stored(
    store: &DynStore,
    m: &Manifest,
    i: usize,
) -> (volume::Volume<f32>, volume::Volume<u8>) {
    let c = &m.cases[i];
    let limits = volume::ReadLimits::default();
    let img = storage::get(store, &c.image_key).await.unwrap();
    let lab = storage::get(store, &c.label_key).await.unwrap();
    (
        volume::read_nifti_bytes(&img, "image", &limits)
            .unwrap()
            .volume,
        volume::nifti::read_nifti_labels_bytes(&lab, "label", &limits)
            .unwrap()
            .volume,
    )
}

fn same_voxels(m: &MappedCase, image: &volume::Volume<f32>, label: &volume::Volume<u8>) {
    assert_eq!(m.dims(), image.dims);
    for c in 0..image.channels {
        assert_eq!(m.image_channel(c), image.channel(c));
    }
    assert_eq!(m.label(), &label.data[..]);
    assert_eq!(m.image_volume().geometry, image.geometry);
}

fn gets(c: &CaseCache) -> u64 {
    c.stats().gets.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_fetch_a_case_with_one_download_and_read_the_same_bytes() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let store = storage::open(store_dir.to_str().unwrap()).unwrap();
    let m = dataset(&store, 3).await;
    let cache_dir = root.path().join("cache");
    let case = &m.cases[0].id;
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_cache-fetch"))
                .args([
                    store_dir.to_str().unwrap(),
                    cache_dir.to_str().unwrap(),
                    "1000000000",
                    &m.dataset_id,
                    case,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a cache-fetch process failed");
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    let total_gets: u64 = outputs
        .iter()
        .map(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("gets "))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        total_gets, 2,
        "image and label read once for the host: {outputs:?}"
    );
    let hashes: Vec<&str> = outputs
        .iter()
        .map(|o| o.lines().find(|l| l.starts_with("case ")).unwrap())
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // And those bytes are the stored case's.
    let (image, label) = stored(&store, &m, 0).await;
    let c = CaseCache::new(&cache_dir, 1_000_000_000);
    let mapped = c.get(&store, &m.dataset_id, &m.cases[0]).await.unwrap();
    same_voxels(&mapped, &image, &label);
    assert_eq!(gets(&c), 0);
    // Only the case file and its lock are left: no temporary files.
    let mut names: Vec<String> = std::fs::read_dir(cache_dir.join(&m.dataset_id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [format!("{case}.case"), format!("{case}.lock")]);
}

/// Damages the case file at `path` and checks that a new process fetches it again and reads
/// the stored voxels.
async fn refetched_after(damage: impl FnOnce(&Path), store: &DynStore, m: &Manifest, dir: &Path) {
    let path = dir
        .join(&m.dataset_id)
        .join(format!("{}.case", m.cases[0].id));
    damage(&path);
    let c = CaseCache::new(dir, 1 << 30);
    let mapped = c.get(store, &m.dataset_id, &m.cases[0]).await.unwrap();
    assert_eq!(c.stats().refetched.load(Ordering::Relaxed), 1);
    assert_eq!(gets(&c), 2, "fetched again");
    let (image, label) = stored(store, m, 0).await;
    same_voxels(&mapped, &image, &label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_bit_flipped_cache_files_are_fetched_again_never_used() {
    let store = storage::open("memory://").unwrap();
    let m = dataset(&store, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let first = CaseCache::new(dir.path(), 1 << 30);
    drop(first.get(&store, &m.dataset_id, &m.cases[0]).await.unwrap());
    assert_eq!(gets(&first), 2);

    let truncate = |p: &Path| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 100).unwrap();
    };
    refetched_after(truncate, &store, &m, dir.path()).await;
    // One bit in the image voxels: the header is intact, the body's checksum is not.
    let flip_body = |p: &Path| {
        let mut b = std::fs::read(p).unwrap();
        let at = cache::file::HEADER_LEN + 4 * 1000 + 1;
        b[at] ^= 0x10;
        std::fs::write(p, b).unwrap();
    };
    refetched_after(flip_body, &store, &m, dir.path()).await;
    let flip_header = |p: &Path| {
        let mut b = std::fs::read(p).unwrap();
        b[20] ^= 0x01;
        std::fs::write(p, b).unwrap();
    };
    refetched_after(flip_header, &store, &m, dir.path()).await;
    let garbage = |p: &Path| std::fs::write(p, b"not a case").unwrap();
    refetched_after(garbage, &store, &m, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_object_that_differs_from_its_manifest_checksum_is_refused() {
    let store = storage::open("memory://").unwrap();
    let mut m = dataset(&store, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let c = CaseCache::new(dir.path(), 1 << 30);
    m.cases[1].label_blake3 = Some("00".repeat(32));
    let e = c
        .get(&store, &m.dataset_id, &m.cases[1])
        .await
        .err()
        .expect("checksum mismatch");
    assert!(matches!(e, CacheError::BadObject { .. }), "{e}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains(&m.cases[1].label_key) && msg.contains("BLAKE3"),
        "{msg}"
    );
    // Nothing was kept.
    assert_eq!(c.usage().unwrap(), 0);
    // A manifest from before checksums were recorded still works (the NIfTI reader checks).
    m.cases[1].image_blake3 = None;
    m.cases[1].label_blake3 = None;
    assert!(c.get(&store, &m.dataset_id, &m.cases[1]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_total_under_the_bound_and_never_removes_a_mapped_case() {
    let store = storage::open("memory://").unwrap();
    let m = dataset(&store, 5).await;
    // The file size of each case, measured in a scratch cache.
    let scratch = tempfile::tempdir().unwrap();
    let s = CaseCache::new(scratch.path(), u64::MAX);
    let mut sizes = Vec::new();
    for c in &m.cases {
        sizes.push(s.get(&store, &m.dataset_id, c).await.unwrap().file_bytes() as u64);
    }
    let largest = *sizes.iter().max().unwrap();
    // Room for two cases, not three.
    let bound = 2 * largest + largest / 2;
    let dir = tempfile::tempdir().unwrap();
    let cache = CaseCache::new(dir.path(), bound);
    let id = &m.dataset_id;
    let path = |i: usize| dir.path().join(id).join(format!("{}.case", m.cases[i].id));

    let pinned = cache.get(&store, id, &m.cases[0]).await.unwrap();
    drop(cache.get(&store, id, &m.cases[1]).await.unwrap());
    assert!(cache.usage().unwrap() <= bound);
    // Case 2 needs room: case 1 (least recently used, unmapped) goes, case 0 (mapped) stays.
    let second = cache.get(&store, id, &m.cases[2]).await.unwrap();
    assert!(cache.usage().unwrap() <= bound);
    assert!(path(0).exists(), "a mapped case was evicted");
    assert!(!path(1).exists());
    assert_eq!(cache.stats().evicted.load(Ordering::Relaxed), 1);
    // Both remaining cases are mapped: a third does not fit, and nothing is removed for it.
    let e = cache
        .get(&store, id, &m.cases[3])
        .await
        .err()
        .expect("no room while both are mapped");
    assert!(
        matches!(e, CacheError::Full { .. }) && e.is_transient(),
        "{e}"
    );
    assert!(path(0).exists() && path(2).exists() && !path(3).exists());
    assert!(cache.usage().unwrap() <= bound);
    // The mapped case still reads what the store holds.
    let (image, label) = stored(&store, &m, 0).await;
    same_voxels(&pinned, &image, &label);
    // Another "process" (its own cache handle, its own open files) cannot evict them either.
    let other = CaseCache::new(dir.path(), bound);
    assert!(other.get(&store, id, &m.cases[4]).await.is_err());
    // Unmapped, the older one is evicted for the next case.
    drop(pinned);
    let _fourth = other.get(&store, id, &m.cases[4]).await.unwrap();
    assert!(!path(0).exists() && path(2).exists() && path(4).exists());
    assert!(other.usage().unwrap() <= bound);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_sampling_from_mapped_cases_matches_the_in_memory_path_and_its_rate() {
    let store = storage::open("memory://").unwrap();
    let m = dataset(&store, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let c = CaseCache::new(dir.path(), 1 << 30);
    let mapped = Arc::new(c.get(&store, &m.dataset_id, &m.cases[0]).await.unwrap());
    let (image, label) = stored(&store, &m, 0).await;
    let index = CaseIndex::new(&label);
    // The index stored in the cache file is the one the in-memory path builds.
    assert_eq!(mapped.index(), &index);
    let memory = VolumeCase {
        image: &image,
        label: &label,
        index: &index,
    };
    // A patch a quarter of the volume's extent, so random crops often miss the organ.
    let patch = image.dims.map(|d| (d / 4).max(2));
    let rate =
        |fg: f64, case: &dyn Fn(&PatchSampler, &mut rand_chacha::ChaCha8Rng) -> augment::Patch| {
            let s = PatchSampler::new(patch, fg)
                .unwrap()
                .with_jitter(0.0)
                .unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let n = 400;
            (0..n)
                .filter(|_| case(&s, &mut rng).label.iter().any(|&l| l > 0))
                .count() as f64
                / n as f64
        };
    let from_map = |s: &PatchSampler, r: &mut rand_chacha::ChaCha8Rng| s.sample_case(&*mapped, r);
    let from_memory = |s: &PatchSampler, r: &mut rand_chacha::ChaCha8Rng| s.sample_case(&memory, r);
    // Same seed, same patches: mapped and in-memory draw identically.
    for fg in [0.0, 1.0 / 3.0, 1.0] {
        let s = PatchSampler::new(patch, fg).unwrap();
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            assert_eq!(
                s.sample_case(&*mapped, &mut a),
                s.sample_case(&memory, &mut b)
            );
        }
    }
    // fg_fraction 1: every patch is centred on foreground; 0: only what random crops hit;
    // 1/3 lies in between, at (1/3)·1 + (2/3)·random.
    let always = rate(1.0, &from_map);
    let never = rate(0.0, &from_map);
    let third = rate(1.0 / 3.0, &from_map);
    assert_eq!(always, 1.0);
    assert!(
        never < 0.9,
        "random crops hit foreground {never} of the time"
    );
    let expected = 1.0 / 3.0 + 2.0 / 3.0 * never;
    assert!(
        (third - expected).abs() < 0.08,
        "fg 1/3: {third}, expected about {expected} (random crops: {never})"
    );
    assert_eq!(third, rate(1.0 / 3.0, &from_memory));
}
