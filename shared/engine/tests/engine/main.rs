//! The engine on a tiny real dataset (synthetic phantoms of about 17³ voxels, preprocessed into
//! a `memory://` store): the dataset cache and fine-tuning from a checkpoint. The slow
//! learning run has its own binary (`tests/learns.rs`).

mod cache;
mod finetune;
mod intermediate;
mod mapped;
mod predict;
mod workers;

use protocol::{DatasetSource, PreprocessParams};
use storage::DynStore;
use volume::synth::{SynthKind, SynthSpec};

/// Writes a 3-case CT phantom task (2 train, 1 validation; 24 voxels in-plane) with `seed`,
/// preprocesses it into `store` and returns its dataset id.
pub async fn tiny_dataset(store: &DynStore, seed: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::new(SynthKind::CtOrgan, 3, 24, seed);
    volume::synth::write_task(&spec, dir.path()).unwrap();
    let source = DatasetSource::Local {
        path: dir.path().to_string_lossy().into_owned(),
    };
    dataprep::preprocess(
        store,
        &source,
        &PreprocessParams::default(),
        &dataprep::Options::default(),
    )
    .await
    .expect("preprocessing the phantom task")
    .dataset_id
}
