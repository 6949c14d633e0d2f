//! Everything that can be checked about a study before it runs.

use protocol::{DatasetRef, DatasetSource, subjects};
use search::SearchSpace;

use crate::job_id;

/// One problem with a study spec, named by its study-file key (`search.parallel`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks everything that can be checked before running a study (the controller before it
/// accepts one, the CLI before it submits one), and returns its search space. All problems
/// are reported, each named by its study-file key.
pub fn validate_spec(spec: &protocol::StudySpec) -> Result<SearchSpace, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| errors.push(FieldError::new(field, message));
    match subjects::check_token("study id", &spec.study) {
        Err(e) => err("study", e.to_string()),
        Ok(()) => {
            let last = job_id(&spec.study, spec.max_jobs.saturating_add(spec.max_failures));
            if subjects::check_token("job id", &last).is_err() {
                err(
                    "study",
                    format!(
                        "{:?} is too long: job ids like {last:?} must stay within 64 characters",
                        spec.study
                    ),
                );
            }
        }
    }
    if let Some(from) = &spec.warm_start {
        if let Err(e) = subjects::check_token("study id", from) {
            err("search.warm_start", e.to_string());
        } else if *from == spec.study {
            err("search.warm_start", "names this study itself".into());
        } else if spec.searcher == "fixed" {
            err(
                "search.warm_start",
                "the `fixed` searcher trains the routine strategy and learns nothing".into(),
            );
        }
    }
    match &spec.dataset {
        DatasetRef::Id { id } => {
            if let Err(e) = subjects::check_token("dataset id", id) {
                err("dataset.id", e.to_string());
            }
        }
        DatasetRef::Source { source, params } => {
            match source {
                DatasetSource::Local { path } if path.trim().is_empty() => {
                    err("dataset.path", "is empty".into())
                }
                DatasetSource::Store { prefix } if prefix.trim_matches('/').is_empty() => {
                    err("dataset.store_prefix", "is empty".into())
                }
                _ => {}
            }
            if !params
                .target_spacing
                .iter()
                .all(|s| s.is_finite() && *s > 0.0)
            {
                err(
                    "dataset.preprocess.spacing",
                    format!("must be > 0 mm, got {:?}", params.target_spacing),
                );
            }
            let [lo, hi] = params.ct_window;
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                err(
                    "dataset.preprocess.ct_window",
                    format!("needs low < high, got [{lo}, {hi}]"),
                );
            }
            let [lo, hi] = params.mr_percentiles;
            if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
                err(
                    "dataset.preprocess.mr_percentiles",
                    format!("needs 0 <= low < high <= 100, got [{lo}, {hi}]"),
                );
            }
            if !(0.0..1.0).contains(&params.validation_fraction) {
                err(
                    "dataset.preprocess.validation_fraction",
                    format!("must be in [0, 1), got {}", params.validation_fraction),
                );
            }
        }
    }
    let space = match SearchSpace::new(spec.space.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            err("space", e.to_string());
            None
        }
    };
    // Builds the searcher once to check its kind and settings (any valid space will do).
    let probe = space
        .clone()
        .unwrap_or_else(SearchSpace::default_augmentation);
    if let Err(e) = search::build(&spec.searcher, &probe, &spec.searcher_settings, spec.seed) {
        let field = match e {
            search::SearchError::UnknownSearcher { .. } => "search.searcher",
            _ => "search.settings",
        };
        err(field, e.to_string());
    }
    if spec.max_jobs == 0 {
        err("search.max_jobs", "must be at least 1".into());
    }
    if spec.parallel == 0 {
        err("search.parallel", "must be at least 1".into());
    }
    let t = &spec.training;
    if t.channels.is_empty() || t.channels.contains(&0) {
        err(
            "training.channels",
            format!("needs at least one level, each > 0; got {:?}", t.channels),
        );
    }
    for (field, v) in [
        ("training.epochs", t.epochs),
        ("training.patches_per_epoch", t.patches_per_epoch),
        ("training.batch_size", t.batch_size),
    ] {
        if v == 0 {
            err(field, "must be at least 1".into());
        }
    }
    if t.patch.contains(&0) {
        err("training.patch", format!("must be > 0, got {:?}", t.patch));
    }
    if !(0.0..1.0).contains(&t.overlap) {
        err(
            "training.overlap",
            format!("must be in [0, 1), got {}", t.overlap),
        );
    }
    if let Some(pruning) = &spec.pruning {
        for e in search::prune::check(pruning, t.epochs.max(1)) {
            err(&e.key, e.message);
        }
    }
    match (errors.is_empty(), space) {
        (true, Some(space)) => Ok(space),
        _ => Err(errors),
    }
}
