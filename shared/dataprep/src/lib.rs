//! Preprocess an MSD task folder once into object storage: read every case (validated),
//! resample to the target spacing, normalize intensities (CT window, MR percentiles), write
//! NIfTI files and a manifest under `datasets/<dataset-id>/`.
//!
//! Used by the preprocessor service (driven over NATS) and by `segtune data preprocess`
//! (in-process); both produce byte-identical output for the same input.
//!
//! The dataset id is `<name>-<16 hex digits of a BLAKE3 hash>` over dataset.json, every
//! listed image and label file, the preprocessing parameters and [`PIPELINE_VERSION`].
//! The manifest is written last: a dataset without one is incomplete and is redone.

mod source;

use std::{
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use protocol::{
    CaseEntry, CaseError, ChannelNormalization, DatasetSource, Manifest, Modality, PercentileScope,
    PreprocessParams, SCHEMA_VERSION, Split,
};
use rand::{SeedableRng, seq::SliceRandom};
use storage::{DynStore, keys};
use volume::{
    NiftiError, ReadLimits, Volume,
    msd::{self, Case, ChannelModality, DatasetJson},
    nifti::{MIN_VOX_OFFSET, NiftiWriter},
    normalize::{PercentileSketch, normalize_window, percentiles},
    resample::{output_dims, resample_image_slabs, resample_label_slabs},
};

pub use source::{Source, SourceError};

/// Bumped whenever the pipeline's output for the same input changes; part of the id.
pub const PIPELINE_VERSION: u32 = 1;

/// How a run is carried out (none of this changes the output).
#[derive(Debug, Clone)]
pub struct Options {
    pub limits: ReadLimits,
    /// Cases processed at once (bounds memory: about 3× one decoded case each).
    pub parallel_cases: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: ReadLimits::default(),
            parallel_cases: 2,
        }
    }
}

/// A successful run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub dataset_id: String,
    pub manifest: Manifest,
    /// The store already held this dataset; nothing was recomputed.
    pub reused: bool,
    pub seconds: f64,
}

/// A failed run: every problem found, each naming its case and file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.summary())]
pub struct Failure {
    pub dataset_id: Option<String>,
    pub errors: Vec<CaseError>,
}

impl Failure {
    fn one(dataset_id: Option<String>, case: &str, file: &str, reason: impl ToString) -> Self {
        Self {
            dataset_id,
            errors: vec![CaseError {
                case: case.to_string(),
                file: file.to_string(),
                reason: reason.to_string(),
            }],
        }
    }

    pub fn summary(&self) -> String {
        let lines: Vec<String> = self
            .errors
            .iter()
            .map(|e| {
                if e.case.is_empty() {
                    format!("{}: {}", e.file, e.reason)
                } else {
                    format!("case {} ({}): {}", e.case, e.file, e.reason)
                }
            })
            .collect();
        format!("preprocessing failed:\n  {}", lines.join("\n  "))
    }
}

