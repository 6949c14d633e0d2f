//! A study as data, before any bus: the study file a user writes ([`load_study_file`]) turned
//! into the `protocol::StudySpec` that travels on `segtune.submissions`, the checks a spec must
//! pass before it runs ([`validate_spec`], every problem a [`FieldError`] named by its
//! study-file key), and the ids and seeds of a study's jobs.
//!
//! The CLI uses it before submitting (so a bad file is refused with the file and key named,
//! not dropped by the controller later) and the controller uses it on every submission, so
//! both accept exactly the same specs.

pub mod file;
#[cfg(test)]
mod preset_strategies;
pub mod retrain;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod validate;

pub use file::{StudyFile, StudyFileError, load_study_file, parse_study_file};
pub use validate::{FieldError, validate_spec};

/// `<study>-<index:04>`: the job's id, subject token and `Nats-Msg-Id`.
pub fn job_id(study: &str, index: u32) -> String {
    format!("{study}-{index:04}")
}

/// The seed of job `index`: the study seed and the index mixed (SplitMix64), so jobs of one
/// study draw different patches and augmentations and a rerun draws the same ones.
pub fn job_seed(study_seed: u64, index: u32) -> u64 {
    let mut z = study_seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
