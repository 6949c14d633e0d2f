//! The engine on a tiny real dataset (synthetic phantoms of about 17³ voxels, preprocessed into
//! a `memory://` store): the dataset cache and fine-tuning from a checkpoint. The slow
//! learning run has its own binary (`tests/learns.rs`).

mod cache;
mod finetune;
mod intermediate;
mod mapped;
mod predict;
mod workers;

use std::collections::BTreeMap;

use engine::JobSpec;
use protocol::{DatasetSource, PreprocessParams, Strategy, TrainingConfig};
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

/// The tests' tiny training: U-Net 4-8, 16³ patches, batch 2, Dice + CE, constant rate.
pub fn tiny_training(epochs: u32, patches_per_epoch: u32) -> TrainingConfig {
    TrainingConfig {
        channels: vec![4, 8],
        epochs,
        patches_per_epoch,
        batch_size: 2,
        patch: [16; 3],
        overlap: 0.25,
        init_checkpoint: None,
        dice_ce: true,
        lr_schedule: Default::default(),
        tta: false,
    }
}

/// A job with every augmentation at probability 0.5 (so the batches depend on each patch's
/// random stream) and learning rate `lr`.
pub fn every_augmentation_at_half(lr: f64) -> JobSpec {
    let mut values: BTreeMap<String, f64> = augment::DIMENSIONS
        .iter()
        .map(|d| (d.to_string(), 0.5))
        .collect();
    values.insert("learning_rate".into(), lr);
    JobSpec::from_strategy(&Strategy {
        values,
        unit: BTreeMap::new(),
    })
    .unwrap()
}
