//! Training-time data path of a segtune trainer: foreground-oversampled random patches
//! ([`PatchSampler`], [`CaseIndex`]), the searched augmentations ([`Pipeline`]) and a
//! pool of worker threads that keeps augmented batches ready, in order ([`spawn_producer`]).
//!
//! Augmentations are data, not subclasses (nnU-Net `get_training_transforms`, MONAI
//! `RandomizableTransform`): a [`Pipeline`] is an ordered list of [`RandomTransform`]`{ p, inner }`
//! whose `p` come from the strategy (one per `protocol::strategy::Augmentation`, applied in
//! [`PIPELINE_ORDER`]: `p_flip`, `p_rotate90`, `p_smooth`, `p_sharpen`, `p_noise`,
//! `p_contrast`, `p_shift`, `p_scale`) and whose magnitude ranges come from [`Magnitudes`].
//! Every transform splits `randomize(rng, dims) -> Params` from `apply(&Params, &mut Patch)`, so
//! the image channels and the label of a patch always get the same spatial parameters, and the
//! drawn parameters can be logged ([`Applied`]).
//!
//! Layout: a [`Patch`] is `[C, Z, Y, X]` row-major (x fastest, channel-major), the layout of
//! [`volume::Volume`] and candle's `[C, D, H, W]`; `dims` is always `[x, y, z]`.
//!
//! Determinism: everything random is drawn from an RNG the caller seeds (the job's `seed`);
//! the producer derives one RNG per patch from `(seed, batch, item)`, so the batches are the same
//! for a seed whatever the thread timing and the number of worker threads.

mod error;
mod gaussian;
mod magnitudes;
mod patch;
mod pipeline;
mod producer;
mod sampler;
#[cfg(test)]
mod testutil;

pub mod contrast;
pub mod flip;
pub mod noise;
pub mod rotate;
pub mod scale;
pub mod sharpen;
pub mod shift;
pub mod smooth;

pub use error::AugmentError;
pub use gaussian::{gaussian_blur, gaussian_kernel};
pub use magnitudes::Magnitudes;
pub use patch::Patch;
pub use pipeline::{
    Applied, DIMENSIONS, PIPELINE_ORDER, Params, Pipeline, RandomTransform, Transform,
};
pub use producer::{
    Batch, Case, DEFAULT_PREFETCH, ProducerOptions, default_workers, spawn_producer,
    spawn_producer_with,
};
pub use sampler::{
    CaseIndex, DEFAULT_FG_FRACTION, MAX_FG_PER_CLASS, PatchSampler, TrainingCase, VolumeCase,
};

/// Uniform draw from the closed range `[lo, hi]` (`lo` when the range is a point).
///
/// Written out instead of `random_range` so a degenerate range is allowed and the stream of
/// draws does not depend on rand's sampler internals.
pub(crate) fn uniform<R: rand::Rng + ?Sized>(rng: &mut R, [lo, hi]: [f64; 2]) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}
