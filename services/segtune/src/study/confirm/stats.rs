//! The arithmetic of `segtune study confirm`: per-arm mean and standard deviation, paired
//! differences (same seed) and their 95 % Student-t interval.
//!
//! The interval is the paired t-interval: with n differences d_i of mean d̄ and sample standard
//! deviation s (n − 1 in the denominator), d̄ ± t(0.975; n − 1) · s / √n. The quantile is the
//! exact Student-t quantile (the regularized incomplete beta function inverted by bisection),
//! not a normal approximation, because confirmations run with 3 to 5 seeds, where the t
//! quantile (4.30 for 3 seeds) is more than twice the normal's 1.96.

use search::special::ln_gamma;

/// Mean and sample standard deviation (n − 1); the sd is NaN for fewer than two values.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let ss = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    (mean, (ss / (n - 1.0)).sqrt())
}

/// The paired comparison of two arms over the seeds both have a Dice for.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// a − b per shared seed, in seed order.
    pub diffs: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
    /// The 95 % t-interval of the mean difference; NaN ends with fewer than two pairs.
    pub ci: [f64; 2],
}

impl Paired {
    /// Whether the interval lies entirely above zero (a beats b beyond the seeds' noise).
    pub fn above_zero(&self) -> bool {
        self.ci[0] > 0.0
    }

    /// Whether the interval lies entirely below zero.
    pub fn below_zero(&self) -> bool {
        self.ci[1] < 0.0
    }
}

/// `a − b` per seed where both arms have a value (a failed job leaves a `None`), with the
/// mean, sd and 95 % t-interval of the differences.
pub fn paired(a: &[Option<f64>], b: &[Option<f64>]) -> Paired {
    let diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some((*x)? - (*y)?))
        .collect();
    let (mean, sd) = mean_sd(&diffs);
    let ci = if diffs.len() >= 2 {
        let half = t_quantile(0.975, (diffs.len() - 1) as f64) * sd / (diffs.len() as f64).sqrt();
        [mean - half, mean + half]
    } else {
        [f64::NAN, f64::NAN]
    };
    Paired {
        diffs,
        mean,
        sd,
        ci,
    }
}

/// The `p` quantile of Student's t with `df` > 0 degrees of freedom, for p in (0, 1).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    assert!(
        p > 0.0 && p < 1.0 && df > 0.0,
        "t_quantile({p}, {df}): p must lie in (0, 1) and df be > 0"
    );
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    // The CDF is increasing: bracket, then bisect to the last bit.
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid == lo || mid == hi {
            break;
        }
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * inc_beta(0.5 * df, 0.5, x);
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The regularized incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction,
/// using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction converges slowly).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-sided 95 % quantiles from the standard t table (e.g. NIST/SEMATECH e-Handbook,
    /// table 1.3.6.7.2), to the table's 3 decimals; df 1 and 2 also have closed forms:
    /// t(0.975; 1) = tan(0.475π) = 12.7062, t(0.975; 2) = 0.95·√(2 / (1 − 0.95²)) = 4.3027.
    #[test]
    fn t_quantiles_match_the_table() {
        for (df, want) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (4.0, 2.776),
            (9.0, 2.262),
            (29.0, 2.045),
            (100.0, 1.984),
        ] {
            let got = t_quantile(0.975, df);
            assert!((got - want).abs() < 5e-4, "df {df}: {got} vs {want}");
        }
        let exact1 = (0.475 * std::f64::consts::PI).tan();
        assert!((t_quantile(0.975, 1.0) - exact1).abs() < 1e-9);
        let exact2 = 0.95 * (2.0f64 / (1.0 - 0.95 * 0.95)).sqrt();
        assert!((t_quantile(0.975, 2.0) - exact2).abs() < 1e-9);
        assert!((t_quantile(0.025, 4.0) + t_quantile(0.975, 4.0)).abs() < 1e-12);
        assert!((t_cdf(0.0, 7.0) - 0.5).abs() < 1e-15);
    }

    /// Worked by hand: Dice per seed winner 0.80, 0.84, 0.82; ablation 0.78, 0.80, 0.83.
    /// Differences 0.02, 0.04, −0.01: mean 0.05/3 = 0.016667; deviations 0.003333, 0.023333,
    /// −0.026667; squares sum 0.0000111 + 0.0005444 + 0.0007111 = 0.0012667; / 2 = 0.00063333;
    /// sd 0.025166; se = sd / √3 = 0.014530; t(0.975; 2) = 4.302653; half width 0.062516;
    /// interval [−0.045849, 0.079183].
    #[test]
    fn paired_differences_and_interval_by_hand() {
        let a = [Some(0.80), Some(0.84), Some(0.82)];
        let b = [Some(0.78), Some(0.80), Some(0.83)];
        let p = paired(&a, &b);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
        assert_eq!(p.diffs.len(), 3);
        assert!(close(p.diffs[0], 0.02) && close(p.diffs[1], 0.04) && close(p.diffs[2], -0.01));
        assert!(close(p.mean, 0.016667), "{}", p.mean);
        assert!(close(p.sd, 0.025166), "{}", p.sd);
        assert!(close(p.ci[0], -0.045849), "{:?}", p.ci);
        assert!(close(p.ci[1], 0.079183), "{:?}", p.ci);
        assert!(!p.above_zero() && !p.below_zero());

        // Winner mean 0.82, sd 0.02 (deviations −0.02, 0.02, 0: squares 0.0008 / 2).
        let (m, s) = mean_sd(&[0.80, 0.84, 0.82]);
        assert!(close(m, 0.82) && close(s, 0.02), "{m} {s}");
    }

    /// A seed missing in either arm drops out of the pairing; one pair gives no interval.
    #[test]
    fn missing_seeds_drop_out_of_the_pairing() {
        // Differences 0.10, 0.12, 0.11 (seed 2 failed in b): mean 0.11, sd 0.01,
        // half width 4.302653 · 0.01 / √3 = 0.024841: [0.085159, 0.134841], above zero.
        let a = [Some(0.9), Some(0.92), Some(0.5), Some(0.91)];
        let b = [Some(0.8), Some(0.8), None, Some(0.8)];
        let p = paired(&a, &b);
        assert_eq!(p.diffs.len(), 3);
        assert!((p.mean - 0.11).abs() < 1e-9 && (p.sd - 0.01).abs() < 1e-9);
        assert!((p.ci[0] - 0.085159).abs() < 1e-6 && (p.ci[1] - 0.134841).abs() < 1e-6);
        assert!(p.above_zero());

        let one = paired(&[Some(0.5), None], &[Some(0.4), Some(0.3)]);
        assert_eq!(one.diffs.len(), 1);
        assert!(one.ci[0].is_nan() && one.sd.is_nan());
        assert!(!one.above_zero() && !one.below_zero());
    }
}
