//! The model bundle: everything needed to segment a new image with a trained model, in one
//! folder (or store prefix) of two files:
//!
//! - `bundle.json` — [`BundleManifest`]: format name and version, the network, the
//!   preprocessing to repeat (target spacing, per-channel modality and intensity window), the
//!   labels, the post-processing, and where the model came from (dataset, study, job,
//!   strategy, training settings);
//! - `model.safetensors` — the weights, as `segtune train` and the trainers write them.
//!
//! Readers refuse a bundle whose `format` is not [`FORMAT`], whose `version` is newer than
//! [`VERSION`], or with a field they do not know (every struct denies unknown fields), each
//! with one line naming the file and the problem. Writing goes through a sibling `.partial`
//! folder renamed into place, so a reader never sees half a bundle.

use std::path::{Path, PathBuf};

use protocol::{Manifest, Modality, Strategy, TrainingConfig};
use serde::{Deserialize, Serialize};
use storage::DynStore;

use crate::Dataset;

/// `bundle.json`'s `format`.
pub const FORMAT: &str = "segtune-model";
/// The bundle format version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
/// The manifest's file name inside a bundle.
pub const MANIFEST_FILE: &str = "bundle.json";
/// The weights' file name inside a bundle.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: String,
    pub version: u32,
    pub network: Network,
    pub preprocessing: Preprocessing,
    /// Label names by value (index 0 = background), from dataset.json.
    pub labels: Vec<String>,
    pub postprocessing: Postprocessing,
    pub provenance: Provenance,
}

/// The U-Net and how it scans an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub in_channels: usize,
    pub num_classes: usize,
    /// Channels per level.
    pub channels: Vec<usize>,
    /// Training patch and sliding window (x, y, z), voxels at the target spacing.
    pub patch: [usize; 3],
    /// Default sliding-window overlap.
    pub overlap: f64,
    /// The validation Dice was measured on the mean of the 8 mirrorings of each case, and
    /// `segtune predict` mirrors by default. Absent when false (what older bundles hold).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tta: bool,
}

/// What preprocessing did to the training images, to repeat on a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Voxel spacing the model works at, mm (x, y, z).
    pub target_spacing: [f64; 3],
    /// One entry per input channel.
    pub channels: Vec<ChannelPreprocessing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPreprocessing {
    pub modality: Modality,
    pub window: Window,
}

/// The intensity window mapped to [0, 1] (values outside are clamped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// A fixed window: the CT window in HU, or the dataset-wide MR percentile window.
    Fixed { low: f64, high: f64 },
    /// Percentiles (in percent) of each image on its own, before resampling.
    PerImagePercentiles { low: f64, high: f64 },
}

/// The evaluator's post-processing: components of a class smaller than its minimum are
/// relabelled. Sizes are in mm³ so they apply on any grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postprocessing {
    /// Per foreground class (index 0 = class 1); 0 keeps every component.
    pub min_component_mm3: Vec<f64>,
}

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub dataset_id: String,
    pub dataset_name: String,
    /// The study and job that trained it (`None` for `segtune train`).
    pub study: Option<String>,
    pub job_id: Option<String>,
    pub strategy: Strategy,
    pub training: TrainingConfig,
    pub seed: u64,
    /// Trained on the training and validation cases together (then `validation_dice` is not
    /// a held-out score).
    pub all_cases: bool,
    /// Mean validation Dice at the target spacing, when it was measured.
    pub validation_dice: Option<f64>,
    pub segtune_version: String,
    pub created_unix: u64,
}

/// A bundle in memory: the manifest and the weights.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: BundleManifest,
    pub weights: Vec<u8>,
}

/// What the bundle records about a training run besides the dataset.
pub struct BundleSource<'a> {
    pub study: Option<&'a str>,
    pub job_id: Option<&'a str>,
    pub strategy: &'a Strategy,
    pub training: &'a TrainingConfig,
    pub seed: u64,
    pub all_cases: bool,
    pub validation_dice: Option<f64>,
}

/// Why a bundle cannot be read or written. Every message names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Store {
        key: String,
        message: String,
        transient: bool,
    },
}

