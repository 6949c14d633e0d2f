//! ln Γ, digamma ψ and the Beta log-density, for x > 0 (all the PPO policy needs); erfc and
//! the standard normal CDF (the truncated normal kernels of `tpe`).
//!
//! ln Γ and ψ shift the argument up with the recurrence (Γ(x+1) = xΓ(x),
//! ψ(x+1) = ψ(x) + 1/x) until x ≥ 10 and then use the asymptotic (Stirling / Bernoulli) series;
//! with the terms kept here the truncation error there is below 1e-15 relative.

/// ln Γ(x) for x > 0. NaN for x ≤ 0 or NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut x = x;
    // Accumulate ln of the product x(x+1)...(x+n-1) as a product, taking logs rarely.
    let mut prod = 1.0;
    let mut shift = 0.0;
    while x < 10.0 {
        prod *= x;
        x += 1.0;
        if prod < 1e-200 {
            shift += prod.ln();
            prod = 1.0;
        }
    }
    let shift = shift + prod.ln();
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    // Σ B_2k / (2k(2k-1) x^(2k-1)), k = 1..7.
    let series = inv
        * (1.0 / 12.0
            + inv2
                * (-1.0 / 360.0
                    + inv2
                        * (1.0 / 1260.0
                            + inv2
                                * (-1.0 / 1680.0
                                    + inv2
                                        * (1.0 / 1188.0
                                            + inv2 * (-691.0 / 360360.0 + inv2 / 156.0))))));
    (x - 0.5) * x.ln() - x + 0.5 * (std::f64::consts::TAU).ln() + series - shift
}

/// ψ(x) = d/dx ln Γ(x) for x > 0. NaN for x ≤ 0 or NaN.
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let inv2 = 1.0 / (x * x);
    // ln x − 1/(2x) − Σ B_2k / (2k x^(2k)), k = 1..7.
    let series = inv2
        * (1.0 / 12.0
            + inv2
                * (-1.0 / 120.0
                    + inv2
                        * (1.0 / 252.0
                            + inv2
                                * (-1.0 / 240.0
                                    + inv2
                                        * (1.0 / 132.0
                                            + inv2 * (-691.0 / 32760.0 + inv2 / 12.0))))));
    acc + x.ln() - 0.5 / x - series
}

/// ln of the Beta(a, b) density at x ∈ (0, 1).
pub fn beta_log_pdf(x: f64, a: f64, b: f64) -> f64 {
    ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + (a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p()
}

/// erfc(x) = 1 − erf(x), to about 1e-14 relative everywhere (no cancellation in the right
/// tail: erfc(26) ≈ 5.7e-296 comes out right). NaN for NaN.
///
/// x < 1.5: 1 − erf(x) by [`erf_series`]; x ≥ 1.5: the continued fraction [`erfc_cf`].
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 1.5 {
        1.0 - erf_series(x)
    } else {
        erfc_cf(x)
    }
}

/// Φ(x), the standard normal CDF, to a few 1e-16 absolute (what a probability mass needs;
/// in the far left tail only about 1e-11 relative, use [`erfc`] there): the series up to
/// |x| = 3√2, where it still converges in ~45 multiplications, the continued fraction beyond.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let t = x.abs() * std::f64::consts::FRAC_1_SQRT_2;
    let upper = if t < 3.0 {
        0.5 * (1.0 - erf_series(t)) // = Φ(−|x|)
    } else {
        0.5 * erfc_cf(t)
    };
    if x < 0.0 { upper } else { 1.0 - upper }
}

