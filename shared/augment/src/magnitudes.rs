use serde::{Deserialize, Serialize};

use protocol::strategy::{Augmentation, Magnitude};

use crate::AugmentError;

/// How strong each augmentation is when it fires. The paper's space searches only the
/// probabilities and trains with these defaults; the `paper+magnitudes` preset also searches one
/// number per augmentation (`protocol::strategy::MAGNITUDES`), which
/// [`Magnitudes::with_magnitude`] turns into that augmentation's range here.
///
/// Defaults and where they come from (intensities are in the preprocessor's normalized [0, 1]
/// units; sigmas are in voxels, i.e. mm after resampling to 1 mm):
///
/// | field | default | source |
/// |---|---|---|
/// | `sharpen_sigma1` | [0.5, 1.0] per axis | MONAI `RandGaussianSharpen` `sigma1_x/y/z` |
/// | `sharpen_sigma2_min` | 0.5: σ2 ~ U(0.5, σ1) per axis | MONAI `RandGaussianSharpen` `sigma2_x/y/z = 0.5` |
/// | `sharpen_alpha` | [10, 30] | MONAI `RandGaussianSharpen` `alpha` |
/// | `smooth_sigma` | [0.25, 1.5] per axis | MONAI `RandGaussianSmooth` `sigma_x/y/z` |
/// | `noise_std` | σ ~ U(0, 0.1), mean 0 | MONAI `RandGaussianNoise` (`std = 0.1`, std drawn from U(0, std)) |
/// | `contrast_gamma` | [0.7, 1.5] | nnU-Net `GammaTransform` `gamma_range` (MONAI's (0.5, 4.5) is far harsher) |
/// | `shift_offset` | [-0.1, 0.1] | MONAI `RandShiftIntensity(offsets=0.1)`, as in MONAI's tutorials |
/// | `scale_factor` | [-0.1, 0.1], x·(1+f) | MONAI `RandScaleIntensity(factors=0.1)` |
/// | `flip_axis_prob` | 0.5 per axis | nnU-Net `MirrorTransform` (each axis mirrored with p 0.5) |
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Magnitudes {
    pub sharpen_sigma1: [f64; 2],
    pub sharpen_sigma2_min: f64,
    pub sharpen_alpha: [f64; 2],
    pub smooth_sigma: [f64; 2],
    pub noise_std: [f64; 2],
    pub contrast_gamma: [f64; 2],
    pub shift_offset: [f64; 2],
    pub scale_factor: [f64; 2],
    pub flip_axis_prob: f64,
}

impl Default for Magnitudes {
    fn default() -> Self {
        Self {
            sharpen_sigma1: [0.5, 1.0],
            sharpen_sigma2_min: 0.5,
            sharpen_alpha: [10.0, 30.0],
            smooth_sigma: [0.25, 1.5],
            noise_std: [0.0, 0.1],
            contrast_gamma: [0.7, 1.5],
            shift_offset: [-0.1, 0.1],
            scale_factor: [-0.1, 0.1],
            flip_axis_prob: 0.5,
        }
    }
}

/// Largest Gaussian sigma accepted, in voxels: beyond it a 3σ kernel outgrows any patch and the
/// blur costs grow linearly for no augmentation value.
pub(crate) const MAX_SIGMA: f64 = 16.0;

impl Magnitudes {
    /// Checks every range: finite, `lo <= hi`, and inside the transform's domain.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let sigma = |field, r: [f64; 2]| {
            range(field, r)?;
            if r[0] <= 0.0 || r[1] > MAX_SIGMA {
                return Err(bad(field, r, "sigmas must lie in (0, 16] voxels"));
            }
            Ok(())
        };
        sigma("sharpen_sigma1", self.sharpen_sigma1)?;
        sigma("smooth_sigma", self.smooth_sigma)?;
        let s2 = self.sharpen_sigma2_min;
        if !(s2.is_finite() && s2 > 0.0 && s2 <= self.sharpen_sigma1[0]) {
            return Err(AugmentError::InvalidMagnitude {
                field: "sharpen_sigma2_min",
                value: s2.to_string(),
                reason: "must lie in (0, sharpen_sigma1[0]] (σ2 is drawn from [it, σ1])",
            });
        }
        range("sharpen_alpha", self.sharpen_alpha)?;
        if self.sharpen_alpha[0] < 0.0 {
            return Err(bad("sharpen_alpha", self.sharpen_alpha, "must be >= 0"));
        }
        range("noise_std", self.noise_std)?;
        if self.noise_std[0] < 0.0 {
            return Err(bad("noise_std", self.noise_std, "must be >= 0"));
        }
        range("contrast_gamma", self.contrast_gamma)?;
        if self.contrast_gamma[0] <= 0.0 {
            return Err(bad("contrast_gamma", self.contrast_gamma, "must be > 0"));
        }
        range("shift_offset", self.shift_offset)?;
        range("scale_factor", self.scale_factor)?;
        if self.scale_factor[0] <= -1.0 {
            return Err(bad(
                "scale_factor",
                self.scale_factor,
                "must be > -1 (x·(1+f) would erase or invert the image)",
            ));
        }
        let f = self.flip_axis_prob;
        if !(0.0..=1.0).contains(&f) {
            return Err(AugmentError::InvalidMagnitude {
                field: "flip_axis_prob",
                value: f.to_string(),
                reason: "must lie in [0, 1]",
            });
        }
        Ok(())
    }
}

