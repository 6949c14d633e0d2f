//! Predictions go back onto the source image's grid: a mask written with the source's
//! spatial fields has its dims, affine and transform codes, and the reference label's own
//! one-hot probabilities on the model grid come back as that label.

use engine::{
    bundle::{
        BundleManifest, ChannelPreprocessing, FORMAT, Network, Postprocessing, Preprocessing,
        Provenance, VERSION, Window,
    },
    predict::{preprocess, to_source_grid},
};
use volume::{Geometry, ReadLimits, Volume, nifti::write_nifti_like, read_nifti, write_nifti};

fn manifest(num_classes: usize, min_component_mm3: Vec<f64>) -> BundleManifest {
    BundleManifest {
        format: FORMAT.into(),
        version: VERSION,
        network: Network {
            in_channels: 1,
            num_classes,
            channels: vec![4, 8],
            patch: [16; 3],
            overlap: 0.25,
            tta: false,
        },
        preprocessing: Preprocessing {
            target_spacing: [1.0; 3],
            channels: vec![ChannelPreprocessing {
                modality: protocol::Modality::Ct,
                window: Window::Fixed {
                    low: -1000.0,
                    high: 1000.0,
                },
            }],
        },
        labels: (0..num_classes).map(|c| format!("c{c}")).collect(),
        postprocessing: Postprocessing { min_component_mm3 },
        provenance: Provenance {
            dataset_id: "d".into(),
            dataset_name: "n".into(),
            study: None,
            job_id: None,
            strategy: Default::default(),
            training: Default::default(),
            seed: 0,
            all_cases: false,
            validation_dice: None,
            segtune_version: "test".into(),
            created_unix: 0,
        },
    }
}

/// Rotation about z by `a` then about x by `b` (radians), as direction columns.
fn oblique(a: f64, b: f64) -> [[f64; 3]; 3] {
    let (ca, sa, cb, sb) = (a.cos(), a.sin(), b.cos(), b.sin());
    let rz = [[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cb, -sb], [0.0, sb, cb]];
    let mut m = [[0.0; 3]; 3];
    for (r, row) in m.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| rx[r][k] * rz[k][c]).sum();
        }
    }
    m
}

/// The source grids of the test: anisotropic 0.7 × 0.7 × 2.5 mm with a non-zero origin, with
/// an axis flipped, and oblique.
fn geometries() -> Vec<(&'static str, Geometry)> {
    let spacing = [0.7, 0.7, 2.5];
    let origin = [-31.5, 12.25, 140.0];
    let mut flipped = Geometry::identity(spacing);
    flipped.origin = origin;
    flipped.direction[0][0] = -1.0;
    let mut tilted = Geometry::identity(spacing);
    tilted.origin = origin;
    tilted.direction = oblique(0.5, 0.2);
    let mut plain = Geometry::identity(spacing);
    plain.origin = origin;
    vec![
        ("axis-aligned", plain),
        ("x flipped", flipped),
        ("oblique", tilted),
    ]
}

/// A label on `dims` voxels of `g`: an ellipsoid (class 1) holding a ball (class 2), in
/// voxel-scaled mm so the shapes are the same whatever the direction.
fn reference_label(dims: [usize; 3], g: &Geometry) -> Volume<u8> {
    let mut data = Vec::with_capacity(dims.iter().product());
    let c: [f64; 3] = std::array::from_fn(|a| dims[a] as f64 * g.spacing[a] / 2.0);
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let p = [
                    x as f64 * g.spacing[0] - c[0],
                    y as f64 * g.spacing[1] - c[1],
                    z as f64 * g.spacing[2] - c[2],
                ];
                let e = (p[0] / 20.0).powi(2) + (p[1] / 15.0).powi(2) + (p[2] / 18.0).powi(2);
                let b = (p[0] - 6.0).powi(2) + (p[1] + 3.0).powi(2) + p[2].powi(2);
                data.push(if b < 36.0 {
                    2
                } else if e < 1.0 {
                    1
                } else {
                    0
                });
            }
        }
    }
    Volume::new(data, dims, 1, *g)
}