impl Bundle {
    /// The bundle of a model trained on `data` with `source`'s settings.
    pub fn new(data: &Dataset, weights: Vec<u8>, source: &BundleSource<'_>) -> Bundle {
        let m = &data.manifest;
        let channels = (0..data.channels())
            .map(|c| {
                let modality = m.modalities.get(c).copied().unwrap_or(Modality::Mr);
                let norm = m.normalization.iter().find(|n| n.channel as usize == c);
                let window = match norm.and_then(|n| n.low.zip(n.high)) {
                    Some((low, high)) => Window::Fixed { low, high },
                    None => Window::PerImagePercentiles {
                        low: m.params.mr_percentiles[0],
                        high: m.params.mr_percentiles[1],
                    },
                };
                ChannelPreprocessing { modality, window }
            })
            .collect();
        let voxel_mm3: f64 = m.params.target_spacing.iter().product();
        let min_sizes = min_component_sizes(data);
        Bundle {
            manifest: BundleManifest {
                format: FORMAT.to_string(),
                version: VERSION,
                network: Network {
                    in_channels: data.channels(),
                    num_classes: data.num_classes(),
                    channels: source.training.channels.clone(),
                    patch: source.training.patch,
                    overlap: source.training.overlap,
                    tta: source.training.tta,
                },
                preprocessing: Preprocessing {
                    target_spacing: m.params.target_spacing,
                    channels,
                },
                labels: labels(m),
                postprocessing: Postprocessing {
                    min_component_mm3: min_sizes.iter().map(|&s| s as f64 * voxel_mm3).collect(),
                },
                provenance: Provenance {
                    dataset_id: m.dataset_id.clone(),
                    dataset_name: m.name.clone(),
                    study: source.study.map(str::to_string),
                    job_id: source.job_id.map(str::to_string),
                    strategy: source.strategy.clone(),
                    training: source.training.clone(),
                    seed: source.seed,
                    all_cases: source.all_cases,
                    validation_dice: source.validation_dice,
                    segtune_version: env!("CARGO_PKG_VERSION").to_string(),
                    created_unix: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                },
            },
            weights,
        }
    }

    /// The manifest as `bundle.json` bytes.
    pub fn manifest_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.manifest).expect("a bundle manifest encodes");
        v.push(b'\n');
        v
    }

    /// Writes the bundle into the folder `dir` (created; an existing bundle there is
    /// replaced) through a sibling `.partial` folder renamed into place.
    pub fn write_dir(&self, dir: &Path) -> Result<(), BundleError> {
        let io = |file: &Path| {
            let file = file.display().to_string();
            move |source| BundleError::Io { file, source }
        };
        let partial = sibling(dir, ".partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let result = (|| {
            for (name, bytes) in [
                (WEIGHTS_FILE, self.weights.as_slice()),
                (MANIFEST_FILE, &self.manifest_json()),
            ] {
                let path = partial.join(name);
                std::fs::write(&path, bytes).map_err(io(&dir.join(name)))?;
            }
            if dir.exists() {
                let old = sibling(dir, ".old");
                let _ = std::fs::remove_dir_all(&old);
                std::fs::rename(dir, &old).map_err(io(dir))?;
                std::fs::rename(&partial, dir).map_err(io(dir))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&partial, dir).map_err(io(dir))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        result
    }

    /// Reads and checks the bundle in folder `dir`.
    pub fn read_dir(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path).map_err(|source| BundleError::Io {
            file: manifest_path.display().to_string(),
            source,
        })?;
        let manifest = parse_manifest(&bytes, &manifest_path.display().to_string())?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = std::fs::read(&weights_path).map_err(|source| BundleError::Io {
            file: weights_path.display().to_string(),
            source,
        })?;
        Ok(Bundle { manifest, weights })
    }

    /// Writes the bundle under the store prefix `prefix` (weights first, manifest last, so a
    /// manifest is only ever there with its weights).
    pub async fn write_store(&self, store: &DynStore, prefix: &str) -> Result<(), BundleError> {
        for (name, bytes) in [
            (WEIGHTS_FILE, self.weights.clone()),
            (MANIFEST_FILE, self.manifest_json()),
        ] {
            let key = format!("{prefix}/{name}");
            storage::put(store, &key, bytes)
                .await
                .map_err(|e| store_error(&key, e))?;
        }
        Ok(())
    }

    /// Reads and checks the bundle under the store prefix `prefix`.
    pub async fn read_store(store: &DynStore, prefix: &str) -> Result<Bundle, BundleError> {
        let key = format!("{prefix}/{MANIFEST_FILE}");
        let bytes = storage::get(store, &key)
            .await
            .map_err(|e| store_error(&key, e))?;
        let manifest = parse_manifest(&bytes, &key)?;
        let key = format!("{prefix}/{WEIGHTS_FILE}");
        let weights = storage::get(store, &key)
            .await
            .map_err(|e| store_error(&key, e))?
            .to_vec();
        Ok(Bundle { manifest, weights })
    }

    /// The network of the bundle, as the engine builds it.
    pub fn unet(&self) -> segmodel::UNetConfig {
        let n = &self.manifest.network;
        segmodel::UNetConfig {
            in_channels: n.in_channels,
            num_classes: n.num_classes,
            channels: n.channels.clone(),
            ..segmodel::UNetConfig::default()
        }
    }
}

