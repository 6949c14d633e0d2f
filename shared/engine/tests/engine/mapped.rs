//! A dataset larger than the memory budget is mapped from the host's case cache: a job on it
//! trains and is scored, exactly as the same job on the dataset in memory.

use std::sync::atomic::AtomicBool;

use engine::{DataOptions, Dataset, DatasetCache, Residence, TrainInput};
use segmodel::candle_core::Device;

use crate::tiny_dataset;

#[test]
fn a_job_on_a_dataset_bigger_than_the_memory_budget_trains_from_mapped_cases_and_is_scored() {
    segmodel::init_compute_threads();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = storage::open("memory://").unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let id = rt.block_on(tiny_dataset(&store, 4));
    let manifest = rt.block_on(dataprep::load_manifest(&store, &id)).unwrap();
    let bytes = Dataset::decoded_bytes(&manifest);
    // A budget one byte short of the dataset maps it; one that holds it keeps it in memory;
    // without a cache everything is in memory.
    let mapped_opts = DataOptions::with_cache(cache_dir.path(), 1 << 30, bytes - 1);
    let memory_opts = DataOptions::with_cache(cache_dir.path(), 1 << 30, bytes);
    assert_eq!(
        Dataset::residence(&manifest, &mapped_opts),
        Residence::Mapped
    );
    assert_eq!(
        Dataset::residence(&manifest, &memory_opts),
        Residence::Memory
    );
    assert_eq!(
        Dataset::residence(&manifest, &DataOptions::default()),
        Residence::Memory
    );
    let (mapped, memory) = rt.block_on(async {
        let mapped = DatasetCache::new(mapped_opts.clone())
            .get(&store, &id)
            .await
            .unwrap();
        let memory = Dataset::load_with(&store, &id, &memory_opts).await.unwrap();
        (mapped, memory)
    });
    assert!(mapped.is_mapped() && !memory.is_mapped());
    let cache = mapped_opts.cache.as_ref().unwrap();
    assert_eq!(
        cache
            .stats()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed),
        2 * manifest.cases.len() as u64,
        "each case fetched into the cache once"
    );

    let job = crate::every_augmentation_at_half(1e-2);
    let training = crate::tiny_training(2, 4);
    let run = |data: &Dataset| {
        let input = TrainInput {
            data,
            job: &job,
            training: &training,
            seed: 9,
            init_checkpoint: None,
            augment_workers: None,
            all_cases: false,
        };
        let out =
            engine::train(&input, &Device::Cpu, &AtomicBool::new(false), |_| {}).expect("training");
        let eval =
            engine::evaluate(data, &training, &out.checkpoint, &Device::Cpu).expect("scoring");
        (out.checkpoint, eval)
    };
    let (ckpt_mapped, eval_mapped) = run(&mapped);
    let (ckpt_memory, eval_memory) = run(&memory);
    assert!(eval_mapped.mean.is_finite());
    assert_eq!(eval_mapped.per_case.len(), memory.validation.len());
    // The same patches, the same weights, the same Dice.
    assert!(
        ckpt_mapped == ckpt_memory,
        "mapped and in-memory trained differently"
    );
    assert_eq!(eval_mapped.mean, eval_memory.mean);
    assert_eq!(
        engine::bundle::min_component_sizes(&mapped),
        engine::bundle::min_component_sizes(&memory)
    );
}
