//! Intermediate validation scores the weights with the evaluator's own code, and a stop ends
//! the training at the next step boundary with the checkpoint of the weights reached.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
};

use engine::{Dataset, IntermediateDice, JobSpec, TrainInput, Validation};
use protocol::{Strategy, TrainingConfig, ValidationPlan};
use segmodel::candle_core::Device;

use crate::tiny_dataset;

#[test]
fn the_intermediate_dice_is_the_evaluators_and_a_stop_keeps_those_weights() {
    segmodel::init_compute_threads();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = storage::open("memory://").unwrap();
    let data = rt.block_on(async {
        let id = tiny_dataset(&store, 3).await;
        Dataset::load(&store, &id).await.unwrap()
    });
    let job = JobSpec::from_strategy(&Strategy {
        values: BTreeMap::from([("learning_rate".to_string(), 1e-2)]),
        unit: BTreeMap::new(),
    })
    .unwrap();
    let training = crate::tiny_training(4, 4);
    let input = TrainInput {
        data: &data,
        job: &job,
        training: &training,
        seed: 5,
        init_checkpoint: None,
        augment_workers: None,
        all_cases: false,
    };
    let plan = ValidationPlan {
        epochs: vec![1, 2],
        overlap: 0.0,
    };
    let stop = AtomicBool::new(false);
    let mut reports: Vec<IntermediateDice> = Vec::new();
    let mut epochs_seen = Vec::new();
    let mut on_report = |d: IntermediateDice| {
        // The pruner's verdict after epoch 2 arrives before the next step.
        if d.epoch == 2 {
            stop.store(true, Ordering::Relaxed);
        }
        reports.push(d);
    };
    let out = engine::train_validated(
        &input,
        &Device::Cpu,
        &AtomicBool::new(false),
        Some(Validation {
            plan: &plan,
            stop: &stop,
            on_report: &mut on_report,
        }),
        |r| epochs_seen.push(r.epoch),
    )
    .unwrap();
    assert_eq!(out.stopped_after, Some(2));
    assert_eq!(epochs_seen, vec![1, 2], "no step of epoch 3 was reported");
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.epoch, r.step))
            .collect::<Vec<_>>(),
        vec![(1, 2), (2, 4)]
    );
    for r in &reports {
        assert!((0.0..=1.0).contains(&r.dice), "{r:?}");
        assert!(r.train_seconds >= r.validation_seconds && r.validation_seconds > 0.0);
    }
    // The checkpoint returned is the weights scored at epoch 2; the evaluator's function on
    // it, with the plan's overlap, gives exactly the reported Dice.
    let scored = TrainingConfig {
        overlap: plan.overlap,
        ..training.clone()
    };
    let eval = engine::evaluate(&data, &scored, &out.checkpoint, &Device::Cpu).unwrap();
    assert_eq!(eval.mean, reports[1].dice);
    assert_eq!(eval.per_class, reports[1].per_class);

    // Without a stop the same run trains every epoch and validates only at the plan's.
    let no_stop = AtomicBool::new(false);
    let mut count = 0;
    let mut on_report = |_: IntermediateDice| count += 1;
    let full = engine::train_validated(
        &input,
        &Device::Cpu,
        &AtomicBool::new(false),
        Some(Validation {
            plan: &plan,
            stop: &no_stop,
            on_report: &mut on_report,
        }),
        |_| {},
    )
    .unwrap();
    assert_eq!(full.stopped_after, None);
    assert_eq!(count, 2);
}
