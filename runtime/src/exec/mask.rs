//! Dropout factors for runs of consecutive element indices: `out[j]` is
//! `ops::random::factor_at(stream, first + j, p)`, computed 8 at a time with AVX-512 (64-bit
//! multiplies) when the CPU has it, bit for bit the same as the scalar definition.

use lorac_compiler::ir::ops::random::factor_at;

/// Fills `out` with the factors of elements `first..first + out.len()` of `stream`.
pub fn factors(stream: u64, first: u64, p: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if (0.0..=1.0).contains(&p)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the features the function enables were detected just above.
            unsafe { avx512::factors(stream, first, p, out) };
            return;
        }
    }
    scalar(stream, first, p, out);
}

/// The definition, one element at a time.
pub fn scalar(stream: u64, first: u64, p: f32, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = factor_at(stream, first + j as u64, p);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The splitmix64 finaliser of `random.rs` on 8 lanes, and its keep test as an integer
    /// compare: `(h >> 40) · 2⁻²⁴ ≥ p` ⇔ `h >> 40 ≥ ⌈p · 2²⁴⌉` (both sides are exact).
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub unsafe fn factors(stream: u64, first: u64, p: f32, out: &mut [f32]) {
        let threshold = (p as f64 * 16_777_216.0).ceil() as u64;
        let scale = 1.0 / (1.0 - p);
        let (c1, c2) = (
            _mm512_set1_epi64(0xbf58_476d_1ce4_e5b9_u64 as i64),
            _mm512_set1_epi64(0x94d0_49bb_1331_11eb_u64 as i64),
        );
        let lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
        let t = _mm512_set1_epi64(threshold as i64);
        let (zero, kept) = (_mm256_setzero_ps(), _mm256_set1_ps(scale));
        let full = out.len() / 8 * 8;
        for j in (0..full).step_by(8) {
            let base = _mm512_set1_epi64(stream.wrapping_add(first).wrapping_add(j as u64) as i64);
            let mut z = _mm512_add_epi64(base, lanes);
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), c1);
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2);
            z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
            let keep = _mm512_cmpge_epu64_mask(_mm512_srli_epi64(z, 40), t);
            let f = _mm256_mask_blend_ps(keep, zero, kept);
            // SAFETY: j + 8 <= full <= out.len().
            _mm256_storeu_ps(out.as_mut_ptr().add(j), f);
        }
        super::scalar(stream, first + full as u64, p, &mut out[full..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_factors_equal_the_definition() {
        for (stream, first) in [
            (0u64, 0u64),
            (u64::MAX - 3, 5),
            (0x1234_5678_9abc_def0, 1 << 40),
        ] {
            for p in [0.0f32, 0.05, 0.1, 0.5, 0.999, 1.0, 1.0 / 3.0] {
                for n in [0, 1, 7, 8, 9, 1000] {
                    let (mut a, mut b) = (vec![9f32; n], vec![9f32; n]);
                    factors(stream, first, p, &mut a);
                    scalar(stream, first, p, &mut b);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&a),
                        bits(&b),
                        "stream {stream:#x} first {first} p {p} n {n}"
                    );
                }
            }
        }
        // The drop rate is p: 100k draws at p = 0.3.
        let mut v = vec![0f32; 100_000];
        factors(42, 0, 0.3, &mut v);
        let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / 1e5;
        assert!((dropped - 0.3).abs() < 0.006, "{dropped}");
    }
}