fn store_error(key: &str, e: storage::StorageError) -> BundleError {
    BundleError::Store {
        key: key.to_string(),
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn labels(m: &Manifest) -> Vec<String> {
    let mut l = m.labels.clone();
    while l.len() < m.num_classes() {
        l.push(if l.is_empty() {
            "background".to_string()
        } else {
            format!("class {}", l.len())
        });
    }
    l
}

/// The evaluator's minimum component sizes (voxels at the target spacing) for `data`.
pub fn min_component_sizes(data: &Dataset) -> Vec<usize> {
    // A mapped case lets go of its label's pages once the next one is read, so the labels
    // of a mapped dataset are resident one at a time.
    let mut previous: Option<&crate::CaseData> = None;
    let labels = data.train.iter().map(|c| {
        if let Some(p) = previous.replace(c) {
            p.release();
        }
        (c.label_slice(), c.dims())
    });
    let sizes = segmodel::postprocess::min_component_sizes(labels, data.num_classes());
    if let Some(p) = previous {
        p.release();
    }
    sizes
}

/// Parses and checks `bundle.json` bytes; `file` names them in errors.
pub fn parse_manifest(bytes: &[u8], file: &str) -> Result<BundleManifest, BundleError> {
    let invalid = |problem: String| BundleError::Invalid {
        file: file.to_string(),
        problem,
    };
    // Format and version first, so a newer bundle is refused for what it is rather than for
    // a field this build does not know.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("not a bundle manifest (JSON): {e}")))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(invalid(format!(
                "format = {other:?}, expected {FORMAT:?} (not a segtune model bundle)"
            )));
        }
        None => {
            return Err(invalid(format!(
                "no `format` field, expected \"format\": {FORMAT:?} (not a segtune model bundle)"
            )));
        }
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v > VERSION as u64 => {
            return Err(invalid(format!(
                "bundle format version {v} is newer than this segtune reads ({VERSION}); \
                 use a segtune at least as new as the one that wrote it"
            )));
        }
        Some(0) | None => {
            return Err(invalid(format!(
                "`version` must be a format version 1..={VERSION}"
            )));
        }
        Some(_) => {}
    }
    let m: BundleManifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    check_manifest(&m).map_err(invalid)?;
    Ok(m)
}

