/// Why a pipeline, sampler or producer could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    /// A searched probability is NaN or outside [0, 1].
    #[error("augmentation probability {dimension} = {value} is not in [0, 1]")]
    InvalidProbability { dimension: String, value: f64 },
    /// A `p_*` key names no augmentation this crate knows.
    #[error("unknown augmentation dimension {dimension} (known: {known})")]
    UnknownDimension { dimension: String, known: String },
    /// A magnitude range is not usable (non-finite, reversed, out of its domain).
    #[error("augmentation magnitude {field} = {value}: {reason}")]
    InvalidMagnitude {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A sampler or producer setting is not usable.
    #[error("invalid {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    /// An image and its label (or its case index) do not describe the same grid.
    #[error("case {case}: {reason}")]
    CaseMismatch { case: usize, reason: String },
}
