//! A [`StudySpec`] builder for tests (the `testing` feature; use it as a dev-dependency).
//!
//! A test names what it cares about and takes the rest from a study file that only names its
//! dataset, so a new `StudySpec` field is added here once instead of in every test (the
//! example is not run as a doctest: doctests build the crate without its features):
//!
//! ```ignore
//! let spec = study::testing::StudySpecBuilder::new("s1")
//!     .dataset_id("synth-test-0001")
//!     .searcher("random")
//!     .max_jobs(3)
//!     .parallel(2)
//!     .space_of(&["p_noise", "p_flip", "learning_rate"])
//!     .build();
//! assert_eq!(spec.space.len(), 3);
//! ```

use std::collections::BTreeMap;

use protocol::{DatasetRef, Dimension, SCHEMA_VERSION, StudySpec, TrainingConfig};

use crate::file::SearchSection;

/// Dataset id of a built spec unless [`StudySpecBuilder::dataset_id`] says otherwise.
pub const DATASET: &str = "ds-test";

/// Builds a [`StudySpec`]; every field not set is what a study file with only a `[dataset]`
/// gives (`ppo-rnn`, 100 jobs, 4 in flight, 10 failures tolerated, seed 0, the paper's space,
/// the default training), on the dataset id [`DATASET`].
#[derive(Debug, Clone)]
pub struct StudySpecBuilder {
    spec: StudySpec,
}

impl StudySpecBuilder {
    pub fn new(study: impl Into<String>) -> Self {
        let search = SearchSection::default();
        Self {
            spec: StudySpec {
                schema: SCHEMA_VERSION,
                study: study.into(),
                dataset: DatasetRef::Id { id: DATASET.into() },
                space: protocol::strategy::paper_space(),
                searcher: search.searcher,
                searcher_settings: search.settings,
                max_jobs: search.max_jobs,
                parallel: search.parallel,
                max_failures: search.max_failures,
                training: TrainingConfig::default(),
                seed: search.seed,
                warm_start: search.warm_start,
                pruning: None,
            },
        }
    }

    /// An already preprocessed dataset.
    pub fn dataset_id(self, id: impl Into<String>) -> Self {
        self.dataset(DatasetRef::Id { id: id.into() })
    }

    pub fn dataset(mut self, dataset: DatasetRef) -> Self {
        self.spec.dataset = dataset;
        self
    }

    pub fn space(mut self, space: Vec<Dimension>) -> Self {
        self.spec.space = space;
        self
    }

    /// The named dimensions of the paper's space, in the given order.
    ///
    /// # Panics
    /// On a name the paper's space does not have.
    pub fn space_of(self, names: &[&str]) -> Self {
        let paper = protocol::strategy::paper_space();
        let space = names
            .iter()
            .map(|name| {
                paper
                    .iter()
                    .find(|d| d.name == *name)
                    .unwrap_or_else(|| panic!("{name} is not a dimension of the paper's space"))
                    .clone()
            })
            .collect();
        self.space(space)
    }

    pub fn searcher(mut self, kind: impl Into<String>) -> Self {
        self.spec.searcher = kind.into();
        self
    }

    /// One searcher setting (`search::settings_of`).
    pub fn setting(mut self, name: impl Into<String>, value: f64) -> Self {
        self.spec.searcher_settings.insert(name.into(), value);
        self
    }

    pub fn settings(mut self, settings: BTreeMap<String, f64>) -> Self {
        self.spec.searcher_settings = settings;
        self
    }

    pub fn max_jobs(mut self, max_jobs: u32) -> Self {
        self.spec.max_jobs = max_jobs;
        self
    }

    pub fn parallel(mut self, parallel: u32) -> Self {
        self.spec.parallel = parallel;
        self
    }

    pub fn max_failures(mut self, max_failures: u32) -> Self {
        self.spec.max_failures = max_failures;
        self
    }

    pub fn training(mut self, training: TrainingConfig) -> Self {
        self.spec.training = training;
        self
    }

    /// Seed the searcher from an earlier study.
    /// A `[pruning]` section.
    pub fn pruning(mut self, pruning: protocol::PruningSpec) -> Self {
        self.spec.pruning = Some(pruning);
        self
    }

    pub fn warm_start(mut self, from: impl Into<String>) -> Self {
        self.spec.warm_start = Some(from.into());
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.spec.seed = seed;
        self
    }

    pub fn build(self) -> StudySpec {
        self.spec
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_defaults_are_a_minimal_study_file() {
        let from_file = crate::parse_study_file(
            &format!("[dataset]\nid = \"{DATASET}\"\n"),
            Path::new("/studies/s1.toml"),
        )
        .unwrap();
        let built = StudySpecBuilder::new("s1").build();
        assert_eq!(built, from_file);
        assert!(crate::validate_spec(&built).is_ok());
    }

    #[test]
    fn setters_set_and_space_of_takes_the_papers_dimensions() {
        let spec = StudySpecBuilder::new("s2")
            .dataset_id("ds-2")
            .searcher("hill-discrete")
            .setting("bins", 3.0)
            .max_jobs(7)
            .parallel(3)
            .max_failures(1)
            .seed(9)
            .space_of(&["learning_rate", "p_flip"])
            .build();
        assert_eq!(spec.dataset, DatasetRef::Id { id: "ds-2".into() });
        assert_eq!(
            (spec.searcher.as_str(), spec.searcher_settings["bins"]),
            ("hill-discrete", 3.0)
        );
        assert_eq!(
            (spec.max_jobs, spec.parallel, spec.max_failures, spec.seed),
            (7, 3, 1, 9)
        );
        assert_eq!(
            spec.space,
            [
                protocol::strategy::learning_rate_dimension(),
                protocol::strategy::probability_dimension(protocol::strategy::Augmentation::Flip),
            ]
        );
        assert!(crate::validate_spec(&spec).is_ok());
    }

    #[test]
    #[should_panic(expected = "p_elastic is not a dimension")]
    fn an_unknown_dimension_name_panics() {
        StudySpecBuilder::new("s3").space_of(&["p_elastic"]);
    }
}
