//! Study files: the TOML a user writes, turned into the `StudySpec` that travels on the bus.
//!
//! Everything but the dataset has a default, so the smallest study file is
//!
//! ```toml
//! [dataset]
//! path = "../segtune-data/synth-ct"
//! ```
//!
//! (the paper's search: `ppo-rnn` over the paper's space, 100 jobs, 4 at a time). Unknown keys
//! are errors, so a typo never silently falls back to a default. See the README for every key.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use protocol::{
    DatasetRef, DatasetSource, Dimension, PercentileScope, PreprocessParams, PruningSpec,
    SCHEMA_VERSION, Scale, StudySpec, TrainingConfig,
};
use serde::Deserialize;

use crate::{FieldError, validate_spec};

/// The top level of a study file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// Study id (a subject token: letters, digits, `-`, `_`); default: the file's stem.
    #[serde(default)]
    pub study: Option<String>,
    pub dataset: DatasetSection,
    #[serde(default)]
    pub search: SearchSection,
    /// Absent: the paper's space.
    #[serde(default)]
    pub space: Option<SpaceSection>,
    #[serde(default)]
    pub training: TrainingSection,
    /// Absent: no intermediate validation, no pruning.
    #[serde(default)]
    pub pruning: Option<PruningSection>,
}

/// `[pruning]`: intermediate validation and the rule that stops weak jobs early
/// (`protocol::PruningSpec`; the defaults are `search::prune`'s).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruningSection {
    /// `"none"` (default), `"median"` or `"asha"`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub report_every_epochs: Option<u32>,
    #[serde(default)]
    pub report_at: Option<Vec<f64>>,
    #[serde(default)]
    pub overlap: Option<f64>,
    #[serde(default)]
    pub warmup_steps: Option<u32>,
    #[serde(default)]
    pub min_jobs: Option<u32>,
    #[serde(default)]
    pub eta: Option<u32>,
    #[serde(default)]
    pub min_epochs: Option<u32>,
}

impl PruningSection {
    fn into_spec(self) -> PruningSpec {
        PruningSpec {
            kind: self.kind.unwrap_or_else(|| "none".into()),
            report_every_epochs: self.report_every_epochs,
            report_at: self.report_at,
            overlap: self.overlap,
            warmup_steps: self.warmup_steps,
            min_jobs: self.min_jobs,
            eta: self.eta,
            min_epochs: self.min_epochs,
        }
    }
}

/// `[dataset]`: exactly one of `path`, `store_prefix`, `id`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// An MSD task folder (dataset.json, imagesTr/, labelsTr/), relative to the study file.
    /// It is read by the preprocessor, so it must be a path the preprocessor sees.
    #[serde(default)]
    pub path: Option<String>,
    /// The task under this prefix of the object store (e.g. `raw/Task09_Spleen`).
    #[serde(default)]
    pub store_prefix: Option<String>,
    /// An already preprocessed dataset id (printed by `segtune data preprocess`).
    #[serde(default)]
    pub id: Option<String>,
    /// Preprocessing parameters (with `path` or `store_prefix`).
    #[serde(default)]
    pub preprocess: PreprocessSection,
}

/// `[dataset.preprocess]`: overrides of `protocol::PreprocessParams`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Output spacing in mm: one number (isotropic) or `[x, y, z]`.
    #[serde(default)]
    pub spacing: Option<OneOrThree<f64>>,
    #[serde(default)]
    pub ct_window: Option<[f64; 2]>,
    #[serde(default)]
    pub mr_percentiles: Option<[f64; 2]>,
    #[serde(default)]
    pub mr_scope: Option<PercentileScope>,
    #[serde(default)]
    pub validation_fraction: Option<f64>,
    #[serde(default)]
    pub split_seed: Option<u64>,
}

/// `[search]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    pub searcher: String,
    /// The paper's MAX_EPOCH: rewards to collect.
    pub max_jobs: u32,
    /// The paper's n: jobs in flight.
    pub parallel: u32,
    pub max_failures: u32,
    pub seed: u64,
    /// Searcher settings (`search::settings_of`), e.g. `lr = 0.001` for `ppo-rnn`.
    pub settings: BTreeMap<String, f64>,
    /// An earlier study (by id, in the same store) on the same space to seed the searcher
    /// from.
    pub warm_start: Option<String>,
}

impl Default for SearchSection {
    fn default() -> Self {
        Self {
            searcher: "ppo-rnn".into(),
            max_jobs: 100,
            parallel: 4,
            max_failures: 10,
            seed: 0,
            settings: BTreeMap::new(),
            warm_start: None,
        }
    }
}