/// Smallest Gaussian sigma a searched `m_smooth` range starts from (MONAI's lower default).
const SMOOTH_SIGMA_FLOOR: f64 = 0.25;

impl Magnitudes {
    /// These magnitudes with one augmentation's searched number `m` (the value of its
    /// `m_*` strategy dimension) turned into its range, as `protocol::strategy::MAGNITUDES`
    /// documents: sharpen α ~ U(m/3, m); smooth σ ~ U(min(0.25, m), m); noise std ~ U(0, m);
    /// contrast γ ~ U(1/(1+m), 1+m); shift ~ U(−m, m); scale f ~ U(−m, m). A value that is not
    /// finite and positive, or that makes the range invalid, is an error naming the dimension.
    pub fn with_magnitude(mut self, magnitude: &Magnitude, m: f64) -> Result<Self, AugmentError> {
        let field = magnitude.name;
        if !(m.is_finite() && m > 0.0) {
            return Err(AugmentError::InvalidMagnitude {
                field,
                value: m.to_string(),
                reason: "must be finite and > 0",
            });
        }
        let out_of_domain = |reason| AugmentError::InvalidMagnitude {
            field,
            value: m.to_string(),
            reason,
        };
        match magnitude.augmentation {
            Augmentation::Sharpen => self.sharpen_alpha = [m / 3.0, m],
            Augmentation::Smooth => {
                if m > MAX_SIGMA {
                    return Err(out_of_domain("sigmas must lie in (0, 16] voxels"));
                }
                self.smooth_sigma = [SMOOTH_SIGMA_FLOOR.min(m), m];
            }
            Augmentation::Noise => self.noise_std = [0.0, m],
            Augmentation::Contrast => self.contrast_gamma = [1.0 / (1.0 + m), 1.0 + m],
            Augmentation::Shift => self.shift_offset = [-m, m],
            Augmentation::Scale => {
                if m >= 1.0 {
                    return Err(out_of_domain(
                        "must be < 1 (x·(1+f) would erase or invert the image)",
                    ));
                }
                self.scale_factor = [-m, m];
            }
            Augmentation::Flip | Augmentation::Rotate90 => {
                return Err(out_of_domain(
                    "this augmentation has no searchable magnitude",
                ));
            }
        }
        self.validate()?;
        Ok(self)
    }
}

fn range(field: &'static str, r: [f64; 2]) -> Result<(), AugmentError> {
    if !(r[0].is_finite() && r[1].is_finite()) {
        return Err(bad(field, r, "must be finite"));
    }
    if r[0] > r[1] {
        return Err(bad(field, r, "lower bound exceeds upper bound"));
    }
    Ok(())
}

fn bad(field: &'static str, r: [f64; 2], reason: &'static str) -> AugmentError {
    AugmentError::InvalidMagnitude {
        field,
        value: format!("[{}, {}]", r[0], r[1]),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Magnitudes::default().validate().unwrap();
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let cases: Vec<(Magnitudes, &str)> = vec![
            (
                Magnitudes {
                    smooth_sigma: [0.0, 1.0],
                    ..Default::default()
                },
                "smooth_sigma",
            ),
            (
                Magnitudes {
                    contrast_gamma: [1.5, 0.7],
                    ..Default::default()
                },
                "contrast_gamma",
            ),
            (
                Magnitudes {
                    noise_std: [0.0, f64::NAN],
                    ..Default::default()
                },
                "noise_std",
            ),
            (
                Magnitudes {
                    sharpen_sigma2_min: 0.9,
                    ..Default::default()
                },
                "sharpen_sigma2_min",
            ),
            (
                Magnitudes {
                    scale_factor: [-1.0, 0.1],
                    ..Default::default()
                },
                "scale_factor",
            ),
            (
                Magnitudes {
                    flip_axis_prob: 1.5,
                    ..Default::default()
                },
                "flip_axis_prob",
            ),
        ];
        for (m, name) in cases {
            match m.validate() {
                Err(AugmentError::InvalidMagnitude { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: expected an error, got {other:?}"),
            }
        }
    }

    /// Each searched magnitude's documented default reproduces the fixed default range (contrast:
    /// nnU-Net's [0.7, 1.5] made symmetric on the log scale, [1/1.5, 1.5]).
    #[test]
    fn the_default_magnitudes_reproduce_the_fixed_ranges() {
        let d = Magnitudes::default();
        for m in &protocol::strategy::MAGNITUDES {
            let got = d.with_magnitude(m, m.default).unwrap();
            let want = match m.augmentation {
                Augmentation::Contrast => Magnitudes {
                    contrast_gamma: [1.0 / 1.5, 1.5],
                    ..d
                },
                _ => d,
            };
            assert_eq!(got, want, "{}", m.name);
        }
    }

    #[test]
    fn searched_magnitudes_out_of_their_domain_are_refused_by_name() {
        let d = Magnitudes::default();
        let by = |n| protocol::strategy::Magnitude::from_dimension(n).unwrap();
        for (name, v) in [
            ("m_noise", 0.0),
            ("m_noise", f64::NAN),
            ("m_shift", -0.1),
            ("m_scale", 1.0),
            ("m_smooth", 17.0),
            ("m_contrast", f64::INFINITY),
        ] {
            match d.with_magnitude(by(name), v) {
                Err(AugmentError::InvalidMagnitude { field, .. }) => assert_eq!(field, name),
                other => panic!("{name} = {v}: {other:?}"),
            }
        }
    }
}
