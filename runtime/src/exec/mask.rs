//! Dropout factors for runs of consecutive element indices: `out[j]` is
//! `ops::random::factor_at(stream, first + j, p)`, computed 16 at a time with AVX-512 (8
//! 64-bit mixes, two draws each) when the CPU has it, bit for bit the same as the scalar
//! definition; and the same draws as keep bits (`routing::keep_words`), with their use as
//! factors.

use lorac_compiler::ir::ops::random::{factor_at, kept_factor};
use lorac_compiler::ir::ops::routing;

/// Fills `out` with the factors of elements `first..first + out.len()` of `stream`.
pub fn factors(stream: u64, first: u64, p: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if (0.0..=1.0).contains(&p) && has_avx512() {
            // SAFETY: the features the function enables were detected just above.
            unsafe { avx512::factors(stream, first, p, out) };
            return;
        }
    }
    scalar(stream, first, p, out);
}

/// `out[j] = x[j] · factor(first + j)`: the dropped values, without storing the factors.
pub fn apply(stream: u64, first: u64, p: f32, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if (0.0..=1.0).contains(&p) && has_avx512() {
            // SAFETY: the features the function enables were detected just above.
            unsafe { avx512::apply(stream, first, p, x, out) };
            return;
        }
    }
    for (j, (o, &x)) in out.iter_mut().zip(x).enumerate() {
        *o = x * factor_at(stream, first + j as u64, p);
    }
}

/// Fills `out` (`routing::words(n)` words) with the keep bits of elements
/// `first..first + n` of `stream`, as `routing::keep_words` defines them.
pub fn keep_words(stream: u64, first: u64, p: f32, n: usize, out: &mut [i64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if (0.0..=1.0).contains(&p) && has_avx512() {
            // SAFETY: the features the function enables were detected just above.
            unsafe { avx512::keep_words(stream, first, p, n, out) };
            return;
        }
    }
    routing::keep_words(stream, first, p, n, out);
}

/// `out[j] = x[j] · f[j]`, `f[j]` being `scale` where bit `j` of `words` is set, else 0: the
/// product `apply` forms, from drawn bits.
pub fn apply_bits(words: &[i64], scale: f32, x: &[f32], out: &mut [f32]) {
    by_bits::<false>(words, scale, x, out);
}

/// `acc[j] += v[j] · f[j]` (the product rounded, then the sum), `f` as in [`apply_bits`].
pub fn accumulate_bits(words: &[i64], scale: f32, v: &[f32], acc: &mut [f32]) {
    by_bits::<true>(words, scale, v, acc);
}

/// [`apply_bits`], or with `ACC` [`accumulate_bits`].
fn by_bits<const ACC: bool>(words: &[i64], scale: f32, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the features the function enables were detected just above.
            unsafe { avx512::apply_bits::<ACC>(words, scale, x, out) };
            return;
        }
    }
    for (j, (o, &x)) in out.iter_mut().zip(x).enumerate() {
        let v = x * bit_factor(words, scale, j);
        *o = if ACC { *o + v } else { v };
    }
}

