//! Synthetic MSD-layout phantom tasks (`segtune data synth`), so that everything runs with
//! no download.
//!
//! [`write_task`] writes `dataset.json`, `imagesTr/<id>.nii.gz` and `labelsTr/<id>.nii.gz`
//! (ids `ctorgan_000`, `ctorgan_001`, ... or `mrstructure_000`, ...). Labels are uint8 with
//! `0` background, `1` organ (the CT organ or the MR structure), `2` lesion (inside the
//! organ, in about half of the cases). `dataset.json` lists every case under `training` and
//! the last [`SynthSpec::validation`] cases again under `validation` (MONAI's datalist
//! convention, see [`crate::msd`]). Everything is a pure function of the spec: case `k` is
//! drawn from `ChaCha8Rng::seed_from_u64(seed)` on stream `k`, so the files are
//! byte-identical for the same spec whatever the thread count. Existing files in `out` are
//! overwritten; other files there are left alone.
//!
//! # The phantoms
//! The anatomy is defined in world (RAS+, mm) coordinates around a random centre, and each
//! voxel takes the value of the anatomy at its world position, so a flipped header still
//! describes the same patient: the data in the file is mirrored along the flipped axis.
//! - Geometry: `size` × `size` voxels in-plane; the slice count gives a roughly cubic field
//!   of view. CT spacing about 0.7 × 0.7 × 2.5 mm, MR either about 1.25 × 1.25 × 1.37 mm or
//!   0.9 × 0.9 × 2.0 mm; each spacing jittered per case by a few percent. Origins are random
//!   (±60 mm). Cases `k ≡ 1 (mod 3)` have a negative x (`k ≡ 1 mod 6`) or y (`k ≡ 4 mod 6`)
//!   axis direction.
//! - CT (int16 HU, clamped to -1024..=3071): air -1000 outside an elliptic-cylinder body,
//!   a subcutaneous fat ring (~-95), soft tissue (~40), a spine-like cylinder posterior
//!   (~700), a smooth random blob organ (~100, label 1) covering 5–20 % of the volume, and in
//!   about half of the cases a hypodense lesion (~60, label 2) inside it covering 0.5–3 %.
//!   Gaussian noise.
//! - MR (float32): a head ellipsoid with bright scalp, dark skull, brain tissue (~260), dark
//!   ventricles, a brighter structure blob (~480, label 1; 5–20 % of the volume) and in
//!   about half the cases a bright lesion in it (~720, label 2); a smooth multiplicative bias
//!   field (up to about ±35 %), a per-case scanner scale (×0.6..×1.8) and offset (0..40), and
//!   Rician noise.
//!
//! # What differs between training and validation cases
//! The validation cases come from "another scanner", in ways the searched augmentations
//! (intensity shift/scale, contrast, noise, smoothing) can cover but the training cases never
//! show:
//! - CT: an affine HU change that keeps air fixed, `HU' = -1000 + (HU + 1000)·s + d` with
//!   `s ∈ [1.02, 1.04]`, `d ∈ [5, 20]` HU (soft tissue ~25–60 HU brighter; in the
//!   pipeline's normalized units, clip [-1000, 1000] → [0, 1], a scale `s` plus a shift
//!   `d/2000`). Training cases have `s = 1`, `d = 0`.
//! - MR: a contrast (gamma) change of the anatomy, `I' = 800·(I/800)^γ` with
//!   `γ ∈ [0.65, 0.75]` before bias field and scanner scaling (training: `γ = 1`); this
//!   lowers the structure-to-tissue contrast, which percentile normalization does not undo.
//! - Both: Gaussian blur of the clean image with σ ∈ [0.8, 1.1] mm per axis (training: none),
//!   then noise at a higher level: CT σ ∈ [22, 30] HU (training [8, 14]); MR σ ∈ [6, 8] %
//!   of the brain-tissue intensity (training [2, 3.5] %).
//!
//! Geometry, anatomy, label statistics, bias-field strength and scanner scale ranges are
//! drawn the same way for both splits.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::msd::{self, DatasetJson, Pair};
use crate::nifti::{NiftiError, write_nifti};
use crate::{Geometry, Volume};

/// Smallest and largest accepted [`SynthSpec::size`].
pub const MIN_SIZE: usize = 16;
pub const MAX_SIZE: usize = 256;
/// Largest accepted [`SynthSpec::cases`].
pub const MAX_CASES: usize = 10_000;

/// Which phantom to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynthKind {
    /// CT abdomen-like slab: body, spine, organ, lesion.
    CtOrgan,
    /// MR head-like volume: structure, lesion, bias field.
    MrStructure,
}

impl SynthKind {
    /// Task name written to `dataset.json`.
    pub fn task_name(self) -> &'static str {
        match self {
            Self::CtOrgan => "Synth_CtOrgan",
            Self::MrStructure => "Synth_MrStructure",
        }
    }

    /// Prefix of the case ids.
    pub fn case_prefix(self) -> &'static str {
        match self {
            Self::CtOrgan => "ctorgan",
            Self::MrStructure => "mrstructure",
        }
    }

    /// The `modality` entry of channel 0.
    pub fn modality(self) -> &'static str {
        match self {
            Self::CtOrgan => "CT",
            Self::MrStructure => "MRI",
        }
    }

    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CtOrgan => "ct-organ",
            Self::MrStructure => "mr-structure",
        }
    }
}

impl fmt::Display for SynthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SynthKind {
    type Err = String;

    /// `ct-organ` (also `ct`, `ct_organ`, `ctorgan`) or `mr-structure` (also `mr`, `mri`,
    /// `mr_structure`, `mrstructure`), any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let n: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match n.as_str() {
            "ct" | "ctorgan" => Ok(Self::CtOrgan),
            "mr" | "mri" | "mrstructure" => Ok(Self::MrStructure),
            _ => Err(format!(
                "unknown phantom kind {s:?}; expected ct-organ or mr-structure"
            )),
        }
    }
}

/// What to synthesize.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub kind: SynthKind,
    /// Number of cases (≥ 2).
    pub cases: usize,
    /// Voxels along each in-plane axis of the written images ([`MIN_SIZE`]..=[`MAX_SIZE`]).
    pub size: usize,
    pub seed: u64,
    /// How many of the cases (the last ones) form the validation split; 1..cases.
    pub validation: usize,
    /// MR only: an extra scanner gain of the validation cases (a factor on every intensity
    /// on top of the per-case scanner scale both splits draw), so the validation scanner is
    /// e.g. 30 % brighter (1.3) than any training scan of the same anatomy. 1 (the default)
    /// leaves the task exactly as before; in [`MIN_GAIN`, `MAX_GAIN`].
    pub validation_gain: f64,
}

/// Bounds of [`SynthSpec::validation_gain`].
pub const MIN_GAIN: f64 = 0.25;
pub const MAX_GAIN: f64 = 4.0;

