//! Datasets: how a preprocessing run is asked for, and the manifest stored with its output
//! at `datasets/<dataset-id>/manifest.msgpack`.

use serde::{Deserialize, Serialize};

/// Where the raw MSD task folder (`dataset.json`, `imagesTr/`, `labelsTr/`) is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetSource {
    /// A folder on the preprocessor's file system.
    Local { path: String },
    /// A key prefix in the same object store the outputs go to (e.g. `raw/Task09_Spleen`).
    Store { prefix: String },
}

impl std::fmt::Display for DatasetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetSource::Local { path } => write!(f, "{path}"),
            DatasetSource::Store { prefix } => write!(f, "store:{prefix}"),
        }
    }
}

/// How MR percentiles are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PercentileScope {
    /// Over all training volumes of the dataset together (the paper's "overall").
    #[default]
    Overall,
    /// Over each volume on its own.
    PerVolume,
}

/// Every parameter that changes preprocessed output. Part of the dataset id's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessParams {
    /// Output voxel spacing in mm (x, y, z), default 1 mm isotropic.
    pub target_spacing: [f64; 3],
    /// CT intensity window in HU, mapped to [0, 1].
    pub ct_window: [f64; 2],
    /// MR percentile window (in percent), mapped to [0, 1].
    pub mr_percentiles: [f64; 2],
    pub mr_scope: PercentileScope,
    /// Fraction of cases held out for validation when dataset.json lists none.
    pub validation_fraction: f64,
    /// Seed of that split.
    pub split_seed: u64,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        Self {
            target_spacing: [1.0, 1.0, 1.0],
            ct_window: [-1000.0, 1000.0],
            mr_percentiles: [5.0, 95.0],
            mr_scope: PercentileScope::Overall,
            validation_fraction: 0.2,
            split_seed: 0,
        }
    }
}

/// Imaging modality of one channel, from dataset.json's `modality` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Ct,
    Mr,
}

/// The intensity mapping applied to one channel: `clamp((v - low) / (high - low), 0, 1)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelNormalization {
    pub channel: u32,
    pub modality: Modality,
    /// `None` when the window is per volume (then see [`CaseEntry::windows`]).
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
}

/// One preprocessed case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEntry {
    /// The image file's stem (`spleen_12` for `imagesTr/spleen_12.nii.gz`).
    pub id: String,
    pub split: Split,
    /// Store keys of the preprocessed NIfTI files.
    pub image_key: String,
    pub label_key: String,
    /// Voxel grid after resampling: (x, y, z).
    pub shape: [usize; 3],
    pub channels: usize,
    /// Spacing of the source file, mm.
    pub source_spacing: [f64; 3],
    pub source_shape: [usize; 3],
    /// Voxel count of each label value 0..num_classes after resampling.
    pub label_counts: Vec<u64>,
    /// Per-channel intensity window actually applied (differs per case only for per-volume MR).
    pub windows: Vec<[f64; 2]>,
    /// BLAKE3 (hex) of the stored image and label objects, verified by the case cache when it
    /// fetches them. Absent in manifests written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_blake3: Option<String>,
}

/// `datasets/<dataset-id>/manifest.msgpack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub dataset_id: String,
    /// `name` from dataset.json.
    pub name: String,
    pub source: DatasetSource,
    pub params: PreprocessParams,
    pub modalities: Vec<Modality>,
    /// Label names by value, from dataset.json's `labels` (index 0 = background).
    pub labels: Vec<String>,
    pub normalization: Vec<ChannelNormalization>,
    /// Where the split came from: `"dataset.json"` or `"seeded"`.
    pub split_origin: String,
    pub cases: Vec<CaseEntry>,
    /// Seconds since the Unix epoch when preprocessing finished.
    pub created_unix: u64,
    pub segtune_version: String,
}

impl Manifest {
    pub fn num_classes(&self) -> usize {
        self.labels.len().max(2)
    }
    pub fn train_cases(&self) -> impl Iterator<Item = &CaseEntry> {
        self.cases.iter().filter(|c| c.split == Split::Train)
    }
    pub fn validation_cases(&self) -> impl Iterator<Item = &CaseEntry> {
        self.cases.iter().filter(|c| c.split == Split::Validation)
    }
}