/// Preprocesses `source` into `store` (or finds it already there).
pub async fn preprocess(
    store: &DynStore,
    source: &DatasetSource,
    params: &PreprocessParams,
    opts: &Options,
) -> Result<Outcome, Failure> {
    let started = Instant::now();
    check_params(params)?;
    let src = Source::open(source, store.clone());
    let json_bytes = src
        .read(msd::DATASET_JSON)
        .await
        .map_err(|e| Failure::one(None, "", msd::DATASET_JSON, e))?;
    let ds = msd::parse_dataset_json(&json_bytes, msd::DATASET_JSON)
        .map_err(|e| Failure::one(None, "", msd::DATASET_JSON, strip_file(&e.to_string())))?;
    let modalities: Vec<Modality> = ds
        .modalities()
        .map_err(|e| Failure::one(None, "", msd::DATASET_JSON, strip_file(&e.to_string())))?
        .into_iter()
        .map(|m| match m {
            ChannelModality::Ct => Modality::Ct,
            ChannelModality::Mr => Modality::Mr,
        })
        .collect();
    let cases = ds.cases();
    check_case_names(&cases)?;

    let dataset_id = dataset_id(&src, &ds, &json_bytes, &cases, params).await?;
    let bad_id = |e: keys::KeyError| Failure::one(None, "", msd::DATASET_JSON, e);
    let manifest_key = keys::manifest(&dataset_id).map_err(bad_id)?;
    let dataset_prefix = keys::dataset_prefix(&dataset_id).map_err(bad_id)?;
    if let Ok(bytes) = storage::get(store, &manifest_key).await {
        if let Ok(manifest) = protocol::decode::<Manifest>(&bytes) {
            tracing::info!(%dataset_id, "dataset already preprocessed; reusing it");
            return Ok(Outcome {
                dataset_id,
                manifest,
                reused: true,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        tracing::warn!(%dataset_id, "unreadable manifest; preprocessing again");
    }

    let (splits, split_origin) = split(&cases, params);
    let labels = ds.label_names();
    let ctx = Arc::new(CaseContext {
        src,
        store: store.clone(),
        dataset_id: dataset_id.clone(),
        params: params.clone(),
        limits: opts.limits,
        modalities: modalities.clone(),
        num_labels: labels.len(),
    });

    let result = run(&ctx, &cases, &splits, opts).await;
    let (entries, normalization) = match result {
        Ok(v) => v,
        Err(mut failure) => {
            failure.dataset_id = Some(dataset_id.clone());
            // Nothing of a failed run stays behind (no manifest was written, so no reader
            // could have used these files).
            if let Err(e) = storage::delete_prefix(store, &dataset_prefix).await {
                tracing::warn!(%dataset_id, error = %e, "could not clean up a failed dataset");
            }
            return Err(failure);
        }
    };

    let manifest = Manifest {
        schema: SCHEMA_VERSION,
        dataset_id: dataset_id.clone(),
        name: ds.name.clone(),
        source: source.clone(),
        params: params.clone(),
        modalities,
        labels,
        normalization,
        split_origin: split_origin.to_string(),
        cases: entries,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        segtune_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let bytes = protocol::encode(&manifest)
        .map_err(|e| Failure::one(Some(dataset_id.clone()), "", "manifest.msgpack", e))?;
    storage::put(store, &manifest_key, bytes)
        .await
        .map_err(|e| Failure::one(Some(dataset_id.clone()), "", &manifest_key, e))?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(%dataset_id, cases = manifest.cases.len(), seconds, "dataset preprocessed");
    Ok(Outcome {
        dataset_id,
        manifest,
        reused: false,
        seconds,
    })
}

/// Why a dataset's manifest could not be read; every variant names the dataset.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The id cannot be a store key (it came from a message, not from this crate).
    #[error(transparent)]
    BadId(#[from] keys::KeyError),
    #[error("dataset {dataset_id} not found in the store (no {key}); preprocess it first")]
    NotFound { dataset_id: String, key: String },
    /// The store failed (the message names the key); [`storage::StorageError::is_transient`] says
    /// whether a retry may succeed.
    #[error("dataset {dataset_id}: {source}")]
    Store {
        dataset_id: String,
        #[source]
        source: storage::StorageError,
    },
    #[error("dataset {dataset_id}: {key}: {source}")]
    Decode {
        dataset_id: String,
        key: String,
        #[source]
        source: protocol::DecodeError,
    },
}

/// Reads a dataset's manifest.
pub async fn load_manifest(store: &DynStore, dataset_id: &str) -> Result<Manifest, ManifestError> {
    let key = keys::manifest(dataset_id)?;
    let bytes = storage::get(store, &key).await.map_err(|e| match e {
        storage::StorageError::NotFound { .. } => ManifestError::NotFound {
            dataset_id: dataset_id.to_string(),
            key: key.clone(),
        },
        source => ManifestError::Store {
            dataset_id: dataset_id.to_string(),
            source,
        },
    })?;
    protocol::decode(&bytes).map_err(|source| ManifestError::Decode {
        dataset_id: dataset_id.to_string(),
        key,
        source,
    })
}

/// Case names (image file names in `dataset.json`) become object-key segments: refuse every
/// one that could leave its prefix or is otherwise unusable, all at once, before any file is
/// read or anything written.
fn check_case_names(cases: &[Case]) -> Result<(), Failure> {
    let errors: Vec<CaseError> = cases
        .iter()
        .filter_map(|case| {
            keys::check_name("case name", &case.id)
                .err()
                .map(|e| CaseError {
                    case: e.value.clone(),
                    file: msd::DATASET_JSON.to_string(),
                    reason: format!("image {:?}: {e}", case.image),
                })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            dataset_id: None,
            errors,
        })
    }
}

fn strip_file(msg: &str) -> String {
    msg.strip_prefix("dataset.json: ")
        .unwrap_or(msg)
        .to_string()
}

fn check_params(p: &PreprocessParams) -> Result<(), Failure> {
    let bad =
        |field: &str, why: String| Failure::one(None, "", "params", format!("{field}: {why}"));
    if p.target_spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(bad(
            "target_spacing",
            format!("{:?}, expected three positive numbers", p.target_spacing),
        ));
    }
    let [lo, hi] = p.ct_window;
    if !lo.is_finite() || !hi.is_finite() || lo >= hi {
        return Err(bad(
            "ct_window",
            format!("{:?}, expected low < high", p.ct_window),
        ));
    }
    let [a, b] = p.mr_percentiles;
    if !(0.0..=100.0).contains(&a) || !(0.0..=100.0).contains(&b) || a >= b {
        return Err(bad(
            "mr_percentiles",
            format!("{:?}, expected 0 <= low < high <= 100", p.mr_percentiles),
        ));
    }
    if !(0.0..1.0).contains(&p.validation_fraction) {
        return Err(bad(
            "validation_fraction",
            format!("{}, expected a value in [0, 1)", p.validation_fraction),
        ));
    }
    Ok(())
}

async fn dataset_id(
    src: &Source,
    ds: &DatasetJson,
    json_bytes: &[u8],
    cases: &[Case],
    params: &PreprocessParams,
) -> Result<String, Failure> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&PIPELINE_VERSION.to_le_bytes());
    hasher.update(&protocol::encode(params).expect("params encode"));
    hasher.update(&(json_bytes.len() as u64).to_le_bytes());
    hasher.update(json_bytes);
    let mut missing = Vec::new();
    for case in cases {
        for file in [&case.image, &case.label] {
            match src.hash_into(file, &mut hasher).await {
                Ok(()) => {}
                Err(e) => missing.push(CaseError {
                    case: case.id.clone(),
                    file: file.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    if !missing.is_empty() {
        return Err(Failure {
            dataset_id: None,
            errors: missing,
        });
    }
    let hash = hasher.finalize().to_hex();
    Ok(format!(
        "{}-{}",
        protocol::subjects::sanitize_token(&ds.name),
        &hash[..16]
    ))
}

fn split(cases: &[Case], params: &PreprocessParams) -> (Vec<Split>, &'static str) {
    if cases.iter().any(|c| c.validation) {
        let s = cases
            .iter()
            .map(|c| {
                if c.validation {
                    Split::Validation
                } else {
                    Split::Train
                }
            })
            .collect();
        return (s, "dataset.json");
    }
    let n = cases.len();
    let mut n_val = (n as f64 * params.validation_fraction).round() as usize;
    if n >= 2 && params.validation_fraction > 0.0 {
        n_val = n_val.clamp(1, n - 1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        params.split_seed,
    ));
    let mut s = vec![Split::Train; n];
    for &i in &order[..n_val] {
        s[i] = Split::Validation;
    }
    (s, "seeded")
}

struct CaseContext {
    src: Source,
    store: DynStore,
    dataset_id: String,
    params: PreprocessParams,
    limits: ReadLimits,
    modalities: Vec<Modality>,
    num_labels: usize,
}

/// Per-channel window: fixed (CT or overall MR) or computed per volume.
#[derive(Debug, Clone, Copy)]
enum Window {
    Fixed(f64, f64),
    PerVolume,
}

async fn run(
    ctx: &Arc<CaseContext>,
    cases: &[Case],
    splits: &[Split],
    opts: &Options,
) -> Result<(Vec<CaseEntry>, Vec<ChannelNormalization>), Failure> {
    let windows = channel_windows(ctx, cases, splits, opts).await?;
    let normalization = windows
        .iter()
        .enumerate()
        .map(|(c, w)| ChannelNormalization {
            channel: c as u32,
            modality: ctx.modalities[c],
            low: match w {
                Window::Fixed(l, _) => Some(*l),
                Window::PerVolume => None,
            },
            high: match w {
                Window::Fixed(_, h) => Some(*h),
                Window::PerVolume => None,
            },
        })
        .collect();

    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel_cases.max(1)));
    let mut tasks = Vec::new();
    for (case, &split) in cases.iter().zip(splits) {
        let ctx = ctx.clone();
        let case = case.clone();
        let windows = windows.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        tasks.push(tokio::spawn(async move {
            let r = process_case(&ctx, &case, split, &windows).await;
            drop(permit);
            r.map_err(|(file, reason)| CaseError {
                case: case.id.clone(),
                file,
                reason,
            })
        }));
    }
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(e)) => entries.push(e),
            Ok(Err(e)) => errors.push(e),
            Err(join) => errors.push(CaseError {
                case: String::new(),
                file: String::new(),
                reason: format!("internal error: {join}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok((entries, normalization))
    } else {
        Err(Failure {
            dataset_id: None,
            errors,
        })
    }
}

/// Decides each channel's window; for overall MR percentiles this reads the training images
/// twice (an exact two-pass percentile with bounded memory).
async fn channel_windows(
    ctx: &Arc<CaseContext>,
    cases: &[Case],
    splits: &[Split],
    _opts: &Options,
) -> Result<Vec<Window>, Failure> {
    let mut windows: Vec<Window> = ctx
        .modalities
        .iter()
        .map(|m| match m {
            Modality::Ct => Window::Fixed(ctx.params.ct_window[0], ctx.params.ct_window[1]),
            Modality::Mr => Window::PerVolume,
        })
        .collect();
    let overall_mr: Vec<usize> = (0..windows.len())
        .filter(|&c| {
            ctx.modalities[c] == Modality::Mr && ctx.params.mr_scope == PercentileScope::Overall
        })
        .collect();
    if overall_mr.is_empty() {
        return Ok(windows);
    }
    let train: Vec<&Case> = cases
        .iter()
        .zip(splits)
        .filter(|(_, s)| **s == Split::Train)
        .map(|(c, _)| c)
        .collect();
    let ps = [ctx.params.mr_percentiles[0], ctx.params.mr_percentiles[1]];
    let mut sketches = vec![PercentileSketch::new(); windows.len()];
    for case in &train {
        let img = read_image(ctx, case).await?;
        for &c in &overall_mr {
            sketches[c].add(img.channel(c));
        }
    }
    let mut refinements: Vec<_> = sketches.iter().map(|s| s.refine_plan(&ps)).collect();
    for case in &train {
        let img = read_image(ctx, case).await?;
        for &c in &overall_mr {
            refinements[c].add(img.channel(c));
        }
    }
    for (c, r) in refinements.into_iter().enumerate() {
        if !overall_mr.contains(&c) {
            continue;
        }
        let v = r
            .finish()
            .map_err(|e| Failure::one(None, "", msd::DATASET_JSON, format!("channel {c}: {e}")))?;
        windows[c] = Window::Fixed(v[0], v[1]);
    }
    Ok(windows)
}

async fn read_image(ctx: &Arc<CaseContext>, case: &Case) -> Result<Volume<f32>, Failure> {
    let bytes = ctx
        .src
        .read(&case.image)
        .await
        .map_err(|e| Failure::one(None, &case.id, &case.image, e))?;
    let limits = ctx.limits;
    let name = case.image.clone();
    let channels = ctx.modalities.len();
    let r = tokio::task::spawn_blocking(move || decode_image(&bytes, &name, &limits, channels))
        .await
        .expect("decode task");
    r.map_err(|e| Failure::one(None, &case.id, &case.image, e))
}

fn nifti_reason(e: NiftiError, file: &str) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("{file}: "))
        .unwrap_or(&s)
        .to_string()
}

fn decode_image(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
    channels: usize,
) -> Result<Volume<f32>, String> {
    let img = volume::read_nifti_bytes(bytes, name, limits).map_err(|e| nifti_reason(e, name))?;
    let v = img.volume;
    if v.channels != channels {
        return Err(format!(
            "has {} channel(s), dataset.json's modality lists {channels}",
            v.channels
        ));
    }
    let bad = volume::nifti::count_non_finite(&v.data);
    if bad > 0 {
        return Err(format!("{bad} voxel(s) are NaN or infinite"));
    }
    Ok(v)
}

fn decode_label(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
    num_labels: usize,
) -> Result<Volume<u8>, String> {
    // Straight to u8 (a label map is never held as f32); non-integer and out-of-range values
    // are refused by the reader, naming the voxel.
    let v = volume::nifti::read_nifti_labels_bytes(bytes, name, limits)
        .map_err(|e| nifti_reason(e, name))?
        .volume;
    check_labels(v, num_labels)
}

/// A decoded label map has one channel and no class outside dataset.json's labels.
pub fn check_labels(v: Volume<u8>, num_labels: usize) -> Result<Volume<u8>, String> {
    if v.channels != 1 {
        return Err(format!(
            "a label map must have 1 channel, found {}",
            v.channels
        ));
    }
    if let Some(&x) = v.data.iter().find(|&&x| x as usize >= num_labels) {
        return Err(format!(
            "label value {x} is not one of the {num_labels} labels in dataset.json"
        ));
    }
    Ok(v)
}

/// Geometries of image and label must agree: same grid within 1e-3 mm (or 0.1% of a voxel).
fn check_same_grid(img: &Volume<f32>, lab: &Volume<u8>) -> Result<(), String> {
    if img.dims != lab.dims {
        return Err(format!(
            "label shape {:?} differs from image shape {:?}",
            lab.dims, img.dims
        ));
    }
    let tol = 1e-3 * img.geometry.spacing.iter().cloned().fold(1.0, f64::max);
    if !img.geometry.approx_eq(&lab.geometry, tol) {
        return Err(format!(
            "label affine {:?} differs from image affine {:?}",
            lab.geometry.affine(),
            img.geometry.affine()
        ));
    }
    Ok(())
}

/// The CPU part of one case, shared with the benchmark: resample, normalize, encode.
pub struct Processed {
    pub image_nii: Vec<u8>,
    pub label_nii: Vec<u8>,
    pub shape: [usize; 3],
    pub label_counts: Vec<u64>,
    pub windows: Vec<[f64; 2]>,
}

/// What [`process_volumes_into`] learned about a case besides the bytes it wrote.
pub struct ProcessedInfo {
    pub shape: [usize; 3],
    pub label_counts: Vec<u64>,
    pub windows: Vec<[f64; 2]>,
}

/// Output slices per slab: about 32 MiB of f32, so a slab is small beside a volume and
/// the resampler's per-block cache restarts rarely.
fn slab_slices(dims: [usize; 3]) -> usize {
    ((32 << 20) / (4 * dims[0] * dims[1]).max(1)).max(1)
}

/// Resamples and normalizes a decoded case and encodes both as `.nii` in memory, for callers
/// that need the bytes (the preprocessor streams them into the store instead,
/// [`process_volumes_to_store`]). The resampled image is written into its encoded bytes slab by slab
/// (never held as a volume beside them) and the inputs are freed as soon as they are used,
/// so the peak is the inputs plus the encoded image, then the label and both encodings.
/// `windows[c]` = `None` computes channel `c`'s percentile window on this volume.
pub fn process_volumes(
    img: Volume<f32>,
    lab: Volume<u8>,
    target: [f64; 3],
    windows: &[Option<[f64; 2]>],
    mr_percentiles: [f64; 2],
    num_labels: usize,
) -> Result<Processed, String> {
    let voxels = output_dims(img.dims, img.geometry.spacing, target)
        .iter()
        .product::<usize>();
    let image_nii = Vec::with_capacity(MIN_VOX_OFFSET + 4 * voxels * img.channels);
    let label_nii = Vec::with_capacity(MIN_VOX_OFFSET + voxels);
    let (info, image_nii, label_nii) = process_volumes_into(
        img,
        lab,
        target,
        windows,
        mr_percentiles,
        num_labels,
        image_nii,
        label_nii,
    )?;
    Ok(Processed {
        image_nii,
        label_nii,
        shape: info.shape,
        label_counts: info.label_counts,
        windows: info.windows,
    })
}

/// [`process_volumes`] into any two writers (files, buffers): the image's slabs go to
/// `image_out` as they are computed and the label's to `label_out`, so with files the
/// resampled volumes are never held at all. The image input is freed before the label is
/// resampled, the label input before returning. Returns the writers (not flushed).
#[allow(clippy::too_many_arguments)]
pub fn process_volumes_into<I: std::io::Write, L: std::io::Write>(
    img: Volume<f32>,
    lab: Volume<u8>,
    target: [f64; 3],
    windows: &[Option<[f64; 2]>],
    mr_percentiles: [f64; 2],
    num_labels: usize,
    image_out: I,
    label_out: L,
) -> Result<(ProcessedInfo, I, L), String> {
    // Percentile windows come from the voxels as stored (before resampling), like the
    // dataset-wide ones, so both scopes measure the same population.
    let mut applied = Vec::new();
    for (c, w) in windows.iter().enumerate() {
        applied.push(match w {
            Some(w) => *w,
            None => {
                let p = percentiles(img.channel(c), &mr_percentiles)
                    .ok_or_else(|| format!("channel {c} has no finite voxel"))?;
                [p[0], p[1]]
            }
        });
    }
    let shape = output_dims(img.dims, img.geometry.spacing, target);
    let slab = slab_slices(shape);
    let out_geometry = volume::resample::output_geometry(&img.geometry, target);
    let e = |e: NiftiError| e.to_string();

    let mut w = NiftiWriter::<_, f32>::new(image_out, "image", shape, img.channels, &out_geometry)
        .map_err(e)?;
    resample_image_slabs(&img, target, slab, |c, values| {
        let [lo, hi] = applied[c];
        normalize_window(values, lo, hi);
        w.write(values)
    })
    .map_err(e)?;
    let image_out = w.finish().map_err(e)?;
    drop(img);

    let mut counts = vec![0u64; num_labels.max(1)];
    let mut w = NiftiWriter::<_, u8>::new(label_out, "label", shape, lab.channels, &out_geometry)
        .map_err(e)?;
    resample_label_slabs(&lab, target, slab, |_, values| {
        for &v in values.iter() {
            counts[v as usize] += 1;
        }
        w.write(values)
    })
    .map_err(e)?;
    let label_out = w.finish().map_err(e)?;
    drop(lab);
    Ok((
        ProcessedInfo {
            shape,
            label_counts: counts,
            windows: applied,
        },
        image_out,
        label_out,
    ))
}

/// What [`process_volumes_to_store`] stored.
pub struct Stored {
    pub info: ProcessedInfo,
    /// BLAKE3 (hex) of the image object's bytes, as stored.
    pub image_blake3: String,
    pub label_blake3: String,
    pub image_len: u64,
    pub label_len: u64,
}

/// Why [`process_volumes_to_store`] failed; nothing is left at either key.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Resampling, normalizing or encoding failed (the message says why).
    #[error("{0}")]
    Process(String),
    /// The store failed (the error names the key; [`storage::StorageError::is_transient`]
    /// says whether a retry may succeed).
    #[error("{source}")]
    Store {
        key: String,
        #[source]
        source: Box<storage::StorageError>,
    },
}

/// [`process_volumes_into`] streamed into the store: the image and the label are uploaded to
/// `keys` (image, label) as their slabs are computed, so neither encoding is ever held whole
/// (each upload holds at most `(storage::UPLOAD_IN_FLIGHT + 1) × storage::UPLOAD_PART`
/// bytes). Both objects appear only once both are written whole (the image first); on any
/// failure both uploads are aborted. Blocks on `handle` (see [`storage::Upload`]): call it
/// from `spawn_blocking` or a plain thread.
#[allow(clippy::too_many_arguments)]
pub fn process_volumes_to_store(
    img: Volume<f32>,
    lab: Volume<u8>,
    target: [f64; 3],
    windows: &[Option<[f64; 2]>],
    mr_percentiles: [f64; 2],
    num_labels: usize,
    store: &DynStore,
    keys: [&str; 2],
    handle: tokio::runtime::Handle,
) -> Result<Stored, StreamError> {
    let [image_key, label_key] = keys;
    let store_error = |key: &str, source| StreamError::Store {
        key: key.to_string(),
        source: Box::new(source),
    };
    let mut image_up =
        storage::upload(store, image_key, handle.clone()).map_err(|e| store_error(image_key, e))?;
    let mut label_up = match storage::upload(store, label_key, handle) {
        Ok(up) => up,
        Err(e) => {
            image_up.abort();
            return Err(store_error(label_key, e));
        }
    };
    let processed = process_volumes_into(
        img,
        lab,
        target,
        windows,
        mr_percentiles,
        num_labels,
        &mut image_up,
        &mut label_up,
    );
    let info = match processed {
        Ok((info, _, _)) => info,
        Err(reason) => {
            // A failed upload makes the writer fail: report the store's error, by key.
            let image_failed = failed_upload(image_up);
            let label_failed = failed_upload(label_up);
            return Err(match (image_failed, label_failed) {
                (Some(e), _) => store_error(image_key, e),
                (None, Some(e)) => store_error(label_key, e),
                (None, None) => StreamError::Process(reason),
            });
        }
    };
    let (image_blake3, image_len) = match image_up.finish() {
        Ok(v) => v,
        Err(e) => {
            label_up.abort();
            return Err(store_error(image_key, e));
        }
    };
    let (label_blake3, label_len) = label_up.finish().map_err(|e| store_error(label_key, e))?;
    Ok(Stored {
        info,
        image_blake3,
        label_blake3,
        image_len,
        label_len,
    })
}

/// Aborts `up`, returning its error if a part had failed to upload.
fn failed_upload(up: storage::Upload) -> Option<storage::StorageError> {
    if up.error().is_some() {
        up.finish().err()
    } else {
        up.abort();
        None
    }
}

async fn process_case(
    ctx: &Arc<CaseContext>,
    case: &Case,
    split: Split,
    windows: &[Window],
) -> Result<CaseEntry, (String, String)> {
    let image_key = keys::case_image(&ctx.dataset_id, &case.id)
        .map_err(|e| (case.image.clone(), e.to_string()))?;
    let label_key = keys::case_label(&ctx.dataset_id, &case.id)
        .map_err(|e| (case.label.clone(), e.to_string()))?;
    let img_bytes = ctx
        .src
        .read(&case.image)
        .await
        .map_err(|e| (case.image.clone(), e.to_string()))?;
    let lab_bytes = ctx
        .src
        .read(&case.label)
        .await
        .map_err(|e| (case.label.clone(), e.to_string()))?;
    let c2 = ctx.clone();
    let case2 = case.clone();
    let wins: Vec<Option<[f64; 2]>> = windows
        .iter()
        .map(|w| match w {
            Window::Fixed(l, h) => Some([*l, *h]),
            Window::PerVolume => None,
        })
        .collect();
    let handle = tokio::runtime::Handle::current();
    let keys = (image_key.clone(), label_key.clone());
    let (stored, source_spacing, source_shape, channels) = tokio::task::spawn_blocking(move || {
        let img = decode_image(&img_bytes, &case2.image, &c2.limits, c2.modalities.len())
            .map_err(|e| (case2.image.clone(), e))?;
        drop(img_bytes);
        let lab = decode_label(&lab_bytes, &case2.label, &c2.limits, c2.num_labels)
            .map_err(|e| (case2.label.clone(), e))?;
        drop(lab_bytes);
        check_same_grid(&img, &lab).map_err(|e| (case2.label.clone(), e))?;
        let (spacing, dims, channels) = (img.geometry.spacing, img.dims, img.channels);
        let stored = process_volumes_to_store(
            img,
            lab,
            c2.params.target_spacing,
            &wins,
            c2.params.mr_percentiles,
            c2.num_labels,
            &c2.store,
            [&keys.0, &keys.1],
            handle,
        )
        .map_err(|e| match e {
            StreamError::Process(reason) => (case2.image.clone(), reason),
            StreamError::Store { key, source } => (key, source.to_string()),
        })?;
        Ok::<_, (String, String)>((stored, spacing, dims, channels))
    })
    .await
    .map_err(|e| (case.image.clone(), format!("internal error: {e}")))??;

    Ok(CaseEntry {
        id: case.id.clone(),
        split,
        image_key,
        label_key,
        shape: stored.info.shape,
        channels,
        source_spacing,
        source_shape,
        label_counts: stored.info.label_counts,
        windows: stored.info.windows,
        image_blake3: Some(stored.image_blake3),
        label_blake3: Some(stored.label_blake3),
    })
}
