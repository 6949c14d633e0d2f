//! `segtune train --bundle` then `segtune predict` as the README documents them ("Using the
//! result"): masks on each scan's own grid with its header, and bad inputs refused in one
//! line naming the file, with nothing written for them.

use std::path::Path;

use volume::{Geometry, ReadLimits, Volume, read_nifti, write_nifti};

use crate::{
    assert_one_line_error, segtune,
    train_eval::{run_ok, tiny_dataset},
};

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_trained_bundle_segments_scans_on_their_own_grid() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let id = tiny_dataset(dir.path(), &store);
    let bundle = dir.path().join("bundle");
    run_ok(
        segtune()
            .args([
                "train",
                "--dataset",
                &id,
                "--channels",
                "4,8",
                "--epochs",
                "2",
            ])
            .arg("--out")
            .arg(dir.path().join("m.safetensors"))
            .arg("--bundle")
            .arg(&bundle)
            .arg("--store")
            .arg(&store),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "segtune-model");
    assert_eq!(manifest["provenance"]["dataset_id"], id.as_str());
    let dice = manifest["provenance"]["validation_dice"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&dice), "{dice}");
    // `segtune train` validates with mirroring by default, and says so in the bundle.
    assert_eq!(manifest["network"]["tta"], true);
    assert_eq!(manifest["provenance"]["training"]["tta"], true);
    // `segtune eval` of the checkpoint repeats that validation (mirrored, from the
    // checkpoint's settings) and prints the same Dice.
    let out = run_ok(
        segtune()
            .args(["eval", "--dataset", &id, "--checkpoint"])
            .arg(dir.path().join("m.safetensors"))
            .arg("--store")
            .arg(&store),
    );
    let evaluated: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((evaluated - dice).abs() < 1e-6, "{evaluated} vs {dice}");

    // The task's own scans (about 0.7 x 0.7 x 2.5 mm, some with flipped axes), as a folder.
    let images = dir.path().join("task").join("imagesTr");
    let masks = dir.path().join("masks");
    let out = run_ok(
        segtune()
            .args(["predict", "--model"])
            .arg(&bundle)
            .arg("--input")
            .arg(&images)
            .arg("--output")
            .arg(&masks)
            .arg("--save-probabilities"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        masks.display().to_string()
    );
    let scans = files(&images);
    assert_eq!(scans.len(), 3);
    for name in &scans {
        let limits = ReadLimits::default();
        let scan = read_nifti(&images.join(name), &limits).unwrap();
        let mask = read_nifti(&masks.join(name), &limits).unwrap();
        assert_eq!(mask.datatype, 2, "{name}: uint8");
        assert_eq!(mask.volume.dims, scan.volume.dims, "{name}");
        assert_eq!(mask.spatial, scan.spatial, "{name}");
        assert!(mask.volume.data.iter().all(|&v| v <= 2.0), "{name}");
        let stem = name.trim_end_matches(".nii.gz");
        let probs = read_nifti(&masks.join(format!("{stem}_probabilities.nii.gz")), &limits)
            .unwrap()
            .volume;
        assert_eq!((probs.dims, probs.channels), (scan.volume.dims, 3));
        // The mask is the argmax of the probabilities written beside it, but for the small
        // components post-processing relabels (about 1 % of the voxels for this barely
        // trained model).
        let n = probs.voxels();
        let differ = (0..n)
            .filter(|&i| {
                let p = |c: usize| probs.data[c * n + i];
                let best = (0..3).fold(0, |b, c| if p(c) > p(b) { c } else { b });
                best as f32 != mask.volume.data[i]
            })
            .count();
        assert!(differ * 20 < n, "{name}: {differ} of {n} voxels differ");
    }

    // The bundle says its validation mirrored, so predict mirrors by default: `--tta` writes
    // the same bytes, and `--no-tta` other probabilities.
    let stem = scans[0].trim_end_matches(".nii.gz");
    let probabilities = format!("{stem}_probabilities.nii.gz");
    let mut outputs = Vec::new();
    for flag in ["--tta", "--no-tta"] {
        let one = dir.path().join(format!("one{flag}"));
        run_ok(
            segtune()
                .args(["predict", flag, "--save-probabilities", "--model"])
                .arg(&bundle)
                .arg("--input")
                .arg(images.join(&scans[0]))
                .arg("--output")
                .arg(&one),
        );
        assert_eq!(files(&one), vec![scans[0].clone(), probabilities.clone()]);
        outputs.push(one);
    }
    let bytes = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert!(bytes(&outputs[0], &scans[0]) == bytes(&masks, &scans[0]));
    assert!(bytes(&outputs[0], &probabilities) == bytes(&masks, &probabilities));
    assert!(bytes(&outputs[1], &probabilities) != bytes(&masks, &probabilities));

    // Bad inputs: one line naming the file and the problem, nothing written for them.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let two_channels = bad.join("two.nii.gz");
    write_nifti(
        &two_channels,
        &Volume::new(
            vec![0.0f32; 2 * 8 * 8 * 8],
            [8, 8, 8],
            2,
            Geometry::identity([1.0; 3]),
        ),
    )
    .unwrap();
    let garbage = bad.join("garbage.nii.gz");
    std::fs::write(&garbage, b"not a nifti file").unwrap();
    let refused = dir.path().join("refused");
    for (input, needles) in [
        (
            &two_channels,
            &["two.nii.gz", "2 channel(s)", "the model takes 1"][..],
        ),
        (&garbage, &["garbage.nii.gz"][..]),
    ] {
        let out = segtune()
            .args(["predict", "--model"])
            .arg(&bundle)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&refused)
            .output()
            .unwrap();
        assert_one_line_error(&out, needles);
        assert!(files(&refused).is_empty(), "{:?}", files(&refused));
    }
    // A folder with a good scan among bad ones: the good one is segmented, each bad one
    // named, exit 1.
    std::fs::copy(images.join(&scans[0]), bad.join(&scans[0])).unwrap();
    let out = segtune()
        .args(["predict", "--model"])
        .arg(&bundle)
        .arg("--input")
        .arg(&bad)
        .arg("--output")
        .arg(&refused)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("garbage.nii.gz") && err.contains("two.nii.gz"),
        "{err}"
    );
    assert!(
        err.contains("2 of 3 input(s) could not be segmented"),
        "{err}"
    );
    assert_eq!(files(&refused), vec![scans[0].clone()]);

    // A bundle from a newer segtune, and a folder that is no bundle.
    let mut newer = manifest.clone();
    newer["version"] = 2.into();
    let newer_dir = dir.path().join("newer");
    std::fs::create_dir_all(&newer_dir).unwrap();
    std::fs::write(newer_dir.join("bundle.json"), newer.to_string()).unwrap();
    std::fs::copy(
        bundle.join("model.safetensors"),
        newer_dir.join("model.safetensors"),
    )
    .unwrap();
    for (model, needles) in [
        (&newer_dir, &["bundle.json", "version 2 is newer"][..]),
        (&images, &["bundle.json"][..]),
    ] {
        let out = segtune()
            .args(["predict", "--model"])
            .arg(model)
            .arg("--input")
            .arg(&images)
            .arg("--output")
            .arg(dir.path().join("never"))
            .output()
            .unwrap();
        assert_one_line_error(&out, needles);
    }
    assert!(!dir.path().join("never").exists());
}
