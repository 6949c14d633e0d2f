//! dataprep on hand-made MSD tasks: multi-channel MR with dataset-wide percentiles, the
//! seeded split, per-volume windows, and reading the task from a store prefix.

use std::path::Path;

use protocol::{DatasetSource, Modality, PercentileScope, PreprocessParams, Split};
use volume::{Geometry, Volume, normalize::percentiles};

/// Writes a 2-channel MR task (4D NIfTI, channels in dim[4]) with `n` cases, no validation list.
fn write_mr_task(dir: &Path, n: usize) -> Vec<Vec<f32>> {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    let dims = [10, 9, 6];
    let vox = dims[0] * dims[1] * dims[2];
    let mut training = Vec::new();
    let mut raw = Vec::new();
    for k in 0..n {
        let mut data = Vec::with_capacity(2 * vox);
        for c in 0..2 {
            for i in 0..vox {
                // Different scales per channel and case, so windows differ.
                let v = ((i * 7 + k * 13) % 101) as f32 * (1.0 + c as f32 * 9.0) + k as f32;
                data.push(v);
            }
        }
        raw.push(data.clone());
        let g = Geometry::identity([1.5, 1.2, 2.0]);
        let img = Volume::new(data, dims, 2, g);
        let lab = Volume::new(
            (0..vox).map(|i| u8::from(i % 5 == 0)).collect::<Vec<u8>>(),
            dims,
            1,
            g,
        );
        volume::write_nifti(&dir.join(format!("imagesTr/mr_{k}.nii.gz")), &img).unwrap();
        volume::write_nifti(&dir.join(format!("labelsTr/mr_{k}.nii.gz")), &lab).unwrap();
        training.push(format!(
            r#"{{"image": "./imagesTr/mr_{k}.nii.gz", "label": "./labelsTr/mr_{k}.nii.gz"}}"#
        ));
    }
    let json = format!(
        r#"{{"name": "Two Channel", "description": "", "modality": {{"0": "T2", "1": "ADC"}},
            "labels": {{"0": "background", "1": "zone"}}, "training": [{}]}}"#,
        training.join(",")
    );
    std::fs::write(dir.join("dataset.json"), json).unwrap();
    raw
}

#[tokio::test]
async fn multichannel_mr_uses_overall_percentiles_per_channel_over_training_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = write_mr_task(tmp.path(), 5);
    let store = storage::open("memory://").unwrap();
    let params = PreprocessParams {
        validation_fraction: 0.4,
        split_seed: 3,
        ..Default::default()
    };
    let src = DatasetSource::Local {
        path: tmp.path().display().to_string(),
    };
    let out = dataprep::preprocess(&store, &src, &params, &Default::default())
        .await
        .unwrap();
    let m = &out.manifest;
    assert_eq!(m.modalities, vec![Modality::Mr, Modality::Mr]);
    assert_eq!(m.split_origin, "seeded");
    assert_eq!(m.validation_cases().count(), 2);
    assert_eq!(m.train_cases().count(), 3);
    let vox = 10 * 9 * 6;
    for c in 0..2 {
        // The window is the 5th/95th percentile over all training voxels of that channel.
        let mut all = Vec::new();
        for case in m.train_cases() {
            let k: usize = case.id.trim_start_matches("mr_").parse().unwrap();
            all.extend_from_slice(&raw[k][c * vox..(c + 1) * vox]);
        }
        let want = percentiles(&all, &[5.0, 95.0]).unwrap();
        let n = &m.normalization[c];
        assert_eq!(
            (n.low, n.high),
            (Some(want[0]), Some(want[1])),
            "channel {c}"
        );
        for case in &m.cases {
            assert_eq!(case.windows[c], [want[0], want[1]]);
            assert_eq!(case.channels, 2);
        }
    }
    assert_ne!(m.normalization[0].high, m.normalization[1].high);

    // Output: 2 channels, 1 mm, values in [0, 1].
    let case = &m.cases[0];
    let bytes = storage::get(&store, &case.image_key).await.unwrap();
    let img = volume::read_nifti_bytes(&bytes, "image.nii", &Default::default())
        .unwrap()
        .volume;
    assert_eq!(img.channels, 2);
    assert_eq!(img.geometry.spacing, [1.0, 1.0, 1.0]);
    assert_eq!(img.dims, [15, 11, 12]);
    assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(case.shape, img.dims);
    assert_eq!(case.label_counts.iter().sum::<u64>(), (15 * 11 * 12) as u64);

    // Same seed, same split; the dataset id is stable and the second run is a no-op.
    let again = dataprep::preprocess(&store, &src, &params, &Default::default())
        .await
        .unwrap();
    assert!(again.reused);
    assert_eq!(again.dataset_id, out.dataset_id);
    // A parameter change is a different dataset.
    let other = PreprocessParams {
        mr_scope: PercentileScope::PerVolume,
        ..params.clone()
    };
    let per = dataprep::preprocess(&store, &src, &other, &Default::default())
        .await
        .unwrap();
    assert_ne!(per.dataset_id, out.dataset_id);
    assert!(per.manifest.normalization.iter().all(|n| n.low.is_none()));
    let case0 = per.manifest.cases.iter().find(|c| c.id == "mr_0").unwrap();
    let want = percentiles(&raw[0][..vox], &[5.0, 95.0]).unwrap();
    assert_eq!(case0.windows[0], [want[0], want[1]]);
    let splits: Vec<Split> = per.manifest.cases.iter().map(|c| c.split).collect();
    let splits0: Vec<Split> = out.manifest.cases.iter().map(|c| c.split).collect();
    assert_eq!(
        splits, splits0,
        "the split does not depend on normalization"
    );
}

