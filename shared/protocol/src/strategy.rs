//! The strategy vocabulary every crate shares: the searched augmentations and their
//! probability dimensions, the learning-rate dimension, the paper's space built from them,
//! and the paper's "routine" strategy.
//!
//! The searchers (`search`), the augmentation pipeline (`augment`), the training engine
//! (`engine`) and the CLI all name dimensions through this module, so a strategy written by
//! one is read by the others: an augmentation cannot be searched that the pipeline cannot
//! build, nor built under a name the searchers never propose.

use std::collections::BTreeMap;

use crate::{Dimension, Scale, Strategy};

/// One augmentation a strategy switches on with a probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Augmentation {
    Sharpen,
    Smooth,
    Noise,
    Contrast,
    Shift,
    Scale,
    Flip,
    Rotate90,
}

impl Augmentation {
    /// Every augmentation, in the order of the paper's space (the order of the searchers'
    /// dimensions, so it is part of every saved searcher state: never reorder it).
    pub const ALL: [Augmentation; 8] = [
        Self::Sharpen,
        Self::Smooth,
        Self::Noise,
        Self::Contrast,
        Self::Shift,
        Self::Scale,
        Self::Flip,
        Self::Rotate90,
    ];

    /// The strategy dimension holding its probability (`p_flip`).
    pub const fn dimension(self) -> &'static str {
        match self {
            Self::Sharpen => "p_sharpen",
            Self::Smooth => "p_smooth",
            Self::Noise => "p_noise",
            Self::Contrast => "p_contrast",
            Self::Shift => "p_shift",
            Self::Scale => "p_scale",
            Self::Flip => "p_flip",
            Self::Rotate90 => "p_rotate90",
        }
    }

    /// The augmentation whose probability `dimension` holds, if any.
    pub fn from_dimension(dimension: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.dimension() == dimension)
    }
}

/// Every dimension name starting with this is an augmentation probability; anything else in
/// a strategy (the learning rate) is for the trainer.
pub const PROBABILITY_PREFIX: &str = "p_";

/// The probability dimension names of [`Augmentation::ALL`], in that order.
pub const AUGMENTATIONS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = Augmentation::ALL[i].dimension();
        i += 1;
    }
    names
};

/// Range of every augmentation probability in the paper's space (linear scale).
pub const PROBABILITY_RANGE: [f64; 2] = [0.0, 1.0];

/// Name of the learning-rate dimension.
pub const LEARNING_RATE: &str = "learning_rate";
/// Range of the learning rate in the paper's space.
pub const LEARNING_RATE_RANGE: [f64; 2] = [1e-4, 1e-2];
/// Scale of the learning rate in the paper's space.
pub const LEARNING_RATE_SCALE: Scale = Scale::Log;

/// The paper's routine probability of every augmentation (section 4).
pub const ROUTINE_PROBABILITY: f64 = 0.5;
/// The paper's routine learning rate (section 4, training from scratch); also what a job
/// trains with when its strategy does not search the learning rate.
pub const ROUTINE_LEARNING_RATE: f64 = 1e-4;

/// The probability dimension of one augmentation in the paper's space.
pub fn probability_dimension(augmentation: Augmentation) -> Dimension {
    let [min, max] = PROBABILITY_RANGE;
    Dimension {
        name: augmentation.dimension().to_owned(),
        min,
        max,
        scale: Scale::Linear,
    }
}

/// The learning-rate dimension of the paper's space.
pub fn learning_rate_dimension() -> Dimension {
    let [min, max] = LEARNING_RATE_RANGE;
    Dimension {
        name: LEARNING_RATE.to_owned(),
        min,
        max,
        scale: LEARNING_RATE_SCALE,
    }
}

/// The paper's space (section 3.1): the probability of each augmentation, in
/// [`Augmentation::ALL`] order, then the learning rate.
pub fn paper_space() -> Vec<Dimension> {
    Augmentation::ALL
        .into_iter()
        .map(probability_dimension)
        .chain([learning_rate_dimension()])
        .collect()
}

/// The paper's routine strategy in real values: every augmentation at
/// [`ROUTINE_PROBABILITY`], the learning rate at [`ROUTINE_LEARNING_RATE`]. It has no unit
/// coordinates: no searcher proposed it.
pub fn routine_strategy() -> Strategy {
    let mut values: BTreeMap<String, f64> = AUGMENTATIONS
        .iter()
        .map(|name| (name.to_string(), ROUTINE_PROBABILITY))
        .collect();
    values.insert(LEARNING_RATE.to_owned(), ROUTINE_LEARNING_RATE);
    Strategy {
        values,
        unit: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order is in every saved searcher state and every study spec of the paper's space.
    #[test]
    fn the_order_is_the_papers() {
        assert_eq!(
            AUGMENTATIONS,
            [
                "p_sharpen",
                "p_smooth",
                "p_noise",
                "p_contrast",
                "p_shift",
                "p_scale",
                "p_flip",
                "p_rotate90",
            ]
        );
    }

    #[test]
    fn names_are_unique_probabilities_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for (a, name) in Augmentation::ALL.into_iter().zip(AUGMENTATIONS) {
            assert_eq!(a.dimension(), name);
            assert!(name.starts_with(PROBABILITY_PREFIX), "{name}");
            assert_eq!(Augmentation::from_dimension(name), Some(a));
            assert!(seen.insert(name), "{name} twice");
        }
        assert!(!LEARNING_RATE.starts_with(PROBABILITY_PREFIX));
        assert_eq!(Augmentation::from_dimension(LEARNING_RATE), None);
        assert_eq!(Augmentation::from_dimension("p_elastic"), None);
    }

    #[test]
    fn the_papers_space_and_routine() {
        let space = paper_space();
        let names: Vec<&str> = space.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names[..8], AUGMENTATIONS);
        assert_eq!(names[8], LEARNING_RATE);
        assert!(
            space[..8]
                .iter()
                .all(|d| (d.min, d.max, d.scale) == (0.0, 1.0, Scale::Linear))
        );
        let lr = &space[8];
        assert_eq!((lr.min, lr.max, lr.scale), (1e-4, 1e-2, Scale::Log));

        let routine = routine_strategy();
        assert_eq!(routine.values.len(), 9);
        assert!(AUGMENTATIONS.iter().all(|n| routine.values[*n] == 0.5));
        assert_eq!(routine.values[LEARNING_RATE], 1e-4);
        assert!(routine.unit.is_empty());
    }
}
