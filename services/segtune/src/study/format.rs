//! How the study commands name and print a strategy's dimensions, so that a dimension has
//! one column name in `watch`, `rewards` and the report.

use protocol::strategy::{LEARNING_RATE, MAGNITUDE_PREFIX, PROBABILITY_PREFIX};

/// Column name of a dimension: `p_noise` → `noise`, `m_noise` → `mnoise`, `learning_rate` →
/// `lr`, at most 9 characters (every dimension of the `paper+magnitudes` space keeps its whole
/// name).
pub fn short_name(dim: &str) -> String {
    if dim == LEARNING_RATE {
        return "lr".into();
    }
    if let Some(rest) = dim.strip_prefix(MAGNITUDE_PREFIX) {
        return format!("m{rest}").chars().take(9).collect();
    }
    let s = dim.strip_prefix(PROBABILITY_PREFIX).unwrap_or(dim);
    s.chars().take(9).collect()
}

/// Probabilities with 3 decimals, small or large values (a learning rate) in scientific
/// notation.
pub fn format_value(dim: &str, v: f64) -> String {
    let probability = dim.starts_with(PROBABILITY_PREFIX);
    if dim == LEARNING_RATE || (!probability && v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4)) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(short_name("p_sharpen"), "sharpen");
        assert_eq!(short_name("p_contrast"), "contrast");
        assert_eq!(short_name("p_rotate90"), "rotate90");
        assert_eq!(short_name("learning_rate"), "lr");
        assert_eq!(short_name("m_contrast"), "mcontrast");
        assert_eq!(short_name("m_noise"), "mnoise");
        assert_eq!(short_name("p_elastic_deform"), "elastic_d");
        assert_eq!(short_name("weight_decay"), "weight_de");
    }
}
