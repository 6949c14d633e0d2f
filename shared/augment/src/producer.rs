//! A pool of worker threads that keeps augmented batches ready, so patch sampling and
//! augmentation on the CPU overlap the training step on the device.
//!
//! The pool's size is [`ProducerOptions::workers`], by default every core available to the
//! process. How many a GPU needs: `examples/bench_augment.rs producer` measures augmented
//! patches per CPU-second (figures in the top-level README, "Data must keep up").

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use volume::Volume;

use crate::{Applied, AugmentError, CaseIndex, PatchSampler, Pipeline, TrainingCase};

/// Batches held ready, in order, for the consumer (besides the ones being built).
pub const DEFAULT_PREFETCH: usize = 2;

/// A training case in memory: the image, its label and the label's [`CaseIndex`]. Any
/// [`TrainingCase`] (a mapped one too) can feed a producer.
pub type Case = (Volume<f32>, Volume<u8>, CaseIndex);

/// `batch` patches stacked for the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// 0-based position in the producer's sequence.
    pub index: usize,
    /// `[B, C, Z, Y, X]` row-major, candle's `[B, C, D, H, W]`.
    pub image: Vec<f32>,
    /// `[B, Z, Y, X]` class ids.
    pub label: Vec<u8>,
    /// Patch extents `[x, y, z]`.
    pub dims: [usize; 3],
    pub channels: usize,
    /// B, the number of patches.
    pub batch: usize,
    /// Which case each patch came from.
    pub cases: Vec<usize>,
    /// What the pipeline did to each patch (for logging).
    pub applied: Vec<Applied>,
}

/// How a producer runs. The batches it sends do not depend on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerOptions {
    /// Worker threads, each building whole batches (default: [`default_workers`]).
    pub workers: NonZeroUsize,
    /// Finished batches held ready for the consumer, in order ([`DEFAULT_PREFETCH`]).
    pub prefetch: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

/// The cores available to this process (`std::thread::available_parallelism`: the CPU
/// affinity mask and the cgroup quota of a container), 1 if unknown.
pub fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// [`spawn_producer_with`] with [`ProducerOptions::default`].
pub fn spawn_producer<C: TrainingCase + 'static>(
    cases: Arc<Vec<C>>,
    sampler: PatchSampler,
    pipeline: Pipeline,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<Receiver<Batch>, AugmentError> {
    spawn_producer_with(
        cases,
        sampler,
        pipeline,
        batch_size,
        batches,
        seed,
        ProducerOptions::default(),
    )
}

/// Starts `options.workers` threads that build `batches` batches of `batch_size` augmented
/// patches, and returns the receiver that gets them in index order, then hangs up.
///
/// Patch `i` of batch `b` draws its case (uniformly, with replacement), its crop and its
/// augmentations from its own ChaCha8 stream seeded by `(seed, b, i)`, so the batches are the
/// same for a seed whatever the worker count, the timing or the prefetch depth. Worker `w`
/// builds batches `w, w + W, w + 2W, …` one at a time and hands each over when its turn
/// comes (an ordering thread forwards them in index order into a channel of `prefetch`
/// batches): at most `prefetch + W + 1` finished batches exist at once, and a worker runs at
/// most one batch ahead of its turn. Everything stops as soon as the receiver is dropped.
///
/// Errors (checked here, before any thread starts): no cases, `batch_size == 0`, a case
/// whose image, label and index disagree on dims, or whose label is not single-channel, or
/// cases with different channel counts; and a thread the OS refuses to start.
pub fn spawn_producer_with<C: TrainingCase + 'static>(
    cases: Arc<Vec<C>>,
    sampler: PatchSampler,
    pipeline: Pipeline,
    batch_size: usize,
    batches: usize,
    seed: u64,
    options: ProducerOptions,
) -> Result<Receiver<Batch>, AugmentError> {
    if cases.is_empty() {
        return Err(AugmentError::InvalidConfig {
            what: "cases",
            reason: "no training cases".into(),
        });
    }
    if batch_size == 0 {
        return Err(AugmentError::InvalidConfig {
            what: "batch size",
            reason: "must be at least 1".into(),
        });
    }
    let channels = cases[0].channels();
    for (i, case) in cases.iter().enumerate() {
        let mismatch = |reason: String| AugmentError::CaseMismatch { case: i, reason };
        case.check().map_err(mismatch)?;
        if case.channels() != channels {
            return Err(mismatch(format!(
                "{} image channels, case 0 has {channels}",
                case.channels()
            )));
        }
    }

    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map(drop)
            .map_err(|e| AugmentError::InvalidConfig {
                what: "producer thread",
                reason: e.to_string(),
            })
    };
    // No more workers than batches (and at least one, so the ordering loop has a lane).
    let workers = options.workers.get().min(batches).max(1);
    let pipeline = Arc::new(pipeline);
    let mut lanes = Vec::with_capacity(workers);
    for w in 0..workers {
        // Rendezvous: a finished batch waits in its worker until its turn.
        let (lane, from_worker): (SyncSender<Batch>, _) = sync_channel(0);
        let (cases, pipeline) = (cases.clone(), pipeline.clone());
        spawn(
            format!("augment-{w}"),
            Box::new(move || {
                for b in (w..batches).step_by(workers) {
                    let batch =
                        build_batch(&cases, &sampler, &pipeline, batch_size, seed, b, channels);
                    if lane.send(batch).is_err() {
                        break; // the ordering thread stopped: the consumer hung up
                    }
                }
            }),
        )?;
        lanes.push(from_worker);
    }
    let (tx, rx) = sync_channel(options.prefetch);
    spawn(
        "augment-order".into(),
        Box::new(move || {
            for b in 0..batches {
                // A worker that panicked hangs up its lane: stop, and the consumer sees the
                // channel close early.
                let Ok(batch) = lanes[b % workers].recv() else {
                    break;
                };
                if tx.send(batch).is_err() {
                    break; // the consumer hung up; dropping the lanes stops the workers
                }
            }
        }),
    )?;
    Ok(rx)
}