/// Element `j`'s factor: `scale` when kept, else 0.
#[inline]
fn bit_factor(words: &[i64], scale: f32, j: usize) -> f32 {
    if routing::kept(words, j) {
        scale
    } else {
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
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

    /// The keep test as an integer compare, in every 32-bit lane: `d · 2⁻²⁴ ≥ p` ⇔
    /// `d ≥ ⌈p · 2²⁴⌉` (both sides exact), for `p` in [0, 1].
    #[inline(always)]
    unsafe fn threshold(p: f32) -> __m512i {
        _mm512_set1_epi32((p as f64 * 16_777_216.0).ceil() as u32 as i32)
    }

    /// The keep bits of elements `2·half .. 2·half + 16` of a stream: the splitmix64
    /// finaliser of `random.rs` on 8 lanes (`mix(stream + half + m)`), then each 32-bit
    /// half's top 24 bits; in the 32-bit view lane `i` holds element `2·half + i`'s draw
    /// (`random::draw_at`).
    #[inline(always)]
    unsafe fn pairs16(stream: u64, half: u64, t: __m512i) -> u16 {
        let (c1, c2) = (
            _mm512_set1_epi64(0xbf58_476d_1ce4_e5b9_u64 as i64),
            _mm512_set1_epi64(0x94d0_49bb_1331_11eb_u64 as i64),
        );
        let base = _mm512_set1_epi64(stream.wrapping_add(half) as i64);
        let mut z = _mm512_add_epi64(base, _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), c1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2);
        z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
        _mm512_cmpge_epu32_mask(_mm512_srli_epi32(z, 8), t)
    }

    /// The keep bits of elements `idx..idx + 16` of a stream: one `pairs16` from an even
    /// index, two shifted by one from an odd one.
    #[inline(always)]
    unsafe fn keep16(stream: u64, idx: u64, t: __m512i) -> __mmask16 {
        let half = idx >> 1;
        if idx & 1 == 0 {
            pairs16(stream, half, t)
        } else {
            let lo = pairs16(stream, half, t) as u32;
            let hi = pairs16(stream, half.wrapping_add(8), t) as u32;
            ((lo | hi << 16) >> 1) as u16
        }
    }

    /// `super::factors`: 16 lanes per `keep16`, the rest by the definition.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub unsafe fn factors(stream: u64, first: u64, p: f32, out: &mut [f32]) {
        let t = threshold(p);
        let scale = super::kept_factor(p);
        let full = out.len() / 16 * 16;
        for j in (0..full).step_by(16) {
            let f = factors16(stream, first.wrapping_add(j as u64), t, scale);
            // SAFETY: j + 16 <= full <= out.len().
            _mm512_storeu_ps(out.as_mut_ptr().add(j), f);
        }
        super::scalar(stream, first + full as u64, p, &mut out[full..]);
    }

    /// The factors of elements `idx..idx + 16`: `scale` where kept, else 0.
    #[inline(always)]
    unsafe fn factors16(stream: u64, idx: u64, t: __m512i, scale: f32) -> __m512 {
        let keep = keep16(stream, idx, t);
        _mm512_mask_blend_ps(keep, _mm512_setzero_ps(), _mm512_set1_ps(scale))
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub unsafe fn apply(stream: u64, first: u64, p: f32, x: &[f32], out: &mut [f32]) {
        let t = threshold(p);
        let scale = super::kept_factor(p);
        let n = x.len().min(out.len());
        let full = n / 16 * 16;
        for j in (0..full).step_by(16) {
            let f = factors16(stream, first.wrapping_add(j as u64), t, scale);
            // SAFETY: j + 16 <= full <= both lengths.
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(j)), f);
            _mm512_storeu_ps(out.as_mut_ptr().add(j), v);
        }
        for j in full..n {
            out[j] = x[j] * super::factor_at(stream, first + j as u64, p);
        }
    }

    /// `super::keep_words`: from an even first index, whole words as four `pairs16`
    /// chains; the rest 16 draws per `keep16`, the last partial group masked to `n`.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub unsafe fn keep_words(stream: u64, first: u64, p: f32, n: usize, out: &mut [i64]) {
        let t = threshold(p);
        out.fill(0);
        let mut j = 0;
        if first & 1 == 0 {
            while j + 64 <= n {
                let half = first.wrapping_add(j as u64) >> 1;
                let k0 = pairs16(stream, half, t) as u64;
                let k1 = pairs16(stream, half.wrapping_add(8), t) as u64;
                let k2 = pairs16(stream, half.wrapping_add(16), t) as u64;
                let k3 = pairs16(stream, half.wrapping_add(24), t) as u64;
                out[j / 64] = (k0 | k1 << 16 | k2 << 32 | k3 << 48) as i64;
                j += 64;
            }
        }
        for j in (j..n).step_by(16) {
            let mut k = keep16(stream, first.wrapping_add(j as u64), t) as u64;
            if n - j < 16 {
                k &= (1u64 << (n - j)) - 1;
            }
            out[j / 64] |= (k << (j % 64)) as i64;
        }
    }

    /// `super::apply_bits` (or, with `ACC`, `super::accumulate_bits`) 16 lanes at a time:
    /// each group's 16 bits select `scale` or 0, then one product (and one sum) per lane.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub unsafe fn apply_bits<const ACC: bool>(
        words: &[i64],
        scale: f32,
        x: &[f32],
        out: &mut [f32],
    ) {
        let n = x.len().min(out.len());
        let full = n / 16 * 16;
        let (zero, kept) = (_mm512_setzero_ps(), _mm512_set1_ps(scale));
        for j in (0..full).step_by(16) {
            let k = (words[j / 64] as u64 >> (j % 64)) as u16;
            let f = _mm512_mask_blend_ps(k, zero, kept);
            // SAFETY: j + 16 <= full <= both lengths.
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(j)), f);
            let o = out.as_mut_ptr().add(j);
            let v = if ACC {
                _mm512_add_ps(_mm512_loadu_ps(o), v)
            } else {
                v
            };
            _mm512_storeu_ps(o, v);
        }
        for j in full..n {
            let v = x[j] * super::bit_factor(words, scale, j);
            out[j] = if ACC { out[j] + v } else { v };
        }
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
        // `apply`, `apply_bits` and `accumulate_bits` equal the definitions (NaN and
        // infinities included).
        for n in [0, 1, 15, 16, 17, 100] {
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => f32::INFINITY,
                    1 => f32::NAN,
                    _ => i as f32 * -0.37,
                })
                .collect();
            let (mut got, mut acc) = (vec![0f32; n], vec![1.5f32; n]);
            apply(0xfeed, 3, 0.3, &x, &mut got);
            let mut words = vec![0i64; routing::words(n)];
            keep_words(0xfeed, 3, 0.3, n, &mut words);
            let mut by_bits = vec![0f32; n];
            apply_bits(&words, 1.0 / (1.0 - 0.3), &x, &mut by_bits);
            accumulate_bits(&words, 1.0 / (1.0 - 0.3), &x, &mut acc);
            for j in 0..n {
                let f = factor_at(0xfeed, 3 + j as u64, 0.3);
                assert_eq!(got[j].to_bits(), (x[j] * f).to_bits(), "apply n {n} j {j}");
                let b = by_bits[j].to_bits();
                assert_eq!(b, (x[j] * f).to_bits(), "apply_bits n {n} j {j}");
                assert_eq!(
                    acc[j].to_bits(),
                    (1.5 + x[j] * f).to_bits(),
                    "acc n {n} j {j}"
                );
            }
        }
        // Keep bits equal the definition's, bits past `n` clear, at every length and
        // alignment of the first element.
        for (stream, first) in [
            (7u64, 0u64),
            (0x55, 2),
            (u64::MAX - 9, 13),
            (0xabcdef, 1 << 33),
        ] {
            for p in [0.0f32, 0.05, 0.5, 1.0] {
                for n in [0, 1, 15, 16, 17, 63, 64, 65, 383, 384, 1536] {
                    let w = routing::words(n);
                    let (mut a, mut b) = (vec![-1i64; w], vec![-1i64; w]);
                    keep_words(stream, first, p, n, &mut a);
                    routing::keep_words(stream, first, p, n, &mut b);
                    assert_eq!(a, b, "stream {stream:#x} first {first} p {p} n {n}");
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