impl SynthSpec {
    /// A spec with the default validation count, [`SynthSpec::default_validation`].
    pub fn new(kind: SynthKind, cases: usize, size: usize, seed: u64) -> Self {
        Self {
            kind,
            cases,
            size,
            seed,
            validation: Self::default_validation(cases),
            validation_gain: 1.0,
        }
    }

    /// A quarter of the cases, at least one.
    pub fn default_validation(cases: usize) -> usize {
        (cases / 4).max(1)
    }

    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Spec(m));
        if !(2..=MAX_CASES).contains(&self.cases) {
            return bad(format!(
                "cases must be in 2..={MAX_CASES}, got {}",
                self.cases
            ));
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return bad(format!(
                "size must be in {MIN_SIZE}..={MAX_SIZE}, got {}",
                self.size
            ));
        }
        let g = self.validation_gain;
        if !(g.is_finite() && (MIN_GAIN..=MAX_GAIN).contains(&g)) {
            return bad(format!(
                "validation gain must be in [{MIN_GAIN}, {MAX_GAIN}], got {g}"
            ));
        }
        if g != 1.0 && self.kind != SynthKind::MrStructure {
            return bad(format!(
                "a validation gain is an MR scanner's (the CT task keeps Hounsfield units), \
                 got {g} for {}",
                self.kind
            ));
        }
        if self.validation == 0 || self.validation >= self.cases {
            return bad(format!(
                "validation must be in 1..{} (at least one case left for training), got {}",
                self.cases, self.validation
            ));
        }
        Ok(())
    }

    /// Id of case `k`, e.g. `ctorgan_007`.
    pub fn case_id(&self, k: usize) -> String {
        format!("{}_{k:03}", self.kind.case_prefix())
    }

    /// True for the last [`SynthSpec::validation`] cases.
    pub fn is_validation(&self, k: usize) -> bool {
        k + self.validation >= self.cases
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth spec: {0}")]
    Spec(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nifti(#[from] NiftiError),
    #[error(transparent)]
    Msd(#[from] msd::MsdError),
}

/// What [`write_task`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    pub name: String,
    pub cases: usize,
    pub train: usize,
    pub validation: usize,
    pub dir: PathBuf,
}

/// The image of a synthetic case: int16 HU for CT, float32 for MR.
#[derive(Debug, Clone, PartialEq)]
pub enum SynthImage {
    Ct(Volume<i16>),
    Mr(Volume<f32>),
}

impl SynthImage {
    pub fn geometry(&self) -> &Geometry {
        match self {
            Self::Ct(v) => &v.geometry,
            Self::Mr(v) => &v.geometry,
        }
    }

    pub fn dims(&self) -> [usize; 3] {
        match self {
            Self::Ct(v) => v.dims,
            Self::Mr(v) => v.dims,
        }
    }

    pub fn to_f32(&self) -> Volume<f32> {
        match self {
            Self::Ct(v) => v.map(f32::from),
            Self::Mr(v) => v.clone(),
        }
    }
}

/// Tissue classes of the phantom (the `tissue` map of a [`SynthCase`]).
pub mod tissue {
    pub const AIR: u8 = 0;
    /// CT subcutaneous fat; MR scalp.
    pub const FAT: u8 = 1;
    /// CT soft tissue; MR brain tissue.
    pub const SOFT: u8 = 2;
    /// CT spine; MR skull.
    pub const BONE: u8 = 3;
    /// MR ventricles.
    pub const CSF: u8 = 4;
    /// Label 1.
    pub const ORGAN: u8 = 5;
    /// Label 2.
    pub const LESION: u8 = 6;
}

/// One generated case, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthCase {
    pub id: String,
    pub validation: bool,
    pub image: SynthImage,
    /// 0 background, 1 organ/structure, 2 lesion; same geometry as the image.
    pub label: Volume<u8>,
    /// Tissue class of each voxel ([`tissue`]), same layout as the label.
    pub tissue: Vec<u8>,
    pub has_lesion: bool,
}

/// The `dataset.json` of a task (paths written MSD-style, `./imagesTr/...`).
pub fn dataset_json(spec: &SynthSpec) -> DatasetJson {
    let pair = |k: usize| {
        let id = spec.case_id(k);
        Pair {
            image: format!("./imagesTr/{id}.nii.gz"),
            label: format!("./labelsTr/{id}.nii.gz"),
        }
    };
    let split = match spec.kind {
        SynthKind::CtOrgan => {
            "an HU change fixed at air (HU' = -1000 + (HU+1000)*s + d, s in [1.02,1.04], \
             d in [5,20]), Gaussian blur (sigma 0.8-1.1 mm) and stronger noise \
             (22-30 HU instead of 8-14)"
        }
        SynthKind::MrStructure => {
            "a contrast change (gamma 0.65-0.75), Gaussian blur (sigma 0.8-1.1 mm) and \
             stronger Rician noise (6-8 % of tissue instead of 2-3.5 %)"
        }
    };
    // Only a non-default gain is mentioned, so a default task's dataset.json is unchanged.
    let gain = if spec.validation_gain != 1.0 {
        format!(
            ", and a scanner gain of x{} on every validation intensity",
            spec.validation_gain
        )
    } else {
        String::new()
    };
    let split = format!("{split}{gain}");
    DatasetJson {
        name: spec.kind.task_name().to_string(),
        description: format!(
            "segtune synthetic {} phantom, {} cases of {} voxels in-plane, seed {}. \
             The cases in `validation` differ from the training cases by {split}.",
            spec.kind, spec.cases, spec.size, spec.seed
        ),
        reference: Some("segtune data synth".to_string()),
        licence: Some("CC0-1.0".to_string()),
        release: Some(format!("seed {}", spec.seed)),
        tensor_image_size: Some("3D".to_string()),
        modality: [("0".to_string(), spec.kind.modality().to_string())].into(),
        labels: [
            ("0".to_string(), "background".to_string()),
            ("1".to_string(), "organ".to_string()),
            ("2".to_string(), "lesion".to_string()),
        ]
        .into(),
        num_training: Some(spec.cases),
        num_test: Some(0),
        training: (0..spec.cases).map(pair).collect(),
        validation: Some(
            (0..spec.cases)
                .filter(|&k| spec.is_validation(k))
                .map(pair)
                .collect(),
        ),
        test: Vec::new(),
        extra: Default::default(),
    }
}

/// Writes the task into `out` (created if needed); see the module docs.
pub fn write_task(spec: &SynthSpec, out: &Path) -> Result<SynthSummary, SynthError> {
    spec.validate()?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SynthError::Io { path, source }
    };
    let images = out.join("imagesTr");
    let labels = out.join("labelsTr");
    for dir in [&images, &labels] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    (0..spec.cases).into_par_iter().try_for_each(|k| {
        let case = generate_case(spec, k)?;
        let image_path = images.join(format!("{}.nii.gz", case.id));
        match &case.image {
            SynthImage::Ct(v) => write_nifti(&image_path, v)?,
            SynthImage::Mr(v) => write_nifti(&image_path, v)?,
        }
        write_nifti(&labels.join(format!("{}.nii.gz", case.id)), &case.label)?;
        Ok::<(), SynthError>(())
    })?;
    // dataset.json last, through a rename, so a reader never sees it before the volumes.
    let dataset = dataset_json(spec);
    let tmp = out.join("dataset.json.tmp");
    msd::write_dataset_json(&tmp, &dataset)?;
    let path = out.join(msd::DATASET_JSON);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(SynthSummary {
        name: dataset.name,
        cases: spec.cases,
        train: spec.cases - spec.validation,
        validation: spec.validation,
        dir: out.to_path_buf(),
    })
}