/// `[space]`: a preset and/or `[[space.dimension]]` tables. An explicit dimension with a
/// preset dimension's name replaces it (e.g. another learning-rate range).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceSection {
    /// `"paper"` (8 augmentation probabilities + log learning rate), `"paper+magnitudes"` (the
    /// paper's space, then 6 augmentation magnitudes `m_*`) or `"none"`.
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default, rename = "dimension")]
    pub dimensions: Vec<DimensionEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimensionEntry {
    pub name: String,
    pub min: f64,
    pub max: f64,
    /// `"linear"` (default) or `"log"`.
    #[serde(default)]
    pub scale: Scale,
}

/// `[training]`: overrides of `protocol::TrainingConfig`'s defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    #[serde(default)]
    pub channels: Option<Vec<usize>>,
    #[serde(default)]
    pub epochs: Option<u32>,
    #[serde(default)]
    pub patches_per_epoch: Option<u32>,
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// One number (cube) or `[x, y, z]`.
    #[serde(default)]
    pub patch: Option<OneOrThree<usize>>,
    #[serde(default)]
    pub overlap: Option<f64>,
    #[serde(default)]
    pub init_checkpoint: Option<String>,
    #[serde(default)]
    pub dice_ce: Option<bool>,
    /// `"constant"` (default) or `"poly"`.
    #[serde(default)]
    pub lr_schedule: Option<protocol::LrSchedule>,
    /// Validate with mirror test-time augmentation (default false).
    #[serde(default)]
    pub tta: Option<bool>,
}

/// `96` or `[96, 96, 64]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrThree<T> {
    One(T),
    Three([T; 3]),
}

impl<T: Copy> OneOrThree<T> {
    pub fn three(self) -> [T; 3] {
        match self {
            OneOrThree::One(v) => [v, v, v],
            OneOrThree::Three(a) => a,
        }
    }
}

/// Why a study file could not be loaded. Every message names the file, and the key where
/// the problem is one key.
#[derive(Debug, thiserror::Error)]
pub enum StudyFileError {
    #[error("cannot read study file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{}: {}", path.display(), join(errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads and validates a study file; relative dataset paths are resolved against the file's
/// folder. The CLI's `segtune study submit` and the tests use this.
pub fn load_study_file(path: impl AsRef<Path>) -> Result<StudySpec, StudyFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| StudyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_study_file(&text, path)
}

