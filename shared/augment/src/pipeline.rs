//! The strategy's augmentation pipeline: an ordered list of `RandomTransform { p, inner }`.

use std::collections::BTreeMap;

use protocol::strategy::{
    Augmentation, MAGNITUDE_PREFIX, MAGNITUDES, Magnitude, PROBABILITY_PREFIX,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::contrast::{Contrast, ContrastParams};
use crate::flip::{Flip, FlipParams};
use crate::noise::{Noise, NoiseParams};
use crate::rotate::{Rotate90, Rotate90Params};
use crate::scale::{Scale, ScaleParams};
use crate::sharpen::{Sharpen, SharpenParams};
use crate::shift::{Shift, ShiftParams};
use crate::smooth::{Smooth, SmoothParams};
use crate::{AugmentError, Magnitudes, Patch};

/// The order the pipeline applies the augmentations in: spatial transforms first (flip,
/// rotate90: they move voxels and must treat image and label alike), then the intensity
/// transforms in nnU-Net's order (blur/sharpen before noise, then the global intensity maps).
/// Every augmentation of `protocol::strategy` exactly once (a test checks it); the order is
/// the pipeline's own, not the searchers' dimension order.
pub const PIPELINE_ORDER: [Augmentation; 8] = [
    Augmentation::Flip,
    Augmentation::Rotate90,
    Augmentation::Smooth,
    Augmentation::Sharpen,
    Augmentation::Noise,
    Augmentation::Contrast,
    Augmentation::Shift,
    Augmentation::Scale,
];

/// The probability dimension names of [`PIPELINE_ORDER`], in that order.
pub const DIMENSIONS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = PIPELINE_ORDER[i].dimension();
        i += 1;
    }
    names
};

/// One augmentation with its magnitudes. Data, not a trait object: a pipeline can be printed,
/// compared and serialized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    Flip(Flip),
    Rotate90(Rotate90),
    Smooth(Smooth),
    Sharpen(Sharpen),
    Noise(Noise),
    Contrast(Contrast),
    Shift(Shift),
    Scale(Scale),
}

/// The drawn parameters of one firing of a [`Transform`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Params {
    Flip(FlipParams),
    Rotate90(Rotate90Params),
    Smooth(SmoothParams),
    Sharpen(SharpenParams),
    Noise(NoiseParams),
    Contrast(ContrastParams),
    Shift(ShiftParams),
    Scale(ScaleParams),
}

impl Transform {
    /// The transform of an augmentation, with its magnitudes.
    pub fn new(augmentation: Augmentation, m: &Magnitudes) -> Self {
        match augmentation {
            Augmentation::Flip => Self::Flip(Flip {
                axis_prob: m.flip_axis_prob,
            }),
            Augmentation::Rotate90 => Self::Rotate90(Rotate90),
            Augmentation::Smooth => Self::Smooth(Smooth {
                sigma: m.smooth_sigma,
            }),
            Augmentation::Sharpen => Self::Sharpen(Sharpen {
                sigma1: m.sharpen_sigma1,
                sigma2_min: m.sharpen_sigma2_min,
                alpha: m.sharpen_alpha,
            }),
            Augmentation::Noise => Self::Noise(Noise { std: m.noise_std }),
            Augmentation::Contrast => Self::Contrast(Contrast {
                gamma: m.contrast_gamma,
            }),
            Augmentation::Shift => Self::Shift(Shift {
                offset: m.shift_offset,
            }),
            Augmentation::Scale => Self::Scale(Scale {
                factor: m.scale_factor,
            }),
        }
    }

    /// The transform for a `p_*` dimension name, with its magnitudes.
    pub fn for_dimension(dimension: &str, m: &Magnitudes) -> Option<Self> {
        Augmentation::from_dimension(dimension).map(|a| Self::new(a, m))
    }

    /// The augmentation this transform implements.
    pub fn augmentation(&self) -> Augmentation {
        match self {
            Self::Flip(_) => Augmentation::Flip,
            Self::Rotate90(_) => Augmentation::Rotate90,
            Self::Smooth(_) => Augmentation::Smooth,
            Self::Sharpen(_) => Augmentation::Sharpen,
            Self::Noise(_) => Augmentation::Noise,
            Self::Contrast(_) => Augmentation::Contrast,
            Self::Shift(_) => Augmentation::Shift,
            Self::Scale(_) => Augmentation::Scale,
        }
    }