#[tokio::test]
async fn task_can_be_read_from_a_store_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    write_mr_task(tmp.path(), 3);
    let store = storage::open("memory://").unwrap();
    for entry in ["dataset.json", "imagesTr", "labelsTr"] {
        let p = tmp.path().join(entry);
        let files: Vec<_> = if p.is_dir() {
            std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        } else {
            vec![p]
        };
        for f in files {
            let rel = f.strip_prefix(tmp.path()).unwrap().display().to_string();
            storage::put(
                &store,
                &format!("raw/task/{rel}"),
                std::fs::read(&f).unwrap(),
            )
            .await
            .unwrap();
        }
    }
    let from_store = dataprep::preprocess(
        &store,
        &DatasetSource::Store {
            prefix: "raw/task".into(),
        },
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    let from_dir = dataprep::preprocess(
        &storage::open("memory://").unwrap(),
        &DatasetSource::Local {
            path: tmp.path().display().to_string(),
        },
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        from_store.dataset_id, from_dir.dataset_id,
        "the id hashes content only"
    );
    assert_eq!(from_store.manifest.cases, from_dir.manifest.cases);
}

#[tokio::test]
async fn bad_parameters_are_refused_by_name() {
    let store = storage::open("memory://").unwrap();
    let src = DatasetSource::Local {
        path: "/nonexistent".into(),
    };
    for (params, field) in [
        (
            PreprocessParams {
                target_spacing: [1.0, 0.0, 1.0],
                ..Default::default()
            },
            "target_spacing",
        ),
        (
            PreprocessParams {
                mr_percentiles: [95.0, 5.0],
                ..Default::default()
            },
            "mr_percentiles",
        ),
        (
            PreprocessParams {
                validation_fraction: 1.5,
                ..Default::default()
            },
            "validation_fraction",
        ),
    ] {
        let err = dataprep::preprocess(&store, &src, &params, &Default::default())
            .await
            .unwrap_err();
        assert!(err.summary().contains(field), "{}", err.summary());
    }
    let err = dataprep::preprocess(&store, &src, &Default::default(), &Default::default())
        .await
        .unwrap_err();
    assert!(err.summary().contains("dataset.json"), "{}", err.summary());
}

