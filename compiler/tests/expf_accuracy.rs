//! `expf`, loraC's definition of e^x (every backend repeats it bit for bit), against an
//! independent oracle: f64 `exp` rounded to f32. The bound is 1 ulp on normal results, and
//! 1 unit of the smallest denormal below 2⁻¹²⁶; special values are exact.

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
