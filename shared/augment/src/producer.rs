//! A background thread that keeps augmented batches ready, so patch sampling and augmentation
//! on the CPU overlap the training step on the device.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use volume::Volume;

use crate::{Applied, AugmentError, CaseIndex, PatchSampler, Pipeline};

/// Batches held ready in the channel by [`spawn_producer`] (besides the one being built).
pub const DEFAULT_PREFETCH: usize = 2;

/// A training case: the image, its label and the label's [`CaseIndex`].
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

/// [`spawn_producer_with_prefetch`] with [`DEFAULT_PREFETCH`].
pub fn spawn_producer(
    cases: Arc<Vec<Case>>,
    sampler: PatchSampler,
    pipeline: Pipeline,
    batch_size: usize,
    batches: usize,
    seed: u64,
) -> Result<Receiver<Batch>, AugmentError> {
    spawn_producer_with_prefetch(
        cases,
        sampler,
        pipeline,
        batch_size,
        batches,
        seed,
        DEFAULT_PREFETCH,
    )
}

/// Starts a thread that sends `batches` batches of `batch_size` augmented patches, then hangs up.
///
/// Patch `i` of batch `b` draws its case (uniformly, with replacement), its crop and its
/// augmentations from its own ChaCha8 stream seeded by `(seed, b, i)`, so the batches are the
/// same for a seed whatever the timing, the thread count or the prefetch depth; the patches of a
/// batch are built in parallel on rayon's pool. The channel holds `prefetch` batches; the
/// thread blocks when it is full and stops as soon as the receiver is dropped.
///
/// Errors (checked here, before the thread starts): no cases, `batch_size == 0`, a case whose
/// image, label and index disagree on dims, or whose label is not single-channel, or cases
/// with different channel counts.
pub fn spawn_producer_with_prefetch(
    cases: Arc<Vec<Case>>,
    sampler: PatchSampler,
    pipeline: Pipeline,
    batch_size: usize,
    batches: usize,
    seed: u64,
    prefetch: usize,
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
    let channels = cases[0].0.channels;
    for (i, (image, label, index)) in cases.iter().enumerate() {
        let mismatch = |reason: String| AugmentError::CaseMismatch { case: i, reason };
        if image.dims != label.dims || index.dims() != label.dims {
            return Err(mismatch(format!(
                "image dims {:?}, label dims {:?}, index dims {:?}",
                image.dims,
                label.dims,
                index.dims()
            )));
        }
        if label.channels != 1 {
            return Err(mismatch(format!("label has {} channels", label.channels)));
        }
        if image.channels != channels {
            return Err(mismatch(format!(
                "{} image channels, case 0 has {channels}",
                image.channels
            )));
        }
    }

    let (tx, rx) = sync_channel(prefetch);
    std::thread::Builder::new()
        .name("augment-producer".into())
        .spawn(move || {
            for b in 0..batches {
                let batch = build_batch(&cases, &sampler, &pipeline, batch_size, seed, b, channels);
                if tx.send(batch).is_err() {
                    break; // the trainer dropped the receiver
                }
            }
        })
        .map_err(|e| AugmentError::InvalidConfig {
            what: "producer thread",
            reason: e.to_string(),
        })?;
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

fn build_batch(
    cases: &[Case],
    sampler: &PatchSampler,
    pipeline: &Pipeline,
    batch_size: usize,
    seed: u64,
    b: usize,
    channels: usize,
) -> Batch {
    use rand::Rng;
    let items: Vec<_> = (0..batch_size)
        .into_par_iter()
        .map(|i| {
            let mut rng = patch_rng(seed, b, i);
            let case = rng.random_range(0..cases.len());
            let (image, label, index) = &cases[case];
            let mut patch = sampler.sample(image, label, index, &mut rng);
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

    #[test]
    fn same_seed_gives_identical_batches() {
        let cs = cases(3);
        let sampler = PatchSampler::new([8, 8, 8], crate::DEFAULT_FG_FRACTION).unwrap();
        let run = |seed, prefetch| -> Vec<Batch> {
            spawn_producer_with_prefetch(cs.clone(), sampler, pipeline(), 4, 5, seed, prefetch)
                .unwrap()
                .iter()
                .collect()
        };
        let a = run(42, 2);
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
        assert_eq!(a, run(42, 0), "prefetch depth does not change the content");
        assert_eq!(a, run(42, 5));
        assert_ne!(a, run(43, 2));
        // Batches differ from each other, and the pipeline did fire.
        assert_ne!(a[0].image, a[1].image);
        assert!(
            a.iter()
                .flat_map(|b| &b.applied)
                .any(|x| !x.fired.is_empty())
        );
    }

    #[test]
    fn dropping_the_receiver_stops_the_producer() {
        let sampler = PatchSampler::new([8, 8, 8], 0.3).unwrap();
        let rx = spawn_producer(cases(1), sampler, pipeline(), 2, usize::MAX, 1).unwrap();
        let first = rx.recv().unwrap();
        assert_eq!(first.index, 0);
        drop(rx); // the thread's next send fails and it exits; the test would hang otherwise
    }

    #[test]
    fn bad_inputs_are_errors() {
        let sampler = PatchSampler::new([8, 8, 8], 0.3).unwrap();
        assert!(spawn_producer(Arc::new(vec![]), sampler, pipeline(), 2, 1, 0).is_err());
        assert!(spawn_producer(cases(1), sampler, pipeline(), 0, 1, 0).is_err());
        let mut cs = (*cases(2)).clone();
        cs[1].2 = cs[0].2.clone(); // index of another case
        match spawn_producer(Arc::new(cs), sampler, pipeline(), 2, 1, 0) {
            Err(AugmentError::CaseMismatch { case: 1, .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