/// Case names come from the image file names in a user's dataset.json and become object-key
/// segments: hostile ones are refused, all named, before anything is read or written.
#[tokio::test]
async fn hostile_case_names_are_refused_and_nothing_is_written() {
    let store = storage::open("memory://").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(200);
    let write = |images: &[&str]| {
        let training: Vec<String> = images
            .iter()
            .map(|i| format!(r#"{{"image": "{i}", "label": "./labelsTr/x.nii.gz"}}"#))
            .collect();
        let json = format!(
            r#"{{"name": "t", "modality": {{"0": "CT"}}, "labels": {{"0": "bg", "1": "fg"}},
                "training": [{}]}}"#,
            training.join(",")
        );
        std::fs::write(dir.path().join("dataset.json"), json).unwrap();
    };
    let src = DatasetSource::Local {
        path: dir.path().display().to_string(),
    };
    let long_image = format!("./imagesTr/{long}.nii.gz");
    write(&[
        "./imagesTr/ctrl\\u0001name.nii.gz",
        "./imagesTr/nul\\u0000.nii.gz",
        "./imagesTr/with space.nii.gz",
        "./imagesTr/.hidden.nii.gz",
        "./imagesTr/semi;colon.nii.gz",
        &long_image,
    ]);
    let err = dataprep::preprocess(&store, &src, &Default::default(), &Default::default())
        .await
        .unwrap_err();
    let summary = err.summary();
    assert_eq!(err.errors.len(), 6, "{summary}");
    for (case, problem) in [
        ("ctrl\u{1}name", "control character '\\u{1}'"),
        ("nul\0", "control character '\\0'"),
        ("with space", "contains ' '"),
        (".hidden", "starts with '.'"),
        ("semi;colon", "contains ';'"),
        (&format!("{}...", &long[..64]), "it is 200 bytes long"),
    ] {
        let e = err
            .errors
            .iter()
            .find(|e| e.case == case)
            .unwrap_or_else(|| {
                panic!("no error for case {case:?}:\n{summary}");
            });
        assert_eq!(e.file, "dataset.json");
        assert!(e.reason.contains("case name"), "{}", e.reason);
        assert!(e.reason.contains(problem), "{}", e.reason);
        assert!(
            e.reason.contains("allowed: 1 to 128 characters"),
            "{}",
            e.reason
        );
    }
    assert!(err.dataset_id.is_none());

    // Traversal through the path itself is refused by dataset.json validation.
    for image in [
        "../../etc/x.nii.gz",
        "/etc/x.nii.gz",
        "imagesTr\\\\..\\\\..\\\\x.nii.gz",
    ] {
        write(&[image]);
        let err = dataprep::preprocess(&store, &src, &Default::default(), &Default::default())
            .await
            .unwrap_err();
        let summary = err.summary();
        assert!(summary.contains("dataset.json"), "{summary}");
        assert!(
            summary.contains("leaves the task folder") || summary.contains("is absolute"),
            "{image}: {summary}"
        );
    }
    assert!(storage::list(&store, "").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_manifest_that_cannot_be_read_names_its_dataset() {
    let store = storage::open("memory://").unwrap();
    let e = dataprep::load_manifest(&store, "ct-0123")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, dataprep::ManifestError::NotFound { dataset_id, .. } if dataset_id == "ct-0123"),
        "{e:?}"
    );
    assert!(e.to_string().contains("preprocess it first"), "{e}");

    let key = storage::keys::manifest("ct-0123").unwrap();
    storage::put(&store, &key, b"not msgpack".to_vec())
        .await
        .unwrap();
    let e = dataprep::load_manifest(&store, "ct-0123")
        .await
        .unwrap_err();
    assert!(matches!(e, dataprep::ManifestError::Decode { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("dataset ct-0123: {key}: cannot decode")),
        "{e}"
    );

    let e = dataprep::load_manifest(&store, "../x").await.unwrap_err();
    assert!(matches!(e, dataprep::ManifestError::BadId(_)), "{e:?}");
}

#[tokio::test]
async fn a_missing_source_file_is_told_from_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let local = dataprep::Source::open(
        &DatasetSource::Local {
            path: dir.path().display().to_string(),
        },
        storage::open("memory://").unwrap(),
    );
    let e = local.read("absent.nii.gz").await.unwrap_err();
    assert!(
        matches!(e, dataprep::SourceError::MissingFile { .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("file is missing ("), "{e}");
    std::fs::create_dir(dir.path().join("a-folder.nii.gz")).unwrap();
    let e = local.read("a-folder.nii.gz").await.unwrap_err();
    assert!(matches!(e, dataprep::SourceError::Io { .. }), "{e:?}");
    let mut hasher = blake3::Hasher::new();
    let e = local
        .hash_into("absent.nii.gz", &mut hasher)
        .await
        .unwrap_err();
    assert!(
        matches!(e, dataprep::SourceError::MissingFile { .. }),
        "{e:?}"
    );

    let store = storage::open("memory://").unwrap();
    let remote = dataprep::Source::open(
        &DatasetSource::Store {
            prefix: "raw/task".into(),
        },
        store,
    );
    let e = remote.read("absent.nii.gz").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "file is missing (no object raw/task/absent.nii.gz in the store)"
    );
}

/// The streaming path (slab by slab into any writer) writes the bytes the in-memory path
/// encodes, for both the resampled image and the label, at every SIMD level.
#[test]
fn streamed_processing_writes_what_the_in_memory_path_encodes() {
    let dims = [23, 19, 70];
    let g = Geometry::identity([0.8, 0.9, 2.5]);
    let n = dims.iter().product::<usize>();
    let img = Volume::new(
        (0..n).map(|i| ((i * 31) % 977) as f32 - 300.0).collect(),
        dims,
        1,
        g,
    );
    let lab = Volume::new((0..n).map(|i| ((i / 7) % 3) as u8).collect(), dims, 1, g);
    let windows = [Some([-200.0, 500.0])];
    let whole =
        dataprep::process_volumes(img.clone(), lab.clone(), [1.0; 3], &windows, [5.0, 95.0], 3)
            .unwrap();
    assert_eq!(whole.shape, [18, 17, 175]);
    let expect_label = volume::resample::resample_label(&lab, [1.0; 3]);
    let mut counts = vec![0u64; 3];
    for &v in &expect_label.data {
        counts[v as usize] += 1;
    }
    assert_eq!(whole.label_counts, counts);
    assert_eq!(
        whole.label_nii,
        volume::write_nifti_bytes(&expect_label, false)
    );
    let mut expect_image = volume::resample::resample_image(&img, [1.0; 3]);
    volume::normalize::normalize_window(&mut expect_image.data, -200.0, 500.0);
    assert_eq!(
        whole.image_nii,
        volume::write_nifti_bytes(&expect_image, false)
    );

    simd::for_each_level(|level| {
        let (info, image, label) = dataprep::process_volumes_into(
            img.clone(),
            lab.clone(),
            [1.0; 3],
            &windows,
            [5.0, 95.0],
            3,
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(info.shape, whole.shape);
        assert_eq!(info.label_counts, whole.label_counts);
        assert!(
            image == whole.image_nii,
            "image bytes differ at SIMD {level}"
        );
        assert!(
            label == whole.label_nii,
            "label bytes differ at SIMD {level}"
        );
    });

    // A writer that fails is reported, not a panic.
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = dataprep::process_volumes_into(
        img,
        lab,
        [1.0; 3],
        &windows,
        [5.0, 95.0],
        3,
        Full,
        Vec::new(),
    )
    .err()
    .expect("a failing writer fails the case");
    assert!(e.contains("disk full"), "{e}");
}

/// A CT case big enough that its image goes up in two 8 MiB parts, preprocessed into a file
/// store: each stored object's BLAKE3 is the manifest's, and the stored bytes are exactly
/// what the in-memory path encodes for the same input. (A current-thread runtime, as the
/// other tests and callers' tests use: the uploads block on it from the blocking pool.)
#[tokio::test]
async fn streamed_objects_match_the_manifest_hashes_and_the_in_memory_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("task");
    std::fs::create_dir_all(task.join("imagesTr")).unwrap();
    std::fs::create_dir_all(task.join("labelsTr")).unwrap();
    let dims = [110, 100, 64];
    let n: usize = dims.iter().product();
    let g = Geometry::identity([1.5, 1.2, 2.0]);
    let img = Volume::new(
        (0..n).map(|i| ((i * 37) % 2001) as f32 - 1000.0).collect(),
        dims,
        1,
        g,
    );
    let lab = Volume::new((0..n).map(|i| ((i / 11) % 3) as u8).collect(), dims, 1, g);
    volume::write_nifti(&task.join("imagesTr/ct_0.nii.gz"), &img).unwrap();
    volume::write_nifti(&task.join("labelsTr/ct_0.nii.gz"), &lab).unwrap();
    std::fs::write(
        task.join("dataset.json"),
        r#"{"name": "Big CT", "description": "", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "a", "2": "b"},
            "training": [{"image": "./imagesTr/ct_0.nii.gz", "label": "./labelsTr/ct_0.nii.gz"}]}"#,
    )
    .unwrap();
    let store = storage::open(tmp.path().join("store").to_str().unwrap()).unwrap();
    let params = PreprocessParams::default();
    let src = DatasetSource::Local {
        path: task.display().to_string(),
    };
    let out = dataprep::preprocess(&store, &src, &params, &Default::default())
        .await
        .unwrap();
    let case = &out.manifest.cases[0];
    assert_eq!(case.shape, [165, 120, 128]);

    let image = storage::get(&store, &case.image_key).await.unwrap();
    let label = storage::get(&store, &case.label_key).await.unwrap();
    assert!(image.len() > storage::UPLOAD_PART, "{} bytes", image.len());
    let hex = |b: &[u8]| blake3::hash(b).to_hex().to_string();
    assert_eq!(case.image_blake3.as_deref(), Some(hex(&image).as_str()));
    assert_eq!(case.label_blake3.as_deref(), Some(hex(&label).as_str()));

    // The inputs as the preprocessor decodes them (spacing went through the f32 header).
    let limits = Default::default();
    let img = volume::read_nifti(&task.join("imagesTr/ct_0.nii.gz"), &limits).unwrap();
    let lab = volume::nifti::read_nifti_labels(&task.join("labelsTr/ct_0.nii.gz"), &limits);
    let whole = dataprep::process_volumes(
        img.volume,
        lab.unwrap().volume,
        params.target_spacing,
        &[Some(params.ct_window)],
        params.mr_percentiles,
        3,
    )
    .unwrap();
    assert!(whole.image_nii == image.as_ref(), "stored image differs");
    assert!(whole.label_nii == label.as_ref(), "stored label differs");
    assert_eq!(whole.label_counts, case.label_counts);
    // Only the dataset's objects: no staging file of an upload is left listed.
    let prefix = storage::keys::dataset_prefix(&out.dataset_id).unwrap();
    assert_eq!(
        storage::list(&store, &prefix).await.unwrap().len(),
        3,
        "image, label, manifest"
    );
}