/// erf(x) for 0 ≤ x < 3 as (2/√π) e^(−x²) Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1)): positive terms only,
/// no cancellation; multiplications by a table of 1/(2n+1).
fn erf_series(x: f64) -> f64 {
    let x2 = 2.0 * x * x;
    let (mut term, mut sum) = (x, x);
    for inv in &INV_ODD[1..] {
        term *= x2 * inv;
        sum += term;
        if term < 1e-17 * sum {
            break;
        }
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp() * sum
}

/// 1/(2n + 1) for n < 64: the terms of [`erf_series`] (45 at x = 3).
const INV_ODD: [f64; 64] = {
    let mut t = [0.0; 64];
    let mut n = 0;
    while n < 64 {
        t[n] = 1.0 / (2 * n + 1) as f64;
        n += 1;
    }
    t
};

/// erfc(x) for x ≥ 1.5 as the continued fraction
/// (2x e^(−x²)/√π) / (2x² + 1 − 1·2/(2x² + 5 − 3·4/(2x² + 9 − …))) by Lentz's method
/// (44 steps at x = 1.5, 16 at 3, 8 at 6).
fn erfc_cf(x: f64) -> f64 {
    if x > 27.3 {
        return 0.0; // below the smallest subnormal
    }
    // f = b0 + a1/(b1 + a2/(b2 + …)) with b_n = 2x² + 1 + 4n, a_n = −(2n−1)(2n).
    let tiny = 1e-300;
    let x2 = x * x;
    let mut f = 2.0 * x2 + 1.0;
    let (mut c, mut d) = (f, 0.0);
    for n in 1..500 {
        let a = -((2 * n - 1) * (2 * n)) as f64;
        let b = 2.0 * x2 + 1.0 + 4.0 * n as f64;
        d = b + a * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + a / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    std::f64::consts::FRAC_2_SQRT_PI * x * (-x2).exp() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values: exact closed forms where they exist (ln Γ(1/2) = ln √π,
    // ψ(1) = −γ, ψ(1/2) = −γ − 2 ln 2, ψ(n) = H_{n−1} − γ, Γ(n) = (n−1)!), the others from
    // mpmath 1.3 (`mp.dps = 30; loggamma(x), digamma(x)`) rounded to 17 significant digits.
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

    fn close(got: f64, want: f64, rel: f64) {
        let err = (got - want).abs() / want.abs().max(1.0);
        assert!(err < rel, "got {got}, want {want}, rel err {err:e}");
    }

    #[test]
    fn ln_gamma_known_values() {
        close(ln_gamma(1.0), 0.0, 1e-14);
        close(ln_gamma(2.0), 0.0, 1e-14);
        close(ln_gamma(0.5), 0.5 * std::f64::consts::PI.ln(), 1e-14);
        close(ln_gamma(10.0), 362_880f64.ln(), 1e-14);
        close(ln_gamma(20.0), 121_645_100_408_832_000f64.ln(), 1e-14);
        close(ln_gamma(0.1), 2.252_712_651_734_206, 1e-14);
        close(ln_gamma(1e-3), 6.907_178_885_383_854, 1e-14);
        close(ln_gamma(3.7), 1.428_072_326_665_387_9, 1e-14);
        close(ln_gamma(150.5), 602.513_954_870_585_4, 1e-14);
    }

    #[test]
    fn digamma_known_values() {
        close(digamma(1.0), -EULER_GAMMA, 1e-15);
        close(
            digamma(0.5),
            -EULER_GAMMA - 2.0 * std::f64::consts::LN_2,
            1e-15,
        );
        let h9: f64 = (1..10).map(|k| 1.0 / k as f64).sum();
        close(digamma(10.0), h9 - EULER_GAMMA, 1e-15);
        close(digamma(0.1), -10.423_754_940_411_076, 1e-14);
        close(digamma(3.7), 1.167_153_539_361_511_4, 1e-14);
        close(digamma(1e-3), -1_000.575_571_931_810_3, 1e-14);
        close(digamma(150.5), 5.010_637_145_933_705, 1e-14);
    }

    #[test]
    fn recurrences_and_derivative() {
        for &x in &[0.05, 0.3, 0.99, 1.7, 4.2, 9.99, 10.01, 33.0] {
            close(ln_gamma(x + 1.0) - ln_gamma(x), x.ln(), 1e-13);
            close(digamma(x + 1.0) - digamma(x), 1.0 / x, 1e-13);
            // ψ is the derivative of ln Γ: central difference.
            let h = 1e-5 * x.max(1.0);
            let fd = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            close(digamma(x), fd, 1e-7);
        }
        assert!(ln_gamma(0.0).is_nan() && digamma(-1.0).is_nan());
    }

    #[test]
    fn erfc_known_values() {
        // Python 3.11's math.erfc (the C library's, correctly rounded to a few ulps).
        let table = [
            (0.0, 1.0),
            (1e-10, 0.999_999_999_887_162),
            (0.1, 0.887_537_083_981_715_2),
            (0.5, 0.479_500_122_186_953_5),
            (0.9, 0.203_091_787_577_167_86),
            (1.0, 0.157_299_207_050_285_13),
            (1.4, 0.047_714_880_237_351_21),
            (1.5, 0.033_894_853_524_689_274),
            (1.6, 0.023_651_616_655_355_985),
            (2.0, 0.004_677_734_981_047_265),
            (3.0, 2.209_049_699_858_543_8e-5),
            (5.0, 1.537_459_794_428_035_1e-12),
            (10.0, 2.088_487_583_762_545e-45),
            (26.0, 5.663_192_408_856_143e-296),
            (-0.7, 1.677_801_193_837_418_4),
            (-3.0, 1.999_977_909_503_001_5),
        ];
        for (x, want) in table {
            let got = erfc(x);
            let err = (got - want).abs() / want;
            assert!(
                err < 1e-13,
                "erfc({x}) = {got}, want {want}, rel err {err:e}"
            );
        }
        assert_eq!(erfc(40.0), 0.0);
        assert_eq!(erfc(-40.0), 2.0);
        assert!(erfc(f64::NAN).is_nan());
        close(normal_cdf(0.0), 0.5, 1e-16);
        // Φ(−1.96) + Φ(1.96) = 1, and the symmetric tails agree.
        close(normal_cdf(-1.96) + normal_cdf(1.96), 1.0, 1e-15);
        close(normal_cdf(-1.96), 0.024_997_895_148_220_428, 1e-13);
        // Absolute accuracy across the switch from the series to the continued fraction.
        for i in 0..=120 {
            let x = -6.0 + 0.1 * i as f64;
            let want = 0.5 * erfc(-x * std::f64::consts::FRAC_1_SQRT_2);
            assert!((normal_cdf(x) - want).abs() < 1e-15, "Φ({x})");
        }
        assert_eq!(normal_cdf(-40.0), 0.0);
        assert_eq!(normal_cdf(40.0), 1.0);
    }

    #[test]
    fn beta_density_integrates_to_one() {
        for (a, b) in [(2.0, 3.0), (10.0, 10.0), (1.5, 18.5)] {
            let n = 20_000;
            let s: f64 = (0..n)
                .map(|i| beta_log_pdf((i as f64 + 0.5) / n as f64, a, b).exp() / n as f64)
                .sum();
            close(s, 1.0, 1e-5); // midpoint rule; Beta(1.5, ·) has a √x edge
        }
        // Beta(1, 1) is uniform.
        close(beta_log_pdf(0.3, 1.0, 1.0), 0.0, 1e-14);
    }
}
