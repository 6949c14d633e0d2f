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

/// Every dimension name starting with this is an augmentation magnitude (`m_noise`): how
/// strong its augmentation is when it fires. Only the `paper+magnitudes` preset searches them;
/// a strategy without them trains with the fixed default magnitudes.
pub const MAGNITUDE_PREFIX: &str = "m_";

/// One searchable augmentation magnitude: a single number per augmentation that sets the
/// upper end of the range its parameter is drawn from (the pipeline turns it into the range;
/// `augment::Magnitudes::with_magnitude`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Magnitude {
    pub augmentation: Augmentation,
    /// The strategy dimension (`m_noise`).
    pub name: &'static str,
    /// The searched range of the number.
    pub range: [f64; 2],
    pub scale: Scale,
    /// The number that reproduces (or, for contrast, symmetrizes on the log scale) the fixed
    /// default magnitude of the paper's space; the `fixed` searcher's routine value.
    pub default: f64,
    /// What the number sets, for docs and error messages.
    pub meaning: &'static str,
}

/// The magnitude dimensions of the `paper+magnitudes` preset, in [`Augmentation::ALL`] order
/// (flip and rotate90 have no strength: a mirror or a quarter turn is all or nothing). Part of
/// every saved searcher state of that preset: never reorder. Why these ranges: the README's
/// "Augmentation magnitudes".
pub const MAGNITUDES: [Magnitude; 6] = [
    Magnitude {
        augmentation: Augmentation::Sharpen,
        name: "m_sharpen",
        range: [5.0, 60.0],
        scale: Scale::Log,
        default: 30.0,
        meaning: "unsharp-mask strength: alpha ~ U(m/3, m)",
    },
    Magnitude {
        augmentation: Augmentation::Smooth,
        name: "m_smooth",
        range: [0.5, 3.0],
        scale: Scale::Linear,
        default: 1.5,
        meaning: "largest Gaussian sigma in voxels: sigma ~ U(min(0.25, m), m) per axis",
    },
    Magnitude {
        augmentation: Augmentation::Noise,
        name: "m_noise",
        range: [0.01, 0.3],
        scale: Scale::Log,
        default: 0.1,
        meaning: "largest noise std (normalized intensity): std ~ U(0, m)",
    },
    Magnitude {
        augmentation: Augmentation::Contrast,
        name: "m_contrast",
        range: [0.1, 2.0],
        scale: Scale::Log,
        default: 0.5,
        meaning: "gamma range: gamma ~ U(1/(1+m), 1+m)",
    },
    Magnitude {
        augmentation: Augmentation::Shift,
        name: "m_shift",
        range: [0.02, 0.5],
        scale: Scale::Linear,
        default: 0.1,
        meaning: "largest intensity offset (normalized intensity): offset ~ U(-m, m)",
    },
    Magnitude {
        augmentation: Augmentation::Scale,
        name: "m_scale",
        range: [0.02, 0.5],
        scale: Scale::Linear,
        default: 0.1,
        meaning: "largest relative intensity scale: x * (1 + f), f ~ U(-m, m)",
    },
];

impl Magnitude {
    /// The magnitude dimension named `name`, if any.
    pub fn from_dimension(name: &str) -> Option<&'static Magnitude> {
        MAGNITUDES.iter().find(|m| m.name == name)
    }

    /// Its search dimension.
    pub fn dimension(&self) -> Dimension {
        let [min, max] = self.range;
        Dimension {
            name: self.name.to_owned(),
            min,
            max,
            scale: self.scale,
        }
    }
}

/// The study-file presets (`[space] preset = ...`).
pub const PRESETS: [&str; 3] = ["paper", "paper+magnitudes", "none"];

/// The `paper+magnitudes` space: the paper's space unchanged (same dimensions, same order), then
/// one magnitude per augmentation that has a strength ([`MAGNITUDES`]).
pub fn paper_magnitudes_space() -> Vec<Dimension> {
    paper_space()
        .into_iter()
        .chain(MAGNITUDES.iter().map(Magnitude::dimension))
        .collect()
}

/// The dimensions of a study-file preset, or `None` for an unknown name (`"none"`: empty).
pub fn preset_space(preset: &str) -> Option<Vec<Dimension>> {
    match preset {
        "paper" => Some(paper_space()),
        "paper+magnitudes" => Some(paper_magnitudes_space()),
        "none" => Some(Vec::new()),
        _ => None,
    }
}

/// A strategy with every augmentation switched off (each `p_*` value 0) and everything else
/// (learning rate, magnitudes) as it was: a strategy's ablation. Unit coordinates are dropped
/// (no searcher proposed it).
pub fn without_augmentation(strategy: &Strategy) -> Strategy {
    let values = strategy
        .values
        .iter()
        .map(|(k, &v)| {
            let v = if k.starts_with(PROBABILITY_PREFIX) {
                0.0
            } else {
                v
            };
            (k.clone(), v)
        })
        .collect();
    Strategy {
        values,
        unit: BTreeMap::new(),
    }
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

    /// The magnitudes extend the paper's space without touching it, each names an augmentation
    /// once, and its default lies inside its range.
    #[test]
    fn the_magnitude_preset_extends_the_papers_space() {
        let paper = paper_space();
        let wide = paper_magnitudes_space();
        assert_eq!(wide[..paper.len()], paper[..]);
        assert_eq!(wide.len(), paper.len() + MAGNITUDES.len());
        let mut seen = std::collections::BTreeSet::new();
        for (m, d) in MAGNITUDES.iter().zip(&wide[paper.len()..]) {
            assert!(m.name.starts_with(MAGNITUDE_PREFIX), "{}", m.name);
            assert!(!m.name.starts_with(PROBABILITY_PREFIX), "{}", m.name);
            assert_eq!(d.name, m.name);
            assert!(seen.insert(m.augmentation), "{:?} twice", m.augmentation);
            assert_eq!(Magnitude::from_dimension(m.name), Some(m));
            assert!(m.range[0] > 0.0 && m.range[0] < m.range[1], "{}", m.name);
            assert!(
                (m.range[0]..=m.range[1]).contains(&m.default),
                "{}: default {} outside {:?}",
                m.name,
                m.default,
                m.range
            );
        }
        assert!(!seen.contains(&Augmentation::Flip) && !seen.contains(&Augmentation::Rotate90));
        assert_eq!(Magnitude::from_dimension("p_noise"), None);
        assert_eq!(preset_space("paper"), Some(paper));
        assert_eq!(preset_space("paper+magnitudes"), Some(wide));
        assert_eq!(preset_space("none"), Some(Vec::new()));
        assert_eq!(preset_space("papr"), None);
        assert!(PRESETS.iter().all(|p| preset_space(p).is_some()));
    }

    #[test]
    fn the_ablation_zeroes_probabilities_only() {
        let mut s = routine_strategy();
        s.values.insert("m_noise".into(), 0.2);
        s.unit.insert("p_flip".into(), 0.5);
        let off = without_augmentation(&s);
        assert_eq!(off.values.len(), s.values.len());
        for (k, v) in &off.values {
            if k.starts_with(PROBABILITY_PREFIX) {
                assert_eq!(*v, 0.0, "{k}");
            } else {
                assert_eq!(*v, s.values[k], "{k}");
            }
        }
        assert!(off.unit.is_empty());
    }
}