    /// The strategy dimension holding this transform's probability.
    pub fn dimension(&self) -> &'static str {
        self.augmentation().dimension()
    }

    /// True for transforms that move voxels (and so also transform the label).
    pub fn is_spatial(&self) -> bool {
        matches!(self, Self::Flip(_) | Self::Rotate90(_))
    }

    /// Draws this transform's parameters for a patch of `dims`.
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, dims: [usize; 3]) -> Params {
        match self {
            Self::Flip(t) => Params::Flip(t.randomize(rng, dims)),
            Self::Rotate90(t) => Params::Rotate90(t.randomize(rng, dims)),
            Self::Smooth(t) => Params::Smooth(t.randomize(rng, dims)),
            Self::Sharpen(t) => Params::Sharpen(t.randomize(rng, dims)),
            Self::Noise(t) => Params::Noise(t.randomize(rng, dims)),
            Self::Contrast(t) => Params::Contrast(t.randomize(rng, dims)),
            Self::Shift(t) => Params::Shift(t.randomize(rng, dims)),
            Self::Scale(t) => Params::Scale(t.randomize(rng, dims)),
        }
    }

    /// Applies drawn parameters to the patch (image channels and, for spatial transforms, the
    /// label with the same parameters).
    ///
    /// # Panics
    /// When `params` were drawn by a different kind of transform.
    pub fn apply(&self, params: &Params, patch: &mut Patch) {
        match (self, params) {
            (Self::Flip(t), Params::Flip(p)) => t.apply(p, patch),
            (Self::Rotate90(t), Params::Rotate90(p)) => t.apply(p, patch),
            (Self::Smooth(t), Params::Smooth(p)) => t.apply(p, patch),
            (Self::Sharpen(t), Params::Sharpen(p)) => t.apply(p, patch),
            (Self::Noise(t), Params::Noise(p)) => t.apply(p, patch),
            (Self::Contrast(t), Params::Contrast(p)) => t.apply(p, patch),
            (Self::Shift(t), Params::Shift(p)) => t.apply(p, patch),
            (Self::Scale(t), Params::Scale(p)) => t.apply(p, patch),
            (t, p) => panic!("params {p:?} do not belong to transform {}", t.dimension()),
        }
    }
}

impl Params {
    /// The augmentation of the transform that drew these parameters.
    pub fn augmentation(&self) -> Augmentation {
        match self {
            Self::Flip(_) => Augmentation::Flip,
            Self::Rotate90(_) => Augmentation::Rotate90,
            Self::Smooth(_) => Augmentation::Smooth,
            Self::Sharpen(_) => Augmentation::Sharpen,
            Self::Noise(_) => Augmentation::Noise,
            Self::Contrast(_) => Augmentation::Contrast,
            Self::Shift(_) => Augmentation::Shift,
            Self::Scale(_) => Augmentation::Scale,
        }
    }

    /// The strategy dimension of the transform that drew these parameters.
    pub fn dimension(&self) -> &'static str {
        self.augmentation().dimension()
    }
}

/// A transform applied with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomTransform {
    pub p: f64,
    pub inner: Transform,
}

/// What one [`Pipeline::apply`] did: the parameters of every transform that fired, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub fired: Vec<Params>,
}

impl Applied {
    /// Whether the transform of `dimension` (e.g. `"p_flip"`) fired.
    pub fn fired(&self, dimension: &str) -> bool {
        self.fired.iter().any(|p| p.dimension() == dimension)
    }

    /// The dimensions that fired, in pipeline order.
    pub fn dimensions(&self) -> Vec<&'static str> {
        self.fired.iter().map(Params::dimension).collect()
    }
}

/// An ordered list of random transforms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    transforms: Vec<RandomTransform>,
}

impl Pipeline {
    /// A pipeline of the given transforms, in the given order; every `p` must lie in [0, 1].
    pub fn new(transforms: Vec<RandomTransform>) -> Result<Self, AugmentError> {
        for t in &transforms {
            check_probability(t.inner.dimension(), t.p)?;
        }
        Ok(Self { transforms })
    }

