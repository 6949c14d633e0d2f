//! `TrainInput::init_checkpoint` (the trainer's `TrainingConfig.init_checkpoint`, the CLI's
//! `--init`) with a good checkpoint: training really starts from its weights.

use std::{collections::BTreeMap, collections::HashMap, sync::atomic::AtomicBool};

use engine::{Dataset, JobSpec, TrainInput, TrainOutput};
use protocol::{Strategy, TrainingConfig};
use segmodel::candle_core::{Device, safetensors};

use crate::tiny_dataset;

fn job(lr: f64) -> JobSpec {
    let values = BTreeMap::from([("learning_rate".to_string(), lr)]);
    JobSpec::from_strategy(&Strategy {
        values,
        unit: BTreeMap::new(),
    })
    .unwrap()
}

fn training(epochs: u32) -> TrainingConfig {
    crate::tiny_training(epochs, 8)
}

/// Trains and returns the output and the loss of the first epoch.
fn run(
    data: &Dataset,
    job: &JobSpec,
    training: &TrainingConfig,
    seed: u64,
    init: Option<&[u8]>,
) -> (TrainOutput, f64) {
    let input = TrainInput {
        data,
        job,
        training,
        seed,
        init_checkpoint: init,
        augment_workers: None,
        all_cases: false,
    };
    let mut first = None;
    let out = engine::train(&input, &Device::Cpu, &AtomicBool::new(false), |r| {
        first.get_or_insert(r.loss);
    })
    .expect("training");
    (out, first.unwrap())
}

fn params(checkpoint: &[u8]) -> HashMap<String, Vec<f32>> {
    safetensors::load_buffer(checkpoint, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Largest absolute difference between two parameter sets with the same names and shapes.
fn max_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    a.iter()
        .flat_map(|(k, va)| va.iter().zip(&b[k]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn fine_tuning_starts_from_the_checkpoint_weights() {
    segmodel::init_compute_threads();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = storage::open("memory://").unwrap();
    let data = rt.block_on(async {
        let id = tiny_dataset(&store, 0).await;
        Dataset::load(&store, &id).await.unwrap()
    });

    // A model trained from scratch: its checkpoint is the starting point below.
    let (base, base_first) = run(&data, &job(1e-2), &training(3), 1, None);
    assert!(
        base.final_loss < base_first,
        "the base model did not learn: {base_first} -> {}",
        base.final_loss
    );

    // One epoch at a learning rate so small that Adam (whose steps are about lr in size)
    // cannot move any weight measurably: the result is the initial weights. With the
    // checkpoint they are the checkpoint's; without it, a fresh seeded init.
    let still = job(1e-12);
    let one = training(1);
    let (tuned, tuned_loss) = run(&data, &still, &one, 2, Some(&base.checkpoint));
    let (fresh, fresh_loss) = run(&data, &still, &one, 2, None);
    let (p_base, p_tuned, p_fresh) = (
        params(&base.checkpoint),
        params(&tuned.checkpoint),
        params(&fresh.checkpoint),
    );
    let from_base = max_diff(&p_tuned, &p_base);
    let fresh_from_base = max_diff(&p_fresh, &p_base);
    assert!(
        from_base < 1e-6,
        "fine-tuned weights moved {from_base} from the checkpoint"
    );
    assert!(
        fresh_from_base > 1e-2,
        "a fresh init is as close to the checkpoint ({fresh_from_base}): the test proves nothing"
    );
    // Same seed, so the same patches and augmentations: the checkpoint's weights fit them
    // better than a fresh init does.
    assert!(
        tuned_loss < fresh_loss,
        "loss from the checkpoint {tuned_loss} is not below a fresh model's {fresh_loss}"
    );
    eprintln!(
        "base loss {base_first:.4} -> {:.4}; from checkpoint {tuned_loss:.4} vs fresh \
         {fresh_loss:.4}; weights moved {from_base:.1e} (fresh init differs by \
         {fresh_from_base:.3})",
        base.final_loss
    );
}
