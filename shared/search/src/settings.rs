//! Named numeric searcher settings (`StudySpec::searcher_settings`), checked against a table of
//! what each searcher accepts.

use std::collections::BTreeMap;

use crate::SearchError;

/// What values a setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Finite and > 0.
    Positive,
    /// An integer ≥ 1.
    Count,
    /// In [0, 1).
    Fraction,
    /// In (0, 1).
    OpenUnit,
    /// In (0, 0.5).
    BelowHalf,
    /// Finite and ≥ 0 (0 = off).
    NonNegative,
    /// Finite and > 1.
    AboveOne,
    /// 0 (off) or 1 (on).
    Flag,
    /// A whole number ≥ 0 (0 = off or automatic, as the setting says).
    Whole,
}

impl Rule {
    fn check(self, v: f64) -> Result<(), &'static str> {
        let ok = v.is_finite()
            && match self {
                Rule::Positive => v > 0.0,
                Rule::Count => v >= 1.0 && v.fract() == 0.0 && v <= 1e6,
                Rule::Fraction => (0.0..1.0).contains(&v),
                Rule::OpenUnit => v > 0.0 && v < 1.0,
                Rule::BelowHalf => v > 0.0 && v < 0.5,
                Rule::NonNegative => v >= 0.0,
                Rule::AboveOne => v > 1.0,
                Rule::Flag => v == 0.0 || v == 1.0,
                Rule::Whole => v >= 0.0 && v.fract() == 0.0 && v <= 1e6,
            };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Rule::Positive => "must be a finite number > 0",
                Rule::Count => "must be a whole number ≥ 1",
                Rule::Fraction => "must be in [0, 1)",
                Rule::OpenUnit => "must be in (0, 1)",
                Rule::BelowHalf => "must be in (0, 0.5)",
                Rule::NonNegative => "must be a finite number ≥ 0",
                Rule::AboveOne => "must be a finite number > 1",
                Rule::Flag => "must be 0 (off) or 1 (on)",
                Rule::Whole => "must be a whole number ≥ 0",
            })
        }
    }
}

/// One setting a searcher accepts, with its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SettingInfo {
    pub name: &'static str,
    pub default: f64,
    pub rule: Rule,
    pub doc: &'static str,
}

/// The settings in `table` order, defaults filled in; unknown names and invalid values are errors.
pub(crate) fn resolve(
    searcher: &'static str,
    table: &'static [SettingInfo],
    given: &BTreeMap<String, f64>,
) -> Result<Vec<f64>, SearchError> {
    for name in given.keys() {
        if !table.iter().any(|s| s.name == name) {
            return Err(SearchError::UnknownSetting {
                searcher,
                name: name.clone(),
                valid: table.iter().map(|s| s.name).collect(),
            });
        }
    }
    table
        .iter()
        .map(|s| {
            let v = given.get(s.name).copied().unwrap_or(s.default);
            s.rule
                .check(v)
                .map(|()| v)
                .map_err(|reason| SearchError::InvalidSetting {
                    searcher,
                    name: s.name,
                    value: v,
                    reason,
                })
        })
        .collect()
}