/// The checks a manifest must pass beyond its types.
fn check_manifest(m: &BundleManifest) -> Result<(), String> {
    let n = &m.network;
    if n.in_channels == 0 || n.num_classes < 2 || n.num_classes > 255 {
        return Err(format!(
            "network: in_channels = {}, num_classes = {}; expected ≥ 1 and 2..=255",
            n.in_channels, n.num_classes
        ));
    }
    if n.channels.is_empty() || n.channels.contains(&0) {
        return Err(format!(
            "network.channels = {:?}, expected positive sizes",
            n.channels
        ));
    }
    let multiple = 1usize << (n.channels.len() - 1);
    if n.patch.iter().any(|&p| p == 0 || p % multiple != 0) {
        return Err(format!(
            "network.patch = {:?}, expected positive multiples of {multiple}",
            n.patch
        ));
    }
    if !(0.0..1.0).contains(&n.overlap) {
        return Err(format!("network.overlap = {}, expected [0, 1)", n.overlap));
    }
    let p = &m.preprocessing;
    if !p.target_spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(format!(
            "preprocessing.target_spacing = {:?}, expected positive mm",
            p.target_spacing
        ));
    }
    if p.channels.len() != n.in_channels {
        return Err(format!(
            "preprocessing.channels lists {} channel(s), network.in_channels = {}",
            p.channels.len(),
            n.in_channels
        ));
    }
    for (c, ch) in p.channels.iter().enumerate() {
        let (low, high, what) = match ch.window {
            Window::Fixed { low, high } => (low, high, "values"),
            Window::PerImagePercentiles { low, high } => (low, high, "percentiles"),
        };
        let ok = low.is_finite()
            && high.is_finite()
            && low < high
            && (what == "values" || (0.0..=100.0).contains(&low) && high <= 100.0);
        if !ok {
            return Err(format!(
                "preprocessing.channels[{c}].window = [{low}, {high}], expected low < high \
                 ({what})"
            ));
        }
    }
    if m.labels.len() != n.num_classes {
        return Err(format!(
            "labels lists {} name(s), network.num_classes = {}",
            m.labels.len(),
            n.num_classes
        ));
    }
    let mins = &m.postprocessing.min_component_mm3;
    if mins.len() != n.num_classes - 1 || mins.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(format!(
            "postprocessing.min_component_mm3 = {mins:?}, expected {} value(s) ≥ 0",
            n.num_classes - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            manifest: BundleManifest {
                format: FORMAT.into(),
                version: VERSION,
                network: Network {
                    in_channels: 1,
                    num_classes: 3,
                    channels: vec![4, 8],
                    patch: [16, 16, 32],
                    overlap: 0.25,
                    tta: false,
                },
                preprocessing: Preprocessing {
                    target_spacing: [1.0, 1.0, 1.5],
                    channels: vec![ChannelPreprocessing {
                        modality: Modality::Mr,
                        window: Window::PerImagePercentiles {
                            low: 5.0,
                            high: 95.0,
                        },
                    }],
                },
                labels: vec!["background".into(), "organ".into(), "lesion".into()],
                postprocessing: Postprocessing {
                    min_component_mm3: vec![120.0, 0.0],
                },
                provenance: Provenance {
                    dataset_id: "synth-0011".into(),
                    dataset_name: "Synth".into(),
                    study: Some("demo".into()),
                    job_id: Some("demo-final-1".into()),
                    strategy: Strategy::default(),
                    training: TrainingConfig::default(),
                    seed: 3,
                    all_cases: true,
                    validation_dice: Some(0.71),
                    segtune_version: "0.1.0".into(),
                    created_unix: 1,
                },
            },
            weights: vec![1, 2, 3, 4],
        }
    }

    #[test]
    fn a_bundle_folder_round_trips_and_replaces_an_older_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        let b = bundle();
        b.write_dir(&path).unwrap();
        let read = Bundle::read_dir(&path).unwrap();
        assert_eq!(read.manifest, b.manifest);
        assert_eq!(read.weights, b.weights);
        let mut newer = bundle();
        newer.weights = vec![9; 10];
        newer.write_dir(&path).unwrap();
        assert_eq!(Bundle::read_dir(&path).unwrap().weights, vec![9; 10]);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["model".to_string()], "nothing left beside it");
    }

    /// Each way a manifest can be wrong is refused with the file and the problem.
    #[test]
    fn bad_manifests_are_refused_naming_the_file_and_the_problem() {
        let good: serde_json::Value = serde_json::to_value(bundle().manifest).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(Vec<u8>, &[&str])> = vec![
            (b"{not json".to_vec(), &["not a bundle manifest"]),
            (
                with(&|v| v["format"] = "nnunet".into()),
                &["format = \"nnunet\"", "not a segtune model bundle"],
            ),
            (
                with(&|v| v["version"] = 2.into()),
                &["version 2 is newer", "reads (1)"],
            ),
            (
                with(&|v| v["network"]["depth"] = 4.into()),
                &["unknown field `depth`"],
            ),
            (
                with(&|v| v["network"]["patch"] = serde_json::json!([16, 16, 15])),
                &["network.patch", "multiples of 2"],
            ),
            (
                with(&|v| v["labels"] = serde_json::json!(["background", "organ"])),
                &["labels lists 2", "num_classes = 3"],
            ),
            (
                with(&|v| {
                    v["preprocessing"]["channels"][0]["window"]["high"] = 1.0.into();
                }),
                &["preprocessing.channels[0].window = [5, 1]"],
            ),
            (
                with(&|v| v["postprocessing"]["min_component_mm3"] = serde_json::json!([1.0])),
                &["min_component_mm3", "2 value(s)"],
            ),
        ];
        for (bytes, needles) in cases {
            let e = parse_manifest(&bytes, "dir/bundle.json")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("dir/bundle.json: "), "{e}");
            for n in needles {
                assert!(e.contains(n), "{n:?} not in {e:?}");
            }
        }
        assert!(parse_manifest(&serde_json::to_vec(&good).unwrap(), "x").is_ok());
    }

    #[test]
    fn a_folder_without_weights_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle();
        std::fs::write(dir.path().join(MANIFEST_FILE), b.manifest_json()).unwrap();
        let e = Bundle::read_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }
}
