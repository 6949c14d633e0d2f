//! The search space (paper section 3.1): every knob λ has a range [λmin, λmax] that is mapped
//! to [0, 1]; searchers only ever see the unit cube [0, 1]^K.

use std::collections::{BTreeMap, BTreeSet};

use protocol::{
    Dimension, Scale, Strategy,
    strategy::{LEARNING_RATE, Magnitude, ROUTINE_LEARNING_RATE},
};

use crate::SpaceError;

/// Named dimensions, validated: finite ranges with `min < max`, `min > 0` on a log scale,
/// unique non-empty names. The order of the dimensions is the order of the unit vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    dims: Vec<Dimension>,
}

impl SearchSpace {
    pub fn new(dims: Vec<Dimension>) -> Result<Self, SpaceError> {
        if dims.is_empty() {
            return Err(SpaceError::Empty);
        }
        let mut seen = BTreeSet::new();
        for (index, d) in dims.iter().enumerate() {
            if d.name.trim().is_empty() {
                return Err(SpaceError::EmptyName { index });
            }
            if !seen.insert(d.name.as_str()) {
                return Err(SpaceError::Duplicate {
                    name: d.name.clone(),
                });
            }
            let invalid = |reason: String| SpaceError::Invalid {
                name: d.name.clone(),
                reason,
            };
            if !d.min.is_finite() || !d.max.is_finite() {
                return Err(invalid(format!(
                    "range [{}, {}] is not finite",
                    d.min, d.max
                )));
            }
            if d.min >= d.max {
                return Err(invalid(format!(
                    "min {} must be below max {}",
                    d.min, d.max
                )));
            }
            if d.scale == Scale::Log && d.min <= 0.0 {
                return Err(invalid(format!(
                    "a log scale needs min > 0, got min {}",
                    d.min
                )));
            }
        }
        Ok(Self { dims })
    }

    /// The paper's space, [`protocol::strategy::paper_space`]: the probability (linear,
    /// [0, 1]) of each augmentation, then `learning_rate` in [1e-4, 1e-2] on a log scale.
    pub fn default_augmentation() -> Self {
        Self::new(protocol::strategy::paper_space()).expect("the default space is valid")
    }

    pub fn dimensions(&self) -> &[Dimension] {
        &self.dims
    }

    pub fn len(&self) -> usize {
        self.dims.len()
    }

    /// Always false: a space has at least one dimension.
    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.dims.iter().map(|d| d.name.as_str())
    }

    /// Real values → unit cube. Values outside a range are clamped to it.
    pub fn to_unit(&self, values: &[f64]) -> Result<Vec<f64>, SpaceError> {
        self.check(values)?;
        Ok(self
            .dims
            .iter()
            .zip(values)
            .map(|(d, &v)| unit_of(d, v))
            .collect())
    }

    /// Unit cube → real values. Unit values outside [0, 1] are clamped; the result always lies
    /// in `[min, max]` (also on a log scale, where `exp(ln max)` may round past `max`).
    pub fn from_unit(&self, unit: &[f64]) -> Result<Vec<f64>, SpaceError> {
        self.check(unit)?;
        Ok(self
            .dims
            .iter()
            .zip(unit)
            .map(|(d, &u)| value_of(d, u))
            .collect())
    }

    /// The strategy message for a searcher's unit vector: real values and the (clamped) unit
    /// coordinates, both by dimension name.
    pub fn strategy(&self, unit: &[f64]) -> Result<Strategy, SpaceError> {
        let values = self.from_unit(unit)?;
        let mut by_name = BTreeMap::new();
        let mut unit_by_name = BTreeMap::new();
        for ((d, v), &u) in self.dims.iter().zip(values).zip(unit) {
            by_name.insert(d.name.clone(), v);
            unit_by_name.insert(d.name.clone(), u.clamp(0.0, 1.0));
        }
        Ok(Strategy {
            values: by_name,
            unit: unit_by_name,
        })
    }

    /// The paper's "routine" strategy (section 4): 0.5 for every dimension (the routine
    /// probability on the paper's [0, 1] ranges), except that a dimension named
    /// [`LEARNING_RATE`] gets the unit coordinate of the routine 1e-4 and an augmentation
    /// magnitude (`m_*`) that of its default (both clamped to the dimension's range).
    pub fn routine_unit(&self) -> Vec<f64> {
        self.dims
            .iter()
            .map(|d| {
                if d.name == LEARNING_RATE {
                    unit_of(d, ROUTINE_LEARNING_RATE)
                } else if let Some(m) = Magnitude::from_dimension(&d.name) {
                    unit_of(d, m.default)
                } else {
                    0.5
                }
            })
            .collect()
    }

    fn check(&self, xs: &[f64]) -> Result<(), SpaceError> {
        if xs.len() != self.dims.len() {
            return Err(SpaceError::WrongLength {
                expected: self.dims.len(),
                got: xs.len(),
            });
        }
        for (d, &x) in self.dims.iter().zip(xs) {
            if !x.is_finite() {
                return Err(SpaceError::NotFinite {
                    name: d.name.clone(),
                    value: x,
                });
            }
        }
        Ok(())
    }
}

fn unit_of(d: &Dimension, v: f64) -> f64 {
    let v = v.clamp(d.min, d.max);
    let u = match d.scale {
        Scale::Linear => (v - d.min) / (d.max - d.min),
        Scale::Log => (v.ln() - d.min.ln()) / (d.max.ln() - d.min.ln()),
    };
    u.clamp(0.0, 1.0)
}

fn value_of(d: &Dimension, u: f64) -> f64 {
    // The ends exactly (exp(ln min) need not be min).
    if u <= 0.0 {
        return d.min;
    }
    if u >= 1.0 {
        return d.max;
    }
    let v = match d.scale {
        Scale::Linear => d.min + u * (d.max - d.min),
        Scale::Log => (d.min.ln() + u * (d.max.ln() - d.min.ln())).exp(),
    };
    v.clamp(d.min, d.max)
}
