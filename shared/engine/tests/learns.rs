//! It must really learn: on a tiny synthetic CT task (12 cases of about 35³ after resampling to
//! 1 mm; 9 train, 3 validation), training from scratch on the CPU reaches a validation mean Dice
//! ≥ 0.7 within about two minutes on a 2-core machine.
//!
//! The task, the preprocessing and the store are the real ones (`volume::synth`,
//! `dataprep::preprocess`, a `memory://` store); nothing is mocked. The validation cases come
//! from "another scanner" (brighter, blurred, noisier; see `volume::synth`), so the strategy
//! uses the augmentations that cover that shift. The budget is fixed here and documented in the
//! README; `SEGTUNE_LEARN_*` variables let a developer (and `scripts/bench-learn`, the larger
//! budget) change it without editing: EPOCHS, PATCHES, CASES, CHANNELS, LR, PROBS, DICE_CE,
//! SEED, MIN_DICE.

use std::{sync::atomic::AtomicBool, time::Instant};

use engine::{Dataset, JobSpec, TrainInput};
use protocol::{DatasetSource, PreprocessParams, Strategy, TrainingConfig};
use volume::synth::{SynthKind, SynthSpec};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The strategy and budget the test trains with (see the README, "It learns").
pub fn learning_setup() -> (Strategy, TrainingConfig) {
    let lr: f64 = env_or("SEGTUNE_LEARN_LR", 3e-3);
    let mut values = std::collections::BTreeMap::new();
    values.insert("learning_rate".to_string(), lr);
    let probs = std::env::var("SEGTUNE_LEARN_PROBS")
        .unwrap_or_else(|_| "p_flip=0.5,p_shift=0.5,p_scale=0.5,p_smooth=0.5".to_string());
    for kv in probs.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .expect("SEGTUNE_LEARN_PROBS: name=value,...");
        values.insert(k.to_string(), v.parse().expect("a number"));
    }
    let strategy = Strategy {
        values,
        unit: Default::default(),
    };
    let training = TrainingConfig {
        channels: std::env::var("SEGTUNE_LEARN_CHANNELS")
            .map(|v| v.split(',').map(|c| c.parse().expect("channels")).collect())
            .unwrap_or_else(|_| vec![8, 16, 32]),
        epochs: env_or("SEGTUNE_LEARN_EPOCHS", 30),
        patches_per_epoch: env_or("SEGTUNE_LEARN_PATCHES", 16),
        batch_size: 2,
        patch: [32; 3],
        overlap: 0.25,
        init_checkpoint: None,
        dice_ce: env_or("SEGTUNE_LEARN_DICE_CE", true),
        lr_schedule: Default::default(),
        tta: false,
    };
    (strategy, training)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_from_scratch_reaches_dice_0_7_on_a_tiny_ct_task() {
    let min_dice: f64 = env_or("SEGTUNE_LEARN_MIN_DICE", 0.7);
    segmodel::init_compute_threads();
    let dir = tempfile::tempdir().unwrap();
    let cases: usize = env_or("SEGTUNE_LEARN_CASES", 12);
    let spec = SynthSpec::new(SynthKind::CtOrgan, cases, 48, 0);
    volume::synth::write_task(&spec, dir.path()).unwrap();
    let store = storage::open("memory://").unwrap();
    let source = DatasetSource::Local {
        path: dir.path().to_string_lossy().into_owned(),
    };
    let out = dataprep::preprocess(
        &store,
        &source,
        &PreprocessParams::default(),
        &dataprep::Options::default(),
    )
    .await
    .expect("preprocessing the synthetic task");
    let data = Dataset::load(&store, &out.dataset_id).await.unwrap();
    let dims = data.train[0].dims();
    let (strategy, training) = learning_setup();
    let job = JobSpec::from_strategy(&strategy).unwrap();
    let started = Instant::now();
    let input = TrainInput {
        data: &data,
        job: &job,
        training: &training,
        seed: env_or("SEGTUNE_LEARN_SEED", 0),
        init_checkpoint: None,
        augment_workers: None,
        all_cases: false,
    };
    let mut first_loss = None;
    let mut last_loss = f64::NAN;
    let trained = tokio::task::block_in_place(|| {
        engine::train(
            &input,
            &segmodel::candle_core::Device::Cpu,
            &AtomicBool::new(false),
            |r| {
                first_loss.get_or_insert(r.loss);
                last_loss = r.loss;
                eprintln!(
                    "epoch {:>2}/{}  loss {:.4}  {:.1} patches/s",
                    r.epoch, r.epochs, r.loss, r.patches_per_sec
                );
            },
        )
    })
    .expect("training");
    let ev = tokio::task::block_in_place(|| {
        engine::evaluate(
            &data,
            &training,
            &trained.checkpoint,
            &segmodel::candle_core::Device::Cpu,
        )
    })
    .expect("evaluation");
    let seconds = started.elapsed().as_secs_f64();
    for c in &ev.per_case {
        eprintln!(
            "{:14} dice {:.4} per class {:?}",
            c.case, c.mean, c.per_class
        );
    }
    eprintln!(
        "learning: {} train / {} validation cases of {dims:?} voxels, {} epochs x {} patches of \
         32³, channels {:?}: train {:.1} s, eval {:.1} s, total {seconds:.1} s; loss {:.3} -> {:.3}; \
         validation mean Dice {:.4} (per class {:?}; {:.4} before post-processing changed {} \
         voxels)",
        data.train.len(),
        data.validation.len(),
        training.epochs,
        training.patches_per_epoch,
        training.channels,
        trained.seconds,
        ev.seconds,
        first_loss.unwrap(),
        last_loss,
        ev.mean,
        ev.per_class,
        ev.raw_mean,
        ev.postprocessed_voxels
    );
    assert!(
        last_loss < first_loss.unwrap(),
        "the loss did not go down: {first_loss:?} -> {last_loss}"
    );
    assert!(
        ev.mean >= min_dice,
        "validation mean Dice {:.4} < {min_dice} after {} epochs",
        ev.mean,
        training.epochs
    );
}