/// Generates case `k` in memory; deterministic in `(spec, k)`.
pub fn generate_case(spec: &SynthSpec, k: usize) -> Result<SynthCase, SynthError> {
    spec.validate()?;
    if k >= spec.cases {
        return Err(SynthError::Spec(format!(
            "case {k} out of range (the spec has {} cases)",
            spec.cases
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(k as u64);
    let validation = spec.is_validation(k);
    let has_lesion = (k as u64).wrapping_add(spec.seed).is_multiple_of(2);
    let grid = Grid::sample(spec, k, &mut rng);
    let (tissue, label) = match spec.kind {
        SynthKind::CtOrgan => rasterize_ct(&grid, has_lesion, &mut rng),
        SynthKind::MrStructure => rasterize_mr(&grid, has_lesion, &mut rng),
    };
    let label = Volume::new(label, grid.dims, 1, grid.geometry);
    let image = match spec.kind {
        SynthKind::CtOrgan => SynthImage::Ct(ct_image(&grid, &tissue, validation, &mut rng)),
        SynthKind::MrStructure => {
            let gain = if validation {
                spec.validation_gain
            } else {
                1.0
            };
            SynthImage::Mr(mr_image(&grid, &tissue, validation, gain, &mut rng))
        }
    };
    Ok(SynthCase {
        id: spec.case_id(k),
        validation,
        image,
        label,
        tissue,
        has_lesion,
    })
}

/// The voxel grid of a case and the map from voxel index to position relative to the
/// anatomy's centre.
struct Grid {
    dims: [usize; 3],
    geometry: Geometry,
    /// Half the field of view along each axis, mm.
    half: [f64; 3],
    /// World-space step of each voxel axis (`direction` column × spacing).
    step: [[f64; 3]; 3],
    /// Index of the centre voxel (fractional).
    center_index: [f64; 3],
}

impl Grid {
    fn sample(spec: &SynthSpec, k: usize, rng: &mut ChaCha8Rng) -> Self {
        let jitter =
            |rng: &mut ChaCha8Rng, v: f64, rel: f64| v * rng.random_range(1.0 - rel..1.0 + rel);
        let (inplane, slice, fov_z) = match spec.kind {
            SynthKind::CtOrgan => (
                jitter(rng, 0.7, 0.08),
                jitter(rng, 2.5, 0.12),
                rng.random_range(1.0..1.25),
            ),
            SynthKind::MrStructure => {
                let (a, b) = if rng.random_bool(0.5) {
                    (1.25, 1.37)
                } else {
                    (0.9, 2.0)
                };
                (
                    jitter(rng, a, 0.05),
                    jitter(rng, b, 0.05),
                    rng.random_range(0.9..1.1),
                )
            }
        };
        // Headers carry float32; round so the written spacing is what we computed with.
        let round = |v: f64| (v * 1e4).round() / 1e4;
        let spacing = [round(inplane), round(inplane), round(slice)];
        let n = spec.size;
        let nz = ((n as f64 * spacing[0] / spacing[2] * fov_z).round() as usize).max(8);
        let dims = [n, n, nz];

        let mut direction = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        if k % 3 == 1 {
            let axis = if k % 6 == 1 { 0 } else { 1 };
            direction[axis][axis] = -1.0;
        }
        let mut step = [[0.0; 3]; 3];
        for (c, col) in step.iter_mut().enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                *v = direction[r][c] * spacing[c];
            }
        }
        let center_index = dims.map(|d| (d as f64 - 1.0) / 2.0);
        let center: [f64; 3] = std::array::from_fn(|_| round(rng.random_range(-60.0..60.0)));
        let origin: [f64; 3] = std::array::from_fn(|r| {
            center[r] - (0..3).map(|c| step[c][r] * center_index[c]).sum::<f64>()
        });
        let half = std::array::from_fn(|c| dims[c] as f64 * spacing[c] / 2.0);
        Self {
            dims,
            geometry: Geometry {
                spacing,
                origin,
                direction,
            },
            half,
            step,
            center_index,
        }
    }

    fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// Calls `f(linear index, position relative to the centre in mm)` for every voxel.
    fn for_each(&self, mut f: impl FnMut(usize, [f64; 3])) {
        let [nx, ny, nz] = self.dims;
        let mut idx = 0;
        for k in 0..nz {
            let dk = k as f64 - self.center_index[2];
            for j in 0..ny {
                let dj = j as f64 - self.center_index[1];
                for i in 0..nx {
                    let di = i as f64 - self.center_index[0];
                    let p = std::array::from_fn(|r| {
                        self.step[0][r] * di + self.step[1][r] * dj + self.step[2][r] * dk
                    });
                    f(idx, p);
                    idx += 1;
                }
            }
        }
    }

    /// True when any voxel of `mask` lies on a face of the grid.
    fn touches_border(&self, mask: impl Fn(usize) -> bool) -> bool {
        let [nx, ny, nz] = self.dims;
        let at = |i: usize, j: usize, k: usize| mask(i + nx * (j + ny * k));
        (0..nz).any(|k| {
            (0..ny).any(|j| {
                if k == 0 || k == nz - 1 || j == 0 || j == ny - 1 {
                    (0..nx).any(|i| at(i, j, k))
                } else {
                    at(0, j, k) || at(nx - 1, j, k)
                }
            })
        })
    }
}

/// A smooth random star-shaped blob: an ellipsoid rotated about z whose radius is modulated
/// by a few low-frequency waves over the direction.
#[derive(Debug, Clone)]
struct Blob {
    center: [f64; 3],
    axes: [f64; 3],
    cos: f64,
    sin: f64,
    /// (wave vector, phase, amplitude)
    waves: [([f64; 3], f64, f64); 3],
    amp: f64,
}

impl Blob {
    fn sample_shape(axes: [f64; 3], rng: &mut ChaCha8Rng) -> Self {
        let amp = rng.random_range(0.04..0.10);
        let waves = std::array::from_fn(|_| {
            let u = unit_vector(rng);
            let freq = rng.random_range(1.5..3.0);
            (
                u.map(|c| c * freq),
                rng.random_range(0.0..std::f64::consts::TAU),
                amp / 3.0,
            )
        });
        let angle = rng.random_range(0.0..std::f64::consts::PI);
        Self {
            center: [0.0; 3],
            axes,
            cos: angle.cos(),
            sin: angle.sin(),
            waves,
            amp,
        }
    }

    /// Half extent along each world axis, including the modulation.
    fn extent(&self) -> [f64; 3] {
        let [a, b, c] = self.axes;
        let s = 1.0 + self.amp;
        [
            (a * a * self.cos * self.cos + b * b * self.sin * self.sin).sqrt() * s,
            (a * a * self.sin * self.sin + b * b * self.cos * self.cos).sqrt() * s,
            c * s,
        ]
    }

    /// Places the blob uniformly so that its extent stays within `[lo, hi]` per axis.
    /// Where it does not fit in-plane it is shrunk in-plane and stretched along z (as far
    /// as there is room) to keep its volume; where it does not fit along z it is shortened.
    fn place(&mut self, lo: [f64; 3], hi: [f64; 3], rng: &mut ChaCha8Rng) {
        let ext = self.extent();
        let fit = |ext: [f64; 3], d: usize| 0.98 * (hi[d] - lo[d]) / (2.0 * ext[d]);
        let fit_xy = fit(ext, 0).min(fit(ext, 1));
        if fit_xy < 1.0 {
            self.axes[0] *= fit_xy;
            self.axes[1] *= fit_xy;
            self.axes[2] *= (1.0 / (fit_xy * fit_xy)).min(fit(ext, 2)).max(1.0);
        }
        let fit_z = fit(self.extent(), 2);
        if fit_z < 1.0 {
            self.axes[2] *= fit_z;
        }
        let ext = self.extent();
        self.center = std::array::from_fn(|d| {
            let (a, b) = (lo[d] + ext[d], hi[d] - ext[d]);
            if b > a {
                rng.random_range(a..b)
            } else {
                (a + b) / 2.0
            }
        });
    }

    fn contains(&self, p: [f64; 3]) -> bool {
        let d = [
            p[0] - self.center[0],
            p[1] - self.center[1],
            p[2] - self.center[2],
        ];
        let q = [
            (self.cos * d[0] + self.sin * d[1]) / self.axes[0],
            (-self.sin * d[0] + self.cos * d[1]) / self.axes[1],
            d[2] / self.axes[2],
        ];
        let r2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2];
        let outer = 1.0 + self.amp;
        if r2 > outer * outer {
            return false;
        }
        let inner = 1.0 - self.amp;
        if r2 <= inner * inner {
            return true;
        }
        let r = r2.sqrt();
        let f: f64 = self
            .waves
            .iter()
            .map(|(w, phase, a)| a * ((w[0] * q[0] + w[1] * q[1] + w[2] * q[2]) / r + phase).sin())
            .sum();
        r <= 1.0 + f
    }
}

fn unit_vector(rng: &mut ChaCha8Rng) -> [f64; 3] {
    loop {
        let v: [f64; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if n > 0.1 && n <= 1.0 {
            return v.map(|c| c / n);
        }
    }
}

/// An organ blob covering about `frac` of the field of view, placed within `[lo, hi]`.
fn sample_organ(grid: &Grid, lo: [f64; 3], hi: [f64; 3], rng: &mut ChaCha8Rng) -> Blob {
    let h = grid.half;
    let frac = rng.random_range(0.07..0.13);
    let gz = rng.random_range(0.5..0.72);
    let aspect = rng.random_range(0.75..1.33);
    // Ellipsoid volume / box volume = (π/6)·(a/hx)(b/hy)(c/hz).
    let ab = 6.0 * frac / (std::f64::consts::PI * gz);
    let axes = [
        (ab * aspect).sqrt() * h[0],
        (ab / aspect).sqrt() * h[1],
        gz * h[2],
    ];
    let mut blob = Blob::sample_shape(axes, rng);
    blob.place(lo, hi, rng);
    blob
}

/// A lesion blob covering about 0.8–2.2 % of the field of view, centred inside `organ`.
fn sample_lesion(grid: &Grid, organ: &Blob, rng: &mut ChaCha8Rng) -> Blob {
    let h = grid.half;
    let frac = rng.random_range(0.008..0.022);
    let volume = frac * 8.0 * h[0] * h[1] * h[2];
    let r = (3.0 * volume / (4.0 * std::f64::consts::PI)).cbrt();
    let axes = std::array::from_fn(|_| r * rng.random_range(0.85..1.15));
    let mut lesion = Blob::sample_shape(axes, rng);
    // Somewhere in the inner part of the organ (organ frame, then rotated back).
    let u = unit_vector(rng);
    let t = rng.random_range(0.0..0.35);
    let q = [
        u[0] * t * organ.axes[0],
        u[1] * t * organ.axes[1],
        u[2] * t * organ.axes[2],
    ];
    lesion.center = [
        organ.center[0] + organ.cos * q[0] - organ.sin * q[1],
        organ.center[1] + organ.sin * q[0] + organ.cos * q[1],
        organ.center[2] + q[2],
    ];
    lesion
}

const ORGAN_FRACTION: std::ops::RangeInclusive<f64> = 0.05..=0.20;
const LESION_FRACTION: std::ops::RangeInclusive<f64> = 0.005..=0.03;
const MAX_TRIES: usize = 32;

/// Draws organ (and lesion) until their volume fractions are in range and the organ stays
/// off the faces of the grid; `draw` fills the tissue map for one draw.
fn rasterize_with_retries(
    grid: &Grid,
    has_lesion: bool,
    rng: &mut ChaCha8Rng,
    mut draw: impl FnMut(&mut ChaCha8Rng, &mut [u8]),
) -> (Vec<u8>, Vec<u8>) {
    let n = grid.voxels();
    let mut tissue = vec![0u8; n];
    for _ in 0..MAX_TRIES {
        draw(rng, &mut tissue);
        let organ = tissue
            .iter()
            .filter(|&&t| t == tissue::ORGAN || t == tissue::LESION)
            .count() as f64
            / n as f64;
        let lesion = tissue.iter().filter(|&&t| t == tissue::LESION).count() as f64 / n as f64;
        let lesion_ok = if has_lesion {
            LESION_FRACTION.contains(&lesion)
        } else {
            lesion == 0.0
        };
        let inside =
            !grid.touches_border(|i| tissue[i] == tissue::ORGAN || tissue[i] == tissue::LESION);
        if ORGAN_FRACTION.contains(&organ) && lesion_ok && inside {
            break;
        }
    }
    let label = tissue
        .iter()
        .map(|&t| match t {
            tissue::ORGAN => 1,
            tissue::LESION => 2,
            _ => 0,
        })
        .collect();
    (tissue, label)
}

fn rasterize_ct(grid: &Grid, has_lesion: bool, rng: &mut ChaCha8Rng) -> (Vec<u8>, Vec<u8>) {
    let h = grid.half;
    let body = [
        rng.random_range(0.92..0.98) * h[0],
        rng.random_range(0.78..0.88) * h[1],
    ];
    let fat_inner = rng.random_range(0.88..0.93);
    // Spine: posterior (−y in RAS), along z.
    let spine_r = rng.random_range(0.09..0.12) * h[0];
    let spine = [rng.random_range(-0.03..0.03) * h[0], -body[1] * 0.72];
    let lo = [-0.9 * h[0], spine[1] + spine_r * 1.5, -0.9 * h[2]];
    let hi = [0.9 * h[0], 0.9 * body[1], 0.9 * h[2]];
    rasterize_with_retries(grid, has_lesion, rng, |rng, tissue| {
        let organ = sample_organ(grid, lo, hi, rng);
        let lesion = has_lesion.then(|| sample_lesion(grid, &organ, rng));
        grid.for_each(|i, p| {
            let e = (p[0] / body[0]).powi(2) + (p[1] / body[1]).powi(2);
            let s = (p[0] - spine[0]).powi(2) + (p[1] - spine[1]).powi(2);
            tissue[i] = if e > 1.0 {
                tissue::AIR
            } else if s <= spine_r * spine_r {
                tissue::BONE
            } else if e > fat_inner * fat_inner {
                tissue::FAT
            } else if organ.contains(p) {
                if lesion.as_ref().is_some_and(|l| l.contains(p)) {
                    tissue::LESION
                } else {
                    tissue::ORGAN
                }
            } else {
                tissue::SOFT
            };
        });
    })
}

fn rasterize_mr(grid: &Grid, has_lesion: bool, rng: &mut ChaCha8Rng) -> (Vec<u8>, Vec<u8>) {
    let h = grid.half;
    let head = [
        rng.random_range(0.85..0.92) * h[0],
        rng.random_range(0.9..0.96) * h[1],
        rng.random_range(1.0..1.2) * h[2],
    ];
    let scalp = rng.random_range(0.92..0.95);
    let skull = scalp - rng.random_range(0.06..0.08);
    let vent_axes = [0.07 * h[0], 0.22 * h[1], 0.16 * h[2]];
    let vent_x = rng.random_range(0.11..0.16) * h[0];
    let vent_y = rng.random_range(0.0..0.1) * h[1];
    // Inside the brain: the inscribed box of the skull's inner ellipsoid, a bit generous.
    let brain = head.map(|a| a * skull);
    let lo = [-0.75 * brain[0], -0.75 * brain[1], -0.85 * h[2]];
    let hi = [0.75 * brain[0], 0.75 * brain[1], 0.85 * h[2]];
    rasterize_with_retries(grid, has_lesion, rng, |rng, tissue| {
        let organ = sample_organ(grid, lo, hi, rng);
        let lesion = has_lesion.then(|| sample_lesion(grid, &organ, rng));
        grid.for_each(|i, p| {
            let e = (p[0] / head[0]).powi(2) + (p[1] / head[1]).powi(2) + (p[2] / head[2]).powi(2);
            let vent = |sx: f64| {
                ((p[0] - sx) / vent_axes[0]).powi(2)
                    + ((p[1] - vent_y) / vent_axes[1]).powi(2)
                    + (p[2] / vent_axes[2]).powi(2)
                    <= 1.0
            };
            tissue[i] = if e > 1.0 {
                tissue::AIR
            } else if e > scalp * scalp {
                tissue::FAT
            } else if e > skull * skull {
                tissue::BONE
            } else if organ.contains(p) {
                if lesion.as_ref().is_some_and(|l| l.contains(p)) {
                    tissue::LESION
                } else {
                    tissue::ORGAN
                }
            } else if vent(vent_x) || vent(-vent_x) {
                tissue::CSF
            } else {
                tissue::SOFT
            };
        });
    })
}

fn ct_image(grid: &Grid, tissue: &[u8], validation: bool, rng: &mut ChaCha8Rng) -> Volume<i16> {
    let mut hu = [0.0f32; 7];
    hu[tissue::AIR as usize] = -1000.0;
    hu[tissue::FAT as usize] = rng.random_range(-110.0..-80.0);
    hu[tissue::SOFT as usize] = rng.random_range(32.0..48.0);
    hu[tissue::BONE as usize] = rng.random_range(650.0..750.0);
    hu[tissue::CSF as usize] = 10.0;
    hu[tissue::ORGAN as usize] = rng.random_range(95.0..115.0);
    hu[tissue::LESION as usize] = rng.random_range(50.0..65.0);
    let (scale, shift, blur_mm, sigma) = if validation {
        (
            rng.random_range(1.02..1.04),
            rng.random_range(5.0..20.0),
            Some(rng.random_range(0.8..1.1)),
            rng.random_range(22.0..30.0),
        )
    } else {
        (1.0, 0.0, None, rng.random_range(8.0..14.0))
    };
    let mut data: Vec<f32> = tissue
        .iter()
        .map(|&t| -1000.0 + (hu[t as usize] + 1000.0) * scale + shift)
        .collect();
    if let Some(mm) = blur_mm {
        gaussian_blur_mm(&mut data, grid, mm);
    }
    let noise = Normal::new(0.0f32, sigma).expect("finite sigma");
    let data = data
        .into_iter()
        .map(|v| (v + noise.sample(rng)).round().clamp(-1024.0, 3071.0) as i16)
        .collect();
    Volume::new(data, grid.dims, 1, grid.geometry)
}

fn mr_image(
    grid: &Grid,
    tissue: &[u8],
    validation: bool,
    gain: f64,
    rng: &mut ChaCha8Rng,
) -> Volume<f32> {
    let j = |rng: &mut ChaCha8Rng, v: f32| v * rng.random_range(0.95..1.05);
    let mut level = [0.0f32; 7];
    level[tissue::AIR as usize] = 0.0;
    level[tissue::FAT as usize] = j(rng, 420.0);
    level[tissue::SOFT as usize] = j(rng, 260.0);
    level[tissue::BONE as usize] = j(rng, 40.0);
    level[tissue::CSF as usize] = j(rng, 60.0);
    level[tissue::ORGAN as usize] = j(rng, 480.0);
    level[tissue::LESION as usize] = j(rng, 720.0);
    let (gamma, blur_mm, rel_sigma) = if validation {
        (
            rng.random_range(0.65..0.75),
            Some(rng.random_range(0.8..1.1)),
            rng.random_range(0.06..0.08),
        )
    } else {
        (1.0, None, rng.random_range(0.02..0.035))
    };
    if gamma != 1.0 {
        for v in &mut level {
            *v = 800.0 * (*v / 800.0).powf(gamma);
        }
    }
    let scanner_scale = rng.random_range(0.6..1.8f32);
    let offset = rng.random_range(0.0..40.0f32);
    // Bias field: exp of a random quadratic in normalized coordinates.
    let lin: [f64; 3] = std::array::from_fn(|_| rng.random_range(-0.15..0.15));
    let quad: [f64; 3] = std::array::from_fn(|_| rng.random_range(-0.08..0.08));
    let cross: [f64; 3] = std::array::from_fn(|_| rng.random_range(-0.05..0.05));
    let h = grid.half;
    let mut data = vec![0.0f32; grid.voxels()];
    grid.for_each(|i, p| {
        let [x, y, z] = [p[0] / h[0], p[1] / h[1], p[2] / h[2]];
        let log_b = lin[0] * x
            + lin[1] * y
            + lin[2] * z
            + quad[0] * x * x
            + quad[1] * y * y
            + quad[2] * z * z
            + cross[0] * x * y
            + cross[1] * x * z
            + cross[2] * y * z;
        let bias = log_b.clamp(-0.3, 0.3).exp() as f32;
        data[i] = level[tissue[i] as usize] * bias * scanner_scale;
    });
    if let Some(mm) = blur_mm {
        gaussian_blur_mm(&mut data, grid, mm);
    }
    let sigma = rel_sigma * level[tissue::SOFT as usize] * scanner_scale;
    let noise = Normal::new(0.0f32, sigma).expect("finite sigma");
    for v in &mut data {
        let re = *v + noise.sample(rng);
        let im = noise.sample(rng);
        *v = (re * re + im * im).sqrt() + offset;
    }
    // The validation scanner's gain scales the whole signal (noise and offset included), as
    // a receiver gain does; no random draw, so the rest of the case is as without it.
    if gain != 1.0 {
        let g = gain as f32;
        data.iter_mut().for_each(|v| *v *= g);
    }
    Volume::new(data, grid.dims, 1, grid.geometry)
}

/// Separable Gaussian blur with the same σ (mm) along every world axis; edges clamp.
fn gaussian_blur_mm(data: &mut [f32], grid: &Grid, sigma_mm: f64) {
    let dims = grid.dims;
    let mut tmp = vec![0.0f32; data.len()];
    for axis in 0..3 {
        let sigma = sigma_mm / grid.geometry.spacing[axis];
        if sigma < 0.2 {
            continue;
        }
        let radius = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f32> = (-radius..=radius)
            .map(|t| (-(t * t) as f64 / (2.0 * sigma * sigma)).exp() as f32)
            .collect();
        let total: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|w| w / total).collect();
        let stride = match axis {
            0 => 1,
            1 => dims[0],
            _ => dims[0] * dims[1],
        };
        let n = dims[axis] as isize;
        for (idx, out) in tmp.iter_mut().enumerate() {
            let pos = ((idx / stride) % dims[axis]) as isize;
            let base = idx - pos as usize * stride;
            *out = kernel
                .iter()
                .zip(-radius..=radius)
                .map(|(w, t)| w * data[base + (pos + t).clamp(0, n - 1) as usize * stride])
                .sum();
        }
        data.copy_from_slice(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SynthKind) -> SynthSpec {
        SynthSpec::new(kind, 8, 48, 7)
    }

    fn cases(spec: &SynthSpec) -> Vec<SynthCase> {
        (0..spec.cases)
            .into_par_iter()
            .map(|k| generate_case(spec, k).unwrap())
            .collect()
    }

    fn fraction(label: &Volume<u8>, f: impl Fn(u8) -> bool) -> f64 {
        label.data.iter().filter(|&&v| f(v)).count() as f64 / label.voxels() as f64
    }

    /// Noise estimate from neighbour differences along x inside one tissue class (robust:
    /// median absolute difference).
    fn noise_sigma(img: &Volume<f32>, tissue_map: &[u8], class: u8) -> f64 {
        let mut d: Vec<f64> = (0..img.voxels() - 1)
            .filter(|&i| {
                (i + 1) % img.dims[0] != 0 && tissue_map[i] == class && tissue_map[i + 1] == class
            })
            .map(|i| (img.data[i + 1] - img.data[i]).abs() as f64)
            .collect();
        assert!(d.len() > 100, "too few voxels of class {class}");
        d.sort_by(f64::total_cmp);
        1.4826 * d[d.len() / 2] / std::f64::consts::SQRT_2
    }

    fn mean_of(img: &Volume<f32>, tissue_map: &[u8], class: u8) -> f64 {
        let v: Vec<f64> = img
            .data
            .iter()
            .zip(tissue_map)
            .filter(|(_, t)| **t == class)
            .map(|(v, _)| *v as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    }

    fn world(g: &Geometry, i: usize, j: usize, k: usize) -> [f64; 3] {
        let a = g.affine();
        let idx = [i as f64, j as f64, k as f64];
        std::array::from_fn(|r| a[r][3] + (0..3).map(|c| a[r][c] * idx[c]).sum::<f64>())
    }

    #[test]
    fn spec_checks_and_kind_names() {
        let s = SynthSpec::new(SynthKind::CtOrgan, 8, 48, 1);
        assert_eq!(s.validation, 2);
        assert_eq!(SynthSpec::new(SynthKind::CtOrgan, 3, 48, 1).validation, 1);
        assert!(s.validate().is_ok());
        for bad in [
            SynthSpec {
                cases: 1,
                ..s.clone()
            },
            SynthSpec {
                size: 8,
                ..s.clone()
            },
            SynthSpec {
                validation: 0,
                ..s.clone()
            },
            SynthSpec {
                validation: 8,
                ..s.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(SynthError::Spec(_))),
                "{bad:?}"
            );
        }
        assert!(generate_case(&s, 8).is_err());
        assert_eq!("CT".parse::<SynthKind>(), Ok(SynthKind::CtOrgan));
        assert_eq!(
            "mr-structure".parse::<SynthKind>(),
            Ok(SynthKind::MrStructure)
        );
        assert_eq!(
            "mr_structure".parse::<SynthKind>(),
            Ok(SynthKind::MrStructure)
        );
        assert!("pet".parse::<SynthKind>().is_err());
        assert_eq!(s.case_id(3), "ctorgan_003");
        assert!(!s.is_validation(5) && s.is_validation(6) && s.is_validation(7));
    }

    #[test]
    fn deterministic_per_seed() {
        for kind in [SynthKind::CtOrgan, SynthKind::MrStructure] {
            let s = SynthSpec::new(kind, 4, 24, 42);
            for k in [0, 3] {
                assert_eq!(generate_case(&s, k).unwrap(), generate_case(&s, k).unwrap());
            }
            let other = SynthSpec {
                seed: 43,
                ..s.clone()
            };
            assert_ne!(
                generate_case(&s, 0).unwrap().image,
                generate_case(&other, 0).unwrap().image
            );
            assert_ne!(
                generate_case(&s, 0).unwrap().image,
                generate_case(&s, 1).unwrap().image
            );
            assert_eq!(
                dataset_json(&s).to_json_bytes(),
                dataset_json(&s).to_json_bytes()
            );
        }
    }

    #[test]
    fn dataset_json_lists_all_cases_and_the_validation_split() {
        let s = SynthSpec::new(SynthKind::MrStructure, 9, 32, 3);
        let bytes = dataset_json(&s).to_json_bytes();
        let d = msd::parse_dataset_json(&bytes, "dataset.json").unwrap();
        assert_eq!(d.name, "Synth_MrStructure");
        assert_eq!(d.modalities().unwrap(), [msd::ChannelModality::Mr]);
        assert_eq!(d.label_names(), ["background", "organ", "lesion"]);
        assert_eq!(d.training.len(), 9);
        assert_eq!(d.num_training, Some(9));
        let cases = d.cases();
        let val: Vec<&str> = cases
            .iter()
            .filter(|c| c.validation)
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(val, ["mrstructure_007", "mrstructure_008"]);
        assert_eq!(cases[0].image, "imagesTr/mrstructure_000.nii.gz");
        assert_eq!(cases[0].label, "labelsTr/mrstructure_000.nii.gz");
        let raw: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(raw["validation"].as_array().unwrap().len(), 2);
        assert_eq!(
            raw["training"][0]["image"],
            "./imagesTr/mrstructure_000.nii.gz"
        );
        let ct = dataset_json(&SynthSpec::new(SynthKind::CtOrgan, 4, 32, 3));
        assert_eq!(ct.modality["0"], "CT");
    }

    #[test]
    fn labels_fractions_and_geometry() {
        for kind in [SynthKind::CtOrgan, SynthKind::MrStructure] {
            for seed in [7, 8] {
                let s = SynthSpec { seed, ..spec(kind) };
                let cs = cases(&s);
                assert_eq!(cs.len(), 8);
                assert_eq!(cs.iter().filter(|c| c.validation).count(), 2);
                let lesions = cs.iter().filter(|c| c.has_lesion).count();
                assert_eq!(lesions, 4, "{kind}: about half the cases have a lesion");
                let mut flipped = 0;
                for c in &cs {
                    let g = c.image.geometry();
                    assert_eq!(c.label.geometry, *g);
                    assert_eq!(c.label.dims, c.image.dims());
                    assert!(c.label.data.iter().all(|&v| v <= 2), "{}", c.id);
                    let organ = fraction(&c.label, |v| v >= 1);
                    assert!((0.05..=0.20).contains(&organ), "{} organ {organ}", c.id);
                    let lesion = fraction(&c.label, |v| v == 2);
                    if c.has_lesion {
                        assert!((0.005..=0.03).contains(&lesion), "{} lesion {lesion}", c.id);
                    } else {
                        assert_eq!(lesion, 0.0, "{}", c.id);
                    }
                    // The organ stays inside the field of view.
                    let [nx, ny, nz] = c.label.dims;
                    for k in 0..nz {
                        for j in 0..ny {
                            for i in 0..nx {
                                if i == 0
                                    || j == 0
                                    || k == 0
                                    || i == nx - 1
                                    || j == ny - 1
                                    || k == nz - 1
                                {
                                    assert_eq!(c.label.data[c.label.index(i, j, k)], 0, "{}", c.id);
                                }
                            }
                        }
                    }
                    assert_eq!(c.label.dims[0], 48);
                    assert!(g.origin.iter().all(|&o| o != 0.0));
                    let sp = g.spacing;
                    assert_eq!(sp[0], sp[1]);
                    match kind {
                        SynthKind::CtOrgan => {
                            assert!(sp[2] / sp[0] > 2.5, "{sp:?}");
                            assert!((0.6..0.8).contains(&sp[0]), "{sp:?}");
                        }
                        SynthKind::MrStructure => assert!(sp[2] > sp[0], "{sp:?}"),
                    }
                    // Roughly cubic field of view.
                    let fov: Vec<f64> = (0..3).map(|a| sp[a] * c.label.dims[a] as f64).collect();
                    assert!(fov[2] / fov[0] > 0.7 && fov[2] / fov[0] < 1.4, "{fov:?}");
                    if g.direction[0][0] < 0.0 || g.direction[1][1] < 0.0 {
                        flipped += 1;
                    }
                }
                assert_eq!(flipped, 3, "cases 1, 4, 7 are flipped");
                assert!(cs[1].image.geometry().direction[0][0] < 0.0);
                assert!(cs[4].image.geometry().direction[1][1] < 0.0);
            }
        }
    }

    #[test]
    fn anatomy_is_consistent_in_world_space() {
        // The spine is posterior (−y) of the organ in world coordinates, flipped or not.
        let s = spec(SynthKind::CtOrgan);
        for k in [0, 1, 4] {
            let c = generate_case(&s, k).unwrap();
            let g = *c.image.geometry();
            let [nx, ny, nz] = c.label.dims;
            let mut bone_y = (0.0, 0usize);
            let mut organ_y = (0.0, 0usize);
            for kk in 0..nz {
                for j in 0..ny {
                    for i in 0..nx {
                        let idx = c.label.index(i, j, kk);
                        let y = world(&g, i, j, kk)[1];
                        if c.tissue[idx] == tissue::BONE {
                            bone_y = (bone_y.0 + y, bone_y.1 + 1);
                        } else if c.label.data[idx] >= 1 {
                            organ_y = (organ_y.0 + y, organ_y.1 + 1);
                        }
                    }
                }
            }
            let bone = bone_y.0 / bone_y.1 as f64;
            let organ = organ_y.0 / organ_y.1 as f64;
            assert!(bone < organ, "case {k}: spine y {bone} organ y {organ}");
            // The voxel data is mirrored, so in voxel space the spine is on the other side.
            let first_bone_j = (0..ny)
                .find(|&j| (0..nx).any(|i| c.tissue[c.label.index(i, j, nz / 2)] == tissue::BONE))
                .unwrap();
            if k == 4 {
                assert!(first_bone_j > ny / 2, "flipped y: spine at high j");
            } else {
                assert!(first_bone_j < ny / 2, "spine at low j");
            }
        }
    }

    #[test]
    fn ct_intensities_and_validation_shift() {
        let s = spec(SynthKind::CtOrgan);
        let cs = cases(&s);
        let mut train_noise = Vec::new();
        let mut val_noise = Vec::new();
        for c in &cs {
            let SynthImage::Ct(v) = &c.image else {
                panic!("CT image expected")
            };
            let img = v.map(f32::from);
            let organ = mean_of(&img, &c.tissue, tissue::ORGAN);
            let soft = mean_of(&img, &c.tissue, tissue::SOFT);
            let bone = mean_of(&img, &c.tissue, tissue::BONE);
            // Median: in validation cases the blur spreads the body into nearby air.
            let mut air: Vec<f32> = (0..img.voxels())
                .filter(|&i| c.tissue[i] == tissue::AIR)
                .map(|i| img.data[i])
                .collect();
            air.sort_by(f32::total_cmp);
            let air = air[air.len() / 2];
            assert!(air < -950.0, "{} air {air}", c.id);
            // The thin spine loses contrast to the validation blur.
            let min_bone = if c.validation { 350.0 } else { 600.0 };
            assert!(bone > min_bone, "{} bone {bone}", c.id);
            assert!(organ > soft + 30.0, "{} organ {organ} soft {soft}", c.id);
            if c.has_lesion {
                let lesion = mean_of(&img, &c.tissue, tissue::LESION);
                let gap = if c.validation { 10.0 } else { 20.0 };
                assert!(
                    lesion < organ - gap,
                    "{} lesion {lesion} organ {organ}",
                    c.id
                );
            }
            let noise = noise_sigma(&img, &c.tissue, tissue::SOFT);
            if c.validation {
                assert!((50.0..120.0).contains(&soft), "{} soft {soft}", c.id);
                val_noise.push(noise);
            } else {
                assert!((25.0..55.0).contains(&soft), "{} soft {soft}", c.id);
                assert!((85.0..120.0).contains(&organ), "{} organ {organ}", c.id);
                train_noise.push(noise);
            }
        }
        let max_train = train_noise.iter().cloned().fold(0.0, f64::max);
        let min_val = val_noise.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            max_train < 16.0 && min_val > 18.0,
            "{train_noise:?} {val_noise:?}"
        );
    }

    #[test]
    fn mr_intensities_and_validation_noise() {
        let s = spec(SynthKind::MrStructure);
        let cs = cases(&s);
        let mut train_rel = Vec::new();
        let mut val_rel = Vec::new();
        let mut brain_levels = Vec::new();
        for c in &cs {
            let SynthImage::Mr(img) = &c.image else {
                panic!("MR image expected")
            };
            assert!(img.data.iter().all(|v| v.is_finite() && *v >= 0.0));
            let brain = mean_of(img, &c.tissue, tissue::SOFT);
            let organ = mean_of(img, &c.tissue, tissue::ORGAN);
            let air = mean_of(img, &c.tissue, tissue::AIR);
            assert!(
                organ > 1.25 * brain,
                "{} structure {organ} brain {brain}",
                c.id
            );
            assert!(air < 0.5 * brain, "{} air {air} brain {brain}", c.id);
            if c.has_lesion {
                let lesion = mean_of(img, &c.tissue, tissue::LESION);
                assert!(lesion > organ, "{} lesion {lesion} structure {organ}", c.id);
            }
            brain_levels.push(brain);
            let rel = noise_sigma(img, &c.tissue, tissue::SOFT) / brain;
            if c.validation {
                val_rel.push(rel);
            } else {
                train_rel.push(rel);
            }
        }
        let max_train = train_rel.iter().cloned().fold(0.0, f64::max);
        let min_val = val_rel.iter().cloned().fold(f64::MAX, f64::min);
        assert!(max_train < min_val, "{train_rel:?} {val_rel:?}");
        // Scanner scale varies between cases.
        let lo = brain_levels.iter().cloned().fold(f64::MAX, f64::min);
        let hi = brain_levels.iter().cloned().fold(0.0, f64::max);
        assert!(hi / lo > 1.3, "{brain_levels:?}");
    }

    #[test]
    fn blur_preserves_constant_and_mean() {
        let s = SynthSpec::new(SynthKind::CtOrgan, 2, 16, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grid = Grid::sample(&s, 0, &mut rng);
        let mut flat = vec![5.0f32; grid.voxels()];
        gaussian_blur_mm(&mut flat, &grid, 1.0);
        assert!(flat.iter().all(|v| (v - 5.0).abs() < 1e-4));
        let mut spike = vec![0.0f32; grid.voxels()];
        let centre = grid.dims[0] / 2
            + grid.dims[0] * (grid.dims[1] / 2 + grid.dims[1] * (grid.dims[2] / 2));
        spike[centre] = 1.0;
        gaussian_blur_mm(&mut spike, &grid, 1.0);
        let sum: f32 = spike.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!(spike[centre] < 0.5 && spike[centre + 1] > 0.0);
    }

    #[test]
    fn write_task_writes_a_readable_msd_task() {
        use crate::nifti::{ReadLimits, read_nifti};
        let s = SynthSpec::new(SynthKind::CtOrgan, 4, 24, 5);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let summary = write_task(&s, a.path()).unwrap();
        assert_eq!(
            summary,
            SynthSummary {
                name: "Synth_CtOrgan".into(),
                cases: 4,
                train: 3,
                validation: 1,
                dir: a.path().to_path_buf(),
            }
        );
        write_task(&s, b.path()).unwrap();
        let d = msd::read_dataset_json(a.path()).unwrap();
        assert_eq!(d.cases().iter().filter(|c| c.validation).count(), 1);
        assert!(!a.path().join("dataset.json.tmp").exists());
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(
            read(&a.path().join("dataset.json")),
            read(&b.path().join("dataset.json"))
        );
        for (k, case) in d.cases().iter().enumerate() {
            for rel in [&case.image, &case.label] {
                assert_eq!(
                    read(&a.path().join(rel)),
                    read(&b.path().join(rel)),
                    "{rel}"
                );
            }
            let mem = generate_case(&s, k).unwrap();
            let image = read_nifti(&a.path().join(&case.image), &ReadLimits::default()).unwrap();
            let label = read_nifti(&a.path().join(&case.label), &ReadLimits::default()).unwrap();
            assert_eq!(image.datatype, 4, "int16");
            assert_eq!(label.datatype, 2, "uint8");
            assert_eq!(image.volume.data, mem.image.to_f32().data);
            assert_eq!(
                label.volume.data,
                mem.label.data.iter().map(|&v| v as f32).collect::<Vec<_>>()
            );
            assert!(image.volume.geometry.approx_eq(mem.image.geometry(), 1e-3));
            assert!(label.volume.geometry.approx_eq(&mem.label.geometry, 1e-3));
        }
    }

    /// A validation gain scales the MR validation cases' intensities and nothing else: the
    /// training cases, the labels and every other draw stay bit for bit; gain 1 is the
    /// default task; CT and out-of-range gains are refused.
    #[test]
    fn a_validation_gain_scales_only_the_mr_validation_scans() {
        let base = SynthSpec::new(SynthKind::MrStructure, 4, 24, 5);
        let bright = SynthSpec {
            validation_gain: 1.3,
            ..base.clone()
        };
        for k in 0..base.cases {
            let (a, b) = (
                generate_case(&base, k).unwrap(),
                generate_case(&bright, k).unwrap(),
            );
            assert_eq!(a.label, b.label, "case {k}");
            let (SynthImage::Mr(ia), SynthImage::Mr(ib)) = (&a.image, &b.image) else {
                panic!("MR images expected")
            };
            if base.is_validation(k) {
                for (x, y) in ia.data.iter().zip(&ib.data) {
                    assert_eq!(*y, *x * 1.3f32, "case {k}");
                }
                assert!(ia.data.iter().any(|v| *v > 0.0));
            } else {
                assert_eq!(ia.data, ib.data, "training case {k} changed");
            }
        }
        let one = SynthSpec {
            validation_gain: 1.0,
            ..base.clone()
        };
        assert_eq!(one, base);
        let json = |s: &SynthSpec| serde_json::to_string(&dataset_json(s)).unwrap();
        assert!(!json(&base).contains("gain"));
        assert!(json(&bright).contains("scanner gain of x1.3"));
        for bad in [
            SynthSpec {
                validation_gain: 1.3,
                ..SynthSpec::new(SynthKind::CtOrgan, 4, 24, 5)
            },
            SynthSpec {
                validation_gain: 0.0,
                ..base.clone()
            },
            SynthSpec {
                validation_gain: f64::NAN,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