    /// The pipeline of a strategy: all eight transforms in [`DIMENSIONS`] order, each with the
    /// probability of its `p_*` value (0 when the strategy does not search it, so it never
    /// fires) and the given `magnitudes`, except where the strategy holds an `m_*` magnitude
    /// (`protocol::strategy::MAGNITUDES`, [`Magnitudes::with_magnitude`]). Other keys
    /// (`learning_rate`, ...) belong to the trainer and are ignored; an unknown `p_*` or `m_*`
    /// key, a probability that is NaN or outside [0, 1], or an invalid magnitude is an error
    /// naming the dimension.
    pub fn from_strategy(
        values: &BTreeMap<String, f64>,
        magnitudes: Magnitudes,
    ) -> Result<Self, AugmentError> {
        magnitudes.validate()?;
        let mut magnitudes = magnitudes;
        for (name, &value) in values {
            if name.starts_with(MAGNITUDE_PREFIX) {
                let Some(m) = Magnitude::from_dimension(name) else {
                    return Err(AugmentError::UnknownDimension {
                        dimension: name.clone(),
                        known: MAGNITUDES.map(|m| m.name).join(", "),
                    });
                };
                magnitudes = magnitudes.with_magnitude(m, value)?;
                continue;
            }
            if !name.starts_with(PROBABILITY_PREFIX) {
                continue;
            }
            if Augmentation::from_dimension(name).is_none() {
                return Err(AugmentError::UnknownDimension {
                    dimension: name.clone(),
                    known: DIMENSIONS.join(", "),
                });
            }
            check_probability(name, value)?;
        }
        let transforms = PIPELINE_ORDER
            .iter()
            .map(|&a| RandomTransform {
                p: values.get(a.dimension()).copied().unwrap_or(0.0),
                inner: Transform::new(a, &magnitudes),
            })
            .collect();
        Ok(Self { transforms })
    }

    pub fn transforms(&self) -> &[RandomTransform] {
        &self.transforms
    }

    /// Runs the pipeline on a patch.
    ///
    /// Every transform consumes the same two draws from `rng` whether or not it fires (a
    /// uniform for the firing, a seed for its own ChaCha8 stream for its parameters), so
    /// changing one probability changes neither which other transforms fire nor their
    /// parameters: two strategies run with one seed differ only where they differ.
    pub fn apply<R: Rng + ?Sized>(&self, patch: &mut Patch, rng: &mut R) -> Applied {
        let mut applied = Applied::default();
        for t in &self.transforms {
            let u: f64 = rng.random();
            let seed: u64 = rng.random();
            if u < t.p {
                let mut sub = ChaCha8Rng::seed_from_u64(seed);
                let params = t.inner.randomize(&mut sub, patch.dims);
                t.inner.apply(&params, patch);
                applied.fired.push(params);
            }
        }
        applied
    }
}

