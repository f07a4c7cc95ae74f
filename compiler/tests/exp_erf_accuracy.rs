//! `expf` and `erf`, loraC's definitions (every backend repeats them bit for bit), against
//! independent oracles: f64 `exp` rounded to f32 (1 ulp on normal results, 1 unit of the
//! smallest denormal below 2⁻¹²⁶, special values exact) and erf's Maclaurin series in f64.

use lorac_compiler::ir::ops::elementwise::expf;

/// Distance in representable f32 steps between two finite non-negative floats.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn within_one_ulp_of_f64_exp_over_the_whole_range() {
    let mut worst = (0u32, 0f32);
    let mut checked = 0u64;
    // Every 61st f32 bit pattern (odd stride, so all exponent/mantissa mixes appear) in
    // [-104, 89], both signs, plus every value near the ends of the range.
    let hi = 89.0f32.to_bits();
    let lo = 104.0f32.to_bits();
    let mut bits = 0u32;
    while bits <= lo {
        for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
            if !(-104.0..=89.0).contains(&x) {
                continue;
            }
            let want = (x as f64).exp() as f32;
            let got = expf(x);
            let d = ulps(got, want);
            if d > worst.0 {
                worst = (d, x);
            }
            checked += 1;
        }
        bits += if bits > hi.min(lo) - 100_000 { 1 } else { 61 };
    }
    assert!(checked > 30_000_000, "{checked}");
    assert!(worst.0 <= 1, "expf({}) is {} ulp off", worst.1, worst.0);
}

#[test]
fn special_values() {
    assert_eq!(expf(0.0), 1.0);
    assert_eq!(expf(-0.0), 1.0);
    assert_eq!(expf(f32::INFINITY), f32::INFINITY);
    assert_eq!(expf(88.8), f32::INFINITY);
    assert_eq!(expf(f32::NEG_INFINITY), 0.0);
    assert_eq!(expf(-1e9), 0.0);
    assert!(expf(f32::NAN).is_nan());
    assert_eq!(expf(1.0), std::f32::consts::E);
    // Near the largest finite result, and a denormal one.
    assert!(ulps(expf(88.72), (88.72f32 as f64).exp() as f32) <= 1);
    assert!(expf(88.72).is_finite());
    assert!(ulps(expf(-100.0), (-100.0f32 as f64).exp() as f32) <= 1);
    assert!(expf(-100.0) > 0.0);
}

/// erf by its Maclaurin series in f64 (an independent oracle, accurate to ~1e-12 on |x| ≤ 3.5).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// loraC's erf (the Numerical Recipes fit on [`expf`], with fused Horner steps) stays within
/// 4e-7 of erf on [-3.5, 3.5] (absolute: the fit's 1.2e-7 on erfc plus the f32 roundings of t and
/// 1 − r), and is odd and saturating.
#[test]
fn erf_within_its_fit_error() {
    use lorac_compiler::ir::ops::elementwise::erf;
    let mut worst = 0f64;
    for i in -350_000..=350_000 {
        let x = i as f32 * 1e-5;
        let d = (erf(x) as f64 - erf_series(x as f64)).abs();
        worst = worst.max(d);
    }
    assert!(worst < 4e-7, "worst error {worst:e}");
    assert_eq!(erf(0.0), 0.0);
    assert_eq!(erf(10.0), 1.0);
    assert_eq!(erf(-10.0), -1.0);
    assert_eq!(erf(-0.7), -erf(0.7));
}