/// SplitMix64's finalizer: decorrelates the seeds of neighbouring (batch, item) pairs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG of patch `item` of batch `batch`.
pub(crate) fn patch_rng(seed: u64, batch: usize, item: usize) -> ChaCha8Rng {
    let s = mix(mix(mix(seed) ^ batch as u64) ^ item as u64);
    ChaCha8Rng::seed_from_u64(s)
}

fn build_batch<C: TrainingCase>(
    cases: &[C],
    sampler: &PatchSampler,
    pipeline: &Pipeline,
    batch_size: usize,
    seed: u64,
    b: usize,
    channels: usize,
) -> Batch {
    use rand::Rng;
    // One worker builds the whole batch: the pool's threads are the parallelism.
    let items: Vec<_> = (0..batch_size)
        .map(|i| {
            let mut rng = patch_rng(seed, b, i);
            let case = rng.random_range(0..cases.len());
            let mut patch = sampler.sample_case(&cases[case], &mut rng);
            let applied = pipeline.apply(&mut patch, &mut rng);
            (case, patch, applied)
        })
        .collect();
    let dims = items[0].1.dims;
    let n = dims[0] * dims[1] * dims[2];
    let mut image = Vec::with_capacity(batch_size * channels * n);
    let mut label = Vec::with_capacity(batch_size * n);
    let mut case_ids = Vec::with_capacity(batch_size);
    let mut applied = Vec::with_capacity(batch_size);
    for (case, patch, a) in items {
        // The pipeline keeps the shape (rotate90 only quarter-turns square x–y patches).
        assert_eq!(patch.dims, dims, "patches of one batch differ in shape");
        image.extend_from_slice(&patch.image);
        label.extend_from_slice(&patch.label);
        case_ids.push(case);
        applied.push(a);
    }
    Batch {
        index: b,
        image,
        label,
        dims,
        channels,
        batch: batch_size,
        cases: case_ids,
        applied,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{DIMENSIONS, Magnitudes};
    use volume::Geometry;

    fn cases(n: usize) -> Arc<Vec<Case>> {
        let g = Geometry::identity([1.0; 3]);
        Arc::new(
            (0..n)
                .map(|c| {
                    let dims = [20 + c, 18, 14 - c];
                    let v = dims[0] * dims[1] * dims[2];
                    let image: Vec<f32> = (0..2 * v)
                        .map(|i| ((i * 7 + c) % 13) as f32 / 13.0)
                        .collect();
                    let label: Vec<u8> = (0..v).map(|i| ((i / 37 + c) % 5 == 0) as u8).collect();
                    let label = Volume::new(label, dims, 1, g);
                    let index = CaseIndex::new(&label);
                    (Volume::new(image, dims, 2, g), label, index)
                })
                .collect(),
        )
    }

    fn pipeline() -> Pipeline {
        let v: BTreeMap<String, f64> = DIMENSIONS.iter().map(|d| (d.to_string(), 0.5)).collect();
        Pipeline::from_strategy(&v, Magnitudes::default()).unwrap()
    }

    fn options(workers: usize, prefetch: usize) -> ProducerOptions {
        ProducerOptions {
            workers: NonZeroUsize::new(workers).unwrap(),
            prefetch,
        }
    }

    #[test]
    fn same_seed_gives_identical_batches() {
        let cs = cases(3);
        let sampler = PatchSampler::new([8, 8, 8], crate::DEFAULT_FG_FRACTION).unwrap();
        let run = |seed, workers, prefetch| -> Vec<Batch> {
            let o = options(workers, prefetch);
            spawn_producer_with(cs.clone(), sampler, pipeline(), 4, 5, seed, o)
                .unwrap()
                .iter()
                .collect()
        };
        let a = run(42, 1, 2);
        assert_eq!(a.len(), 5);
        for (i, b) in a.iter().enumerate() {
            assert_eq!(b.index, i);
            assert_eq!(b.batch, 4);
            assert_eq!(b.channels, 2);
            assert_eq!(b.dims, [8, 8, 8]);
            assert_eq!(b.image.len(), 4 * 2 * 512);
            assert_eq!(b.label.len(), 4 * 512);
            assert_eq!(b.applied.len(), 4);
        }
        assert_eq!(
            a,
            run(42, 3, 2),
            "the worker count does not change the content"
        );
        assert_eq!(a, run(42, 2, 0), "nor does the prefetch depth");
        assert_eq!(a, run(42, 8, 5), "more workers than batches");
        assert_ne!(a, run(43, 1, 2));
        assert_ne!(a, run(43, 3, 2));
        // Batches differ from each other, and the pipeline did fire.
        assert_ne!(a[0].image, a[1].image);
        assert!(
            a.iter()
                .flat_map(|b| &b.applied)
                .any(|x| !x.fired.is_empty())
        );
    }

    /// Three workers finish their batches in whatever order their timing gives; the consumer
    /// still gets 0, 1, 2, … (a pool that forwarded batches as they finish would fail this).
    #[test]
    fn batches_arrive_in_index_order_whatever_finishes_first() {
        let sampler = PatchSampler::new([8, 8, 8], 0.3).unwrap();
        let got: Vec<usize> =
            spawn_producer_with(cases(2), sampler, pipeline(), 3, 10, 5, options(3, 0))
                .unwrap()
                .iter()
                .map(|b| b.index)
                .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_the_receiver_stops_every_thread() {
        let sampler = PatchSampler::new([8, 8, 8], 0.3).unwrap();
        let cs = cases(1);
        let rx = spawn_producer_with(
            cs.clone(),
            sampler,
            pipeline(),
            2,
            usize::MAX,
            1,
            options(3, 2),
        )
        .unwrap();
        let first = rx.recv().unwrap();
        assert_eq!(first.index, 0);
        assert!(Arc::strong_count(&cs) > 1, "the workers hold the cases");
        drop(rx);
        // Each worker's next hand-over fails once the ordering thread is gone; as they exit
        // they drop their clones of the cases.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while Arc::strong_count(&cs) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} workers still hold the cases",
                Arc::strong_count(&cs) - 1
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn default_workers_are_the_available_cores() {
        assert_eq!(
            ProducerOptions::default().workers,
            std::thread::available_parallelism().unwrap()
        );
        assert_eq!(ProducerOptions::default().prefetch, DEFAULT_PREFETCH);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let sampler = PatchSampler::new([8, 8, 8], 0.3).unwrap();
        assert!(
            spawn_producer(Arc::new(Vec::<Case>::new()), sampler, pipeline(), 2, 1, 0).is_err()
        );
        assert!(spawn_producer(cases(1), sampler, pipeline(), 0, 1, 0).is_err());
        let mut cs = (*cases(2)).clone();
        cs[1].2 = cs[0].2.clone(); // index of another case
        match spawn_producer(Arc::new(cs), sampler, pipeline(), 2, 1, 0) {
            Err(AugmentError::CaseMismatch { case: 1, .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