/// A store that refuses writes fails the streamed case with the store's error, naming the
/// image's key and transient (so the job is retried, not dead-lettered); nothing is left at
/// either key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_the_upload_is_a_transient_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = storage::open(root.to_str().unwrap()).unwrap();
    // Writes under "ds" fail with ENOTDIR, whoever runs the test (root ignores chmod).
    std::fs::write(root.join("ds"), b"not a directory").unwrap();
    let dims = [12, 10, 8];
    let n: usize = dims.iter().product();
    let g = Geometry::identity([1.5, 1.2, 2.0]);
    let img = Volume::new((0..n).map(|i| i as f32).collect(), dims, 1, g);
    let lab = Volume::new(vec![0u8; n], dims, 1, g);
    let handle = tokio::runtime::Handle::current();
    let s = store.clone();
    let err = tokio::task::spawn_blocking(move || {
        dataprep::process_volumes_to_store(
            img,
            lab,
            [1.0; 3],
            &[Some([0.0, 100.0])],
            [5.0, 95.0],
            2,
            &s,
            ["ds/image.nii", "ds/label.nii"],
            handle,
        )
        .err()
        .expect("the upload must fail")
    })
    .await
    .unwrap();
    match &err {
        dataprep::StreamError::Store { key, source } => {
            assert_eq!(key, "ds/image.nii");
            assert!(source.is_transient(), "{source}");
        }
        other => panic!("expected a store error, got {other}"),
    }
    std::fs::remove_file(root.join("ds")).unwrap();
    for key in ["ds/image.nii", "ds/label.nii"] {
        assert!(!storage::exists(&store, key).await.unwrap(), "{key}");
    }
}