fn check_probability(dimension: &str, p: f64) -> Result<(), AugmentError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(AugmentError::InvalidProbability {
            dimension: dimension.to_string(),
            value: p,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn values(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn from_strategy_orders_all_eight_and_defaults_missing_to_zero() {
        let p = Pipeline::from_strategy(
            &values(&[("p_noise", 0.4), ("learning_rate", 3e-3), ("p_flip", 1.0)]),
            Magnitudes::default(),
        )
        .unwrap();
        let dims: Vec<_> = p.transforms().iter().map(|t| t.inner.dimension()).collect();
        assert_eq!(dims, DIMENSIONS);
        let probs: Vec<_> = p.transforms().iter().map(|t| t.p).collect();
        assert_eq!(probs, [1.0, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0]);
        assert!(p.transforms()[..2].iter().all(|t| t.inner.is_spatial()));
        assert!(p.transforms()[2..].iter().all(|t| !t.inner.is_spatial()));
    }

    #[test]
    fn from_strategy_errors_name_the_dimension() {
        for (bad, value) in [("p_smooth", 1.5), ("p_shift", -0.01), ("p_scale", f64::NAN)] {
            match Pipeline::from_strategy(&values(&[(bad, value)]), Magnitudes::default()) {
                Err(AugmentError::InvalidProbability { dimension, .. }) => {
                    assert_eq!(dimension, bad)
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        match Pipeline::from_strategy(&values(&[("p_elastic", 0.5)]), Magnitudes::default()) {
            Err(AugmentError::UnknownDimension { dimension, .. }) => {
                assert_eq!(dimension, "p_elastic")
            }
            other => panic!("{other:?}"),
        }
        let bad = Magnitudes {
            noise_std: [0.2, 0.1],
            ..Default::default()
        };
        assert!(matches!(
            Pipeline::from_strategy(&values(&[]), bad),
            Err(AugmentError::InvalidMagnitude {
                field: "noise_std",
                ..
            })
        ));
        let err = Pipeline::from_strategy(&values(&[("p_flip", 2.0)]), Magnitudes::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("p_flip"), "{err}");
    }

    #[test]
    fn p_zero_never_fires_p_one_always_fires() {
        let mut v = values(&[]);
        for (i, d) in DIMENSIONS.iter().enumerate() {
            v.insert(d.to_string(), if i % 2 == 0 { 1.0 } else { 0.0 });
        }
        let p = Pipeline::from_strategy(&v, Magnitudes::default()).unwrap();
        let mut r = rng(11);
        let base = noise_patch([6, 6, 5], 1, 0.5, 0.1, 1);
        for _ in 0..300 {
            let mut patch = base.clone();
            let a = p.apply(&mut patch, &mut r);
            let want: Vec<_> = DIMENSIONS.iter().copied().step_by(2).collect();
            assert_eq!(a.dimensions(), want);
        }
    }

    #[test]
    fn p_fires_at_its_rate() {
        let v = values(&[("p_shift", 0.3), ("p_scale", 0.7)]);
        let p = Pipeline::from_strategy(&v, Magnitudes::default()).unwrap();
        let mut r = rng(12);
        let base = Patch::new(vec![0.5; 8], vec![0; 8], [2, 2, 2], 1);
        let trials = 2000;
        let (mut shift, mut scale) = (0, 0);
        for _ in 0..trials {
            let mut patch = base.clone();
            let a = p.apply(&mut patch, &mut r);
            shift += a.fired("p_shift") as usize;
            scale += a.fired("p_scale") as usize;
        }
        // Binomial(2000, 0.3) has sd ≈ 20.5; allow ~4 sd.
        assert!(
            (shift as f64 - 600.0).abs() < 82.0,
            "p_shift fired {shift}/2000"
        );
        assert!(
            (scale as f64 - 1400.0).abs() < 82.0,
            "p_scale fired {scale}/2000"
        );
    }

    #[test]
    fn image_and_label_stay_aligned_through_the_spatial_transforms() {
        let v = values(&[("p_flip", 1.0), ("p_rotate90", 1.0)]);
        let p = Pipeline::from_strategy(&v, Magnitudes::default()).unwrap();
        let mut r = rng(13);
        for (seed, dims) in [(1, [8, 8, 5]), (2, [7, 7, 3]), (3, [9, 6, 4])] {
            for _ in 0..10 {
                let p0 = aligned_patch(dims, 2, seed);
                let mut patch = p0.clone();
                let a = p.apply(&mut patch, &mut r);
                assert_eq!(a.dimensions(), ["p_flip", "p_rotate90"]);
                assert_aligned(&patch);
                assert_eq!(label_counts(&patch.label), label_counts(&p0.label));
                assert_eq!(patch.dims, dims, "pipeline keeps the patch shape");
            }
        }
    }

    #[test]
    fn same_seed_same_result_and_probabilities_do_not_couple() {
        let all: BTreeMap<String, f64> = DIMENSIONS.iter().map(|d| (d.to_string(), 0.5)).collect();
        let p = Pipeline::from_strategy(&all, Magnitudes::default()).unwrap();
        let base = noise_patch([10, 10, 6], 2, 0.5, 0.1, 3);
        let (mut a, mut b) = (base.clone(), base.clone());
        let fa = p.apply(&mut a, &mut rng(99));
        let fb = p.apply(&mut b, &mut rng(99));
        assert_eq!((a, &fa), (b, &fb));

        // Switching p_flip off leaves the other transforms' firings and params as they were.
        let mut fewer = all.clone();
        fewer.insert("p_flip".into(), 0.0);
        let q = Pipeline::from_strategy(&fewer, Magnitudes::default()).unwrap();
        let fq = q.apply(&mut base.clone(), &mut rng(99));
        let rest: Vec<_> = fa
            .fired
            .iter()
            .filter(|p| p.dimension() != "p_flip")
            .collect();
        assert_eq!(fq.fired.iter().collect::<Vec<_>>(), rest);
    }

    /// Protocol's augmentations and the pipeline's transforms are the same set: every name a
    /// searcher can propose builds a transform (which reports that name back), the pipeline
    /// runs each exactly once, and no other name builds one.
    #[test]
    fn the_pipeline_builds_every_protocol_augmentation_and_nothing_else() {
        let mut order = PIPELINE_ORDER.to_vec();
        order.sort();
        let mut all = Augmentation::ALL.to_vec();
        all.sort();
        assert_eq!(
            order, all,
            "PIPELINE_ORDER is a permutation of Augmentation::ALL"
        );

        let m = Magnitudes::default();
        for a in Augmentation::ALL {
            let t = Transform::for_dimension(a.dimension(), &m)
                .unwrap_or_else(|| panic!("no transform for {}", a.dimension()));
            assert_eq!((t.augmentation(), t.dimension()), (a, a.dimension()));
            assert_eq!(t, Transform::new(a, &m));
            let params = t.randomize(&mut rng(1), [4, 4, 4]);
            assert_eq!(params.augmentation(), a);
        }
        for name in [protocol::strategy::LEARNING_RATE, "p_elastic", "flip", ""] {
            assert_eq!(Transform::for_dimension(name, &m), None, "{name}");
        }

        let routine = protocol::strategy::routine_strategy();
        let p = Pipeline::from_strategy(&routine.values, m).unwrap();
        let mut built: Vec<&str> = p.transforms().iter().map(|t| t.inner.dimension()).collect();
        built.sort();
        let mut names = protocol::strategy::AUGMENTATIONS.to_vec();
        names.sort();
        assert_eq!(built, names);
        assert!(p.transforms().iter().all(|t| t.p == 0.5));
    }

    #[test]
    #[should_panic(expected = "do not belong")]
    fn mismatched_params_panic() {
        let mut patch = Patch::new(vec![0.0; 8], vec![0; 8], [2, 2, 2], 1);
        Transform::Rotate90(Rotate90)
            .apply(&Params::Shift(ShiftParams { offset: 0.1 }), &mut patch);
    }

    /// Draws `n` values of each magnitude dimension spread over its searched range (the
    /// searchers' unit coordinates mapped as the search space maps them).
    fn searched_values(m: &Magnitude, n: usize, seed: u64) -> Vec<f64> {
        let mut r = rng(seed);
        let [lo, hi] = m.range;
        (0..n)
            .map(|i| {
                // The two ends, then uniform unit coordinates.
                let u: f64 = match i {
                    0 => 0.0,
                    1 => 1.0,
                    _ => r.random(),
                };
                match m.scale {
                    protocol::Scale::Linear => lo + u * (hi - lo),
                    protocol::Scale::Log => (lo.ln() + u * (hi.ln() - lo.ln())).exp(),
                }
            })
            .collect()
    }

    /// The range a transform with a searchable magnitude draws its scalar from.
    fn magnitude_range(t: &Transform) -> Option<[f64; 2]> {
        match t {
            Transform::Sharpen(s) => Some(s.alpha),
            Transform::Smooth(s) => Some(s.sigma),
            Transform::Noise(s) => Some(s.std),
            Transform::Contrast(s) => Some(s.gamma),
            Transform::Shift(s) => Some(s.offset),
            Transform::Scale(s) => Some(s.factor),
            Transform::Flip(_) | Transform::Rotate90(_) => None,
        }
    }

    /// The drawn scalars that range governs (smoothing: one sigma per axis).
    fn drawn(p: &Params) -> Vec<f64> {
        match p {
            Params::Sharpen(q) => vec![q.alpha],
            Params::Smooth(q) => q.sigma.to_vec(),
            Params::Noise(q) => vec![q.std],
            Params::Contrast(q) => vec![q.gamma],
            Params::Shift(q) => vec![q.offset],
            Params::Scale(q) => vec![q.factor],
            Params::Flip(_) | Params::Rotate90(_) => Vec::new(),
        }
    }

    /// Every searched magnitude reaches its transform with the documented range, the drawn
    /// parameters stay inside it and cover it, and the other transforms keep their defaults.
    #[test]
    fn searched_magnitudes_reach_their_transform_with_the_documented_range() {
        let d = Magnitudes::default();
        let defaults = Pipeline::from_strategy(&values(&[]), d).unwrap();
        for (k, mag) in MAGNITUDES.iter().enumerate() {
            for m in searched_values(mag, 12, 40 + k as u64) {
                let v = values(&[(mag.augmentation.dimension(), 1.0), (mag.name, m)]);
                let p = Pipeline::from_strategy(&v, d).unwrap();
                for (t, t0) in p.transforms().iter().zip(defaults.transforms()) {
                    if t.inner.augmentation() != mag.augmentation {
                        assert_eq!(
                            t.inner,
                            t0.inner,
                            "{} changed {}",
                            mag.name,
                            t.inner.dimension()
                        );
                        continue;
                    }
                    // The range the transform draws from.
                    let range = magnitude_range(&t.inner)
                        .unwrap_or_else(|| panic!("{}: no magnitude in {:?}", mag.name, t.inner));
                    let want = match mag.augmentation {
                        Augmentation::Sharpen => [m / 3.0, m],
                        Augmentation::Smooth => [0.25f64.min(m), m],
                        Augmentation::Noise => [0.0, m],
                        Augmentation::Contrast => [1.0 / (1.0 + m), 1.0 + m],
                        Augmentation::Shift | Augmentation::Scale => [-m, m],
                        a => panic!("{a:?} has no magnitude"),
                    };
                    assert_eq!(range, want, "{} = {m}", mag.name);
                    // Through the pipeline: the transform fires (p = 1) with params in range.
                    let mut r = rng(7);
                    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                    for _ in 0..400 {
                        let mut patch = Patch::new(vec![0.5; 64], vec![0; 64], [4, 4, 4], 1);
                        let a = p.apply(&mut patch, &mut r);
                        let fired: Vec<&Params> = a
                            .fired
                            .iter()
                            .filter(|q| q.augmentation() == mag.augmentation)
                            .collect();
                        assert_eq!(fired.len(), 1, "{}", mag.name);
                        for x in drawn(fired[0]) {
                            assert!(
                                x >= want[0] && x <= want[1],
                                "{} = {m}: drew {x} outside {want:?}",
                                mag.name
                            );
                            lo = lo.min(x);
                            hi = hi.max(x);
                        }
                    }
                    // 400 uniform draws cover all but a few percent of the range at each end.
                    let width = want[1] - want[0];
                    assert!(
                        lo - want[0] < 0.05 * width && want[1] - hi < 0.05 * width,
                        "{} = {m}: drew [{lo}, {hi}] of {want:?}",
                        mag.name
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_or_bad_magnitude_dimensions_are_refused_by_name() {
        let d = Magnitudes::default();
        match Pipeline::from_strategy(&values(&[("m_elastic", 0.5)]), d) {
            Err(AugmentError::UnknownDimension { dimension, known }) => {
                assert_eq!(dimension, "m_elastic");
                assert!(known.contains("m_noise"), "{known}");
            }
            other => panic!("{other:?}"),
        }
        // Flip has no magnitude: its would-be name is unknown too.
        assert!(matches!(
            Pipeline::from_strategy(&values(&[("m_flip", 0.5)]), d),
            Err(AugmentError::UnknownDimension { .. })
        ));
        let err = Pipeline::from_strategy(&values(&[("m_scale", 1.5)]), d).unwrap_err();
        assert!(err.to_string().contains("m_scale"), "{err}");
    }
}
