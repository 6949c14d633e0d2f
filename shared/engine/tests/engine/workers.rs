//! `TrainInput::augment_workers` (the trainer's `--augment-workers`): how many threads prepare
//! the batches changes how fast they come, never what is trained.

use std::{num::NonZeroUsize, sync::atomic::AtomicBool};

use engine::{Dataset, EpochReport, TrainInput};
use segmodel::candle_core::Device;

use crate::tiny_dataset;

#[test]
fn the_worker_count_does_not_change_the_trained_model() {
    segmodel::init_compute_threads();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = storage::open("memory://").unwrap();
    let data = rt.block_on(async {
        let id = tiny_dataset(&store, 3).await;
        Dataset::load(&store, &id).await.unwrap()
    });
    let job = crate::every_augmentation_at_half(1e-2);
    let training = crate::tiny_training(2, 6);
    let run = |workers: usize| -> (Vec<u8>, Vec<EpochReport>) {
        let input = TrainInput {
            data: &data,
            job: &job,
            training: &training,
            seed: 5,
            init_checkpoint: None,
            augment_workers: NonZeroUsize::new(workers),
            all_cases: false,
        };
        let mut reports = Vec::new();
        let out = engine::train(&input, &Device::Cpu, &AtomicBool::new(false), |r| {
            reports.push(r)
        })
        .expect("training");
        (out.checkpoint, reports)
    };
    let (one, reports) = run(1);
    let (three, _) = run(3);
    assert!(
        one == three,
        "1 and 3 augmentation workers trained different weights"
    );
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(
            (0.0..=1.0).contains(&r.data_wait_fraction),
            "data_wait_fraction {} of epoch {}",
            r.data_wait_fraction,
            r.epoch
        );
    }
}