#[test]
fn masks_come_back_on_the_source_grid_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let dims = [96, 80, 24];
    for (name, g) in geometries() {
        // Transform codes as scanners and tools write them: sform "aligned" (2) with a
        // "scanner" qform (1), and a qform-only file.
        for (qform_code, sform_code) in [(1i16, 2i16), (1, 0)] {
            let label = reference_label(dims, &g);
            let image = label.map(|l| -800.0 + 500.0 * l as f32);
            let src = dir.path().join(format!("{name}-{sform_code}.nii.gz"));
            write_nifti(&src, &image).unwrap();
            patch_codes(&src, qform_code, sform_code);
            let read = read_nifti(&src, &ReadLimits::default()).unwrap();
            assert_eq!(
                (read.spatial.qform_code, read.spatial.sform_code),
                (qform_code, sform_code)
            );

            // The model grid the bundle's preprocessing makes, and a stand-in model that
            // returns the reference label's one-hot probabilities on it.
            let m = manifest(3, vec![0.0, 0.0]);
            let x = preprocess(&m, &read.volume).unwrap();
            let on_model = volume::resample::resample_label(&label, [1.0; 3]);
            assert_eq!(x.dims, on_model.dims, "{name}");
            let n = on_model.voxels();
            let mut one_hot = vec![0f32; 3 * n];
            for (i, &l) in on_model.data.iter().enumerate() {
                one_hot[l as usize * n + i] = 1.0;
            }
            let probs = Volume::new(one_hot, x.dims, 3, x.geometry);
            let (mask, _) =
                to_source_grid(&m, probs, read.volume.dims, read.volume.geometry, false);

            let same = mask
                .data
                .iter()
                .zip(&label.data)
                .filter(|(a, b)| a == b)
                .count();
            let agreement = same as f64 / label.data.len() as f64;
            eprintln!("{name} (sform_code {sform_code}): {agreement:.5} of the voxels agree");
            assert!(
                agreement >= 0.995,
                "{name}: {:.4} of the voxels agree with the reference label",
                agreement
            );

            let out = dir.path().join(format!("{name}-{sform_code}-mask.nii.gz"));
            write_nifti_like(&out, &mask, &read.spatial).unwrap();
            let back = read_nifti(&out, &ReadLimits::default()).unwrap();
            assert_eq!(back.datatype, 2, "uint8");
            assert_eq!(back.volume.dims, dims);
            assert_eq!(back.spatial, read.spatial, "{name}: spatial header fields");
            assert!(
                back.volume.geometry.approx_eq(&read.volume.geometry, 1e-6),
                "{name}: {:?} vs {:?}",
                back.volume.geometry,
                read.volume.geometry
            );
            let values: Vec<u8> = back.volume.data.iter().map(|&v| v as u8).collect();
            assert_eq!(values, mask.data);
        }
    }
}

/// Post-processing keeps its physical size on any grid: a blob smaller than the bundle's
/// minimum volume is removed, a larger one is kept, on a grid of 0.7 × 0.7 × 2.5 mm voxels.
#[test]
fn small_components_are_removed_by_their_volume_in_mm3() {
    let g = geometries()[0].1;
    let dims = [40, 40, 10];
    let mut label = vec![0u8; dims.iter().product()];
    let at = |x: usize, y: usize, z: usize| (z * dims[1] + y) * dims[0] + x;
    // 4 × 4 × 2 voxels = 39.2 mm³ and 10 × 10 × 4 voxels = 490 mm³.
    for z in 0..2 {
        for y in 0..4 {
            for x in 0..4 {
                label[at(2 + x, 2 + y, 1 + z)] = 1;
            }
        }
    }
    for z in 0..4 {
        for y in 0..10 {
            for x in 0..10 {
                label[at(20 + x, 20 + y, 4 + z)] = 1;
            }
        }
    }
    let n = label.len();
    let mut one_hot = vec![0f32; 2 * n];
    for (i, &l) in label.iter().enumerate() {
        one_hot[l as usize * n + i] = 1.0;
    }
    // Probabilities already on the source grid (spacing equal: resampling is the identity).
    let probs = Volume::new(one_hot, dims, 2, g);
    let m = manifest(2, vec![100.0]);
    let (mask, _) = to_source_grid(&m, probs, dims, g, false);
    assert_eq!(mask.data.iter().filter(|&&v| v == 1).count(), 400);
    assert_eq!(mask.data[at(3, 3, 1)], 0);
    assert_eq!(mask.data[at(25, 25, 5)], 1);
}

/// Rewrites the transform codes of a `.nii.gz` written by `write_nifti`.
fn patch_codes(path: &std::path::Path, qform_code: i16, sform_code: i16) {
    use std::io::{Read, Write};
    let gz = std::fs::read(path).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    raw[252..254].copy_from_slice(&qform_code.to_le_bytes());
    raw[254..256].copy_from_slice(&sform_code.to_le_bytes());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    std::fs::write(path, enc.finish().unwrap()).unwrap();
}