/// [`load_study_file`] on text already read; `path` names the file in errors, gives the
/// default study id (its stem) and the folder relative dataset paths start from.
pub fn parse_study_file(text: &str, path: &Path) -> Result<StudySpec, StudyFileError> {
    let file: StudyFile = toml::from_str(text).map_err(|source| StudyFileError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let default_id = path
        .file_stem()
        .map(|s| protocol::subjects::sanitize_token(&s.to_string_lossy()))
        .unwrap_or_else(|| "study".into());
    let invalid = |errors| StudyFileError::Invalid {
        path: path.to_path_buf(),
        errors,
    };
    let spec = file.into_spec(&default_id, base).map_err(invalid)?;
    validate_spec(&spec).map_err(invalid)?;
    Ok(spec)
}

impl StudyFile {
    /// The spec this file describes (not yet validated beyond the file's own structure).
    pub fn into_spec(self, default_id: &str, base: &Path) -> Result<StudySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let dataset = self.dataset.into_ref(base, &mut errors);
        let space = match self.space {
            None => protocol::strategy::paper_space(),
            Some(s) => s.into_dimensions(&mut errors),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(StudySpec {
            schema: SCHEMA_VERSION,
            study: self.study.unwrap_or_else(|| default_id.to_string()),
            dataset: dataset.expect("no errors means a dataset"),
            space,
            searcher: self.search.searcher,
            searcher_settings: self.search.settings,
            max_jobs: self.search.max_jobs,
            parallel: self.search.parallel,
            max_failures: self.search.max_failures,
            training: self.training.into_config(),
            seed: self.search.seed,
            warm_start: self.search.warm_start,
            pruning: self.pruning.map(PruningSection::into_spec),
        })
    }
}

impl DatasetSection {
    fn into_ref(self, base: &Path, errors: &mut Vec<FieldError>) -> Option<DatasetRef> {
        let given = [
            self.path.is_some(),
            self.store_prefix.is_some(),
            self.id.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            errors.push(FieldError::new(
                "dataset",
                "give exactly one of `path` (an MSD folder), `store_prefix` or `id` \
                 (a preprocessed dataset)",
            ));
            return None;
        }
        let params = self.preprocess.into_params();
        if let Some(id) = self.id {
            return Some(DatasetRef::Id { id });
        }
        let source = if let Some(p) = self.path {
            DatasetSource::Local {
                path: resolve(base, &p).to_string_lossy().into_owned(),
            }
        } else {
            DatasetSource::Store {
                prefix: self.store_prefix.unwrap_or_default(),
            }
        };
        Some(DatasetRef::Source { source, params })
    }
}

impl PreprocessSection {
    fn into_params(self) -> PreprocessParams {
        let d = PreprocessParams::default();
        PreprocessParams {
            target_spacing: self
                .spacing
                .map(OneOrThree::three)
                .unwrap_or(d.target_spacing),
            ct_window: self.ct_window.unwrap_or(d.ct_window),
            mr_percentiles: self.mr_percentiles.unwrap_or(d.mr_percentiles),
            mr_scope: self.mr_scope.unwrap_or(d.mr_scope),
            validation_fraction: self.validation_fraction.unwrap_or(d.validation_fraction),
            split_seed: self.split_seed.unwrap_or(d.split_seed),
        }
    }
}

impl SpaceSection {
    fn into_dimensions(self, errors: &mut Vec<FieldError>) -> Vec<Dimension> {
        let preset = self.preset.as_deref().unwrap_or("none");
        let mut dims: Vec<Dimension> = match protocol::strategy::preset_space(preset) {
            Some(dims) => dims,
            None => {
                let valid: Vec<String> = protocol::strategy::PRESETS
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect();
                errors.push(FieldError::new(
                    "space.preset",
                    format!(
                        "unknown preset {preset:?}; valid presets: {}",
                        valid.join(", ")
                    ),
                ));
                Vec::new()
            }
        };
        for d in self.dimensions {
            let d = Dimension {
                name: d.name,
                min: d.min,
                max: d.max,
                scale: d.scale,
            };
            match dims.iter_mut().find(|x| x.name == d.name) {
                Some(existing) if self.preset.is_some() => *existing = d,
                _ => dims.push(d),
            }
        }
        if dims.is_empty() {
            errors.push(FieldError::new(
                "space",
                "no dimensions: set `preset = \"paper\"` or add [[space.dimension]] tables",
            ));
        }
        dims
    }
}

impl TrainingSection {
    fn into_config(self) -> TrainingConfig {
        let d = TrainingConfig::default();
        TrainingConfig {
            channels: self.channels.unwrap_or(d.channels),
            epochs: self.epochs.unwrap_or(d.epochs),
            patches_per_epoch: self.patches_per_epoch.unwrap_or(d.patches_per_epoch),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            patch: self.patch.map(OneOrThree::three).unwrap_or(d.patch),
            overlap: self.overlap.unwrap_or(d.overlap),
            init_checkpoint: self.init_checkpoint.or(d.init_checkpoint),
            dice_ce: self.dice_ce.unwrap_or(d.dice_ce),
            lr_schedule: self.lr_schedule.unwrap_or(d.lr_schedule),
            tta: self.tta.unwrap_or(d.tta),
        }
    }
}

/// `rel` against `base`, absolute and without `.`/`..` (the folder need not exist yet: the
/// synthetic task may be written after the study file).
fn resolve(base: &Path, rel: &str) -> PathBuf {
    let joined = base.join(rel);
    if let Ok(p) = joined.canonicalize() {
        return p;
    }
    let abs = std::path::absolute(&joined).unwrap_or(joined);
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StudySpec, StudyFileError> {
        parse_study_file(text, Path::new("/studies/My Study.toml"))
    }

    #[test]
    fn minimal_file_gets_the_papers_defaults() {
        let spec = parse("[dataset]\npath = \"../data/synth-ct\"\n").unwrap();
        assert_eq!(spec.study, "my-study");
        assert_eq!(spec.searcher, "ppo-rnn");
        assert_eq!(spec.max_jobs, 100);
        assert_eq!(spec.space.len(), 9);
        assert_eq!(spec.training, TrainingConfig::default());
        assert_eq!(spec.warm_start, None);
        assert_eq!(
            spec.dataset,
            DatasetRef::Source {
                source: DatasetSource::Local {
                    path: "/data/synth-ct".into()
                },
                params: PreprocessParams::default(),
            }
        );
    }

    #[test]
    fn explicit_dimensions_extend_or_replace_the_preset() {
        let spec = parse(
            r#"
            study = "s1"
            [dataset]
            id = "synth-ct-0123"
            [space]
            preset = "paper"
            [[space.dimension]]
            name = "learning_rate"
            min = 1e-5
            max = 1e-3
            scale = "log"
            [[space.dimension]]
            name = "weight_decay"
            min = 0.0
            max = 0.1
            [training]
            patch = 48
            "#,
        )
        .unwrap();
        assert_eq!(spec.space.len(), 10);
        let lr = spec
            .space
            .iter()
            .find(|d| d.name == "learning_rate")
            .unwrap();
        assert_eq!((lr.min, lr.max, lr.scale), (1e-5, 1e-3, Scale::Log));
        assert_eq!(spec.space[9].name, "weight_decay");
        let warm = parse("[dataset]\nid = \"y\"\n[search]\nwarm_start = \"s0\"\n").unwrap();
        assert_eq!(warm.warm_start.as_deref(), Some("s0"));
        assert_eq!(spec.training.patch, [48, 48, 48]);
        assert_eq!(spec.pruning, None);
    }

    #[test]
    fn validation_mirroring_is_off_unless_the_study_asks_for_it() {
        let plain = parse("[dataset]\nid = \"y\"\n").unwrap();
        assert!(!plain.training.tta);
        let mirrored = parse("[dataset]\nid = \"y\"\n[training]\ntta = true\n").unwrap();
        assert!(mirrored.training.tta);
        assert!(parse("[dataset]\nid = \"y\"\n[training]\ntta = 1\n").is_err());
    }

    #[test]
    fn a_pruning_section_keeps_what_it_sets() {
        let spec = parse(
            "[dataset]\nid = \"y\"\n[training]\nepochs = 9\n\
             [pruning]\nkind = \"asha\"\neta = 3\noverlap = 0.0\n",
        )
        .unwrap();
        let p = spec.pruning.unwrap();
        assert_eq!(
            (p.kind.as_str(), p.eta, p.min_epochs),
            ("asha", Some(3), None)
        );
        assert_eq!(p.overlap, Some(0.0));
        assert_eq!(search::prune::report_epochs(&p, 9), vec![1, 3]);
        let none = parse("[dataset]\nid = \"y\"\n[pruning]\n").unwrap();
        assert_eq!(none.pruning.unwrap().kind, "none");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            (
                "[dataset]\npath = \"x\"\n[search]\nsearcher = \"bogus\"\n",
                "search.searcher",
            ),
            (
                "[dataset]\npath = \"x\"\n[search]\nmax_job = 3\n",
                "max_job",
            ),
            ("[dataset]\npath = \"x\"\nid = \"y\"\n", "dataset"),
            ("study = \"a.b\"\n[dataset]\nid = \"y\"\n", "study"),
            (
                "[dataset]\nid = \"y\"\n[search]\nparallel = 0\n",
                "search.parallel",
            ),
            (
                "[dataset]\nid = \"y\"\n[search.settings]\nlr = -1.0\n",
                "search.settings",
            ),
            (
                "[dataset]\nid = \"y\"\n[space]\npreset = \"papr\"\n",
                "space.preset",
            ),
            (
                "[dataset]\nid = \"y\"\n[[space.dimension]]\nname = \"a\"\nmin = 1\nmax = 0\n",
                "space",
            ),
            (
                "[dataset]\nid = \"y\"\n[training]\nepochs = 0\n",
                "training.epochs",
            ),
            (
                "[dataset]\nid = \"y\"\n[search]\nwarm_start = \"a.b\"\n",
                "search.warm_start",
            ),
            (
                "study = \"s\"\n[dataset]\nid = \"y\"\n[search]\nwarm_start = \"s\"\n",
                "search.warm_start: names this study itself",
            ),
            (
                "[dataset]\nid = \"y\"\n[search]\nsearcher = \"fixed\"\nwarm_start = \"e\"\n",
                "search.warm_start: the `fixed` searcher",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"hyperband\"\n",
                "pruning.kind: unknown pruner \"hyperband\"",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"asha\"\neta = 1\n",
                "pruning.eta",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"median\"\neta = 3\n",
                "pruning.eta: only applies to kind = \"asha\"",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"median\"\nreport_at = [0.5, 2.0]\n",
                "pruning.report_at",
            ),
            (
                "[dataset]\nid = \"y\"\n[training]\nepochs = 1\n[pruning]\nkind = \"median\"\n",
                "pruning.report_every_epochs: no validation point",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"asha\"\nrungs = 3\n",
                "rungs",
            ),
            (
                "[dataset]\nid = \"y\"\n[pruning]\nkind = \"asha\"\neta = \"three\"\n",
                "eta",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("/studies/My Study.toml"), "{err}");
            assert!(err.contains(key), "{key} not in {err}");
        }
    }
}
