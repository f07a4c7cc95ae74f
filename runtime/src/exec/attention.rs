//! Host implementations of attention's score ops (`ops/attention.rs`). `AttnProbs` computes
//! each score matrix on one thread and turns its rows into probabilities while they are in
//! cache; `AttnGrad` runs row by row in parallel. With AVX-512 the rows run 16 lanes at a
//! time (the exponent through `wide`, the f64 row sums as `sum_f64`'s four chains in one
//! 4-lane register), performing the reference's operations in its order, so the CPU backend
//! and the reference interpreter agree bit for bit (tested below and in conformance).

use lorac_compiler::ir::ops::attention::{grad_row, probs_matrix, softmax_row, Geometry};
use lorac_compiler::ir::ops::thin::has_avx512;
use rayon::prelude::*;

/// `ops::attention::softmax_row`, vectorised where the host allows.
fn softmax_fast(s: &mut [f32], mask: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && mask.len() >= s.len() {
        // SAFETY: the features were detected; the mask covers the row.
        unsafe { avx512::softmax_row(s, mask, scale) };
        return;
    }
    softmax_row(s, mask, scale);
}

/// `ops::attention::grad_row`, vectorised where the host allows.
fn grad_fast(p: &[f32], g: &[f32], out: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && p.len() == g.len() && p.len() == out.len() {
        // SAFETY: the features were detected; the three rows have one length.
        unsafe { avx512::grad_row(p, g, out, scale) };
        return;
    }
    grad_row(p, g, out, scale);
}

/// `Op::AttnProbs`: one score matrix per task, parallel over the batch.
pub fn probs(geo: &Geometry, scale: f32, q: &[f32], k: &[f32], mask: &[f32], out: &mut [f32]) {
    let (m, n, d) = (geo.m, geo.n, geo.d);
    if m * n == 0 {
        return;
    }
    out[..geo.batch * m * n]
        .par_chunks_mut(m * n)
        .enumerate()
        .for_each_init(Vec::new, |kt, (b, o)| {
            probs_matrix(
                geo,
                b,
                scale,
                &q[b * m * d..],
                &k[b * n * d..],
                mask,
                kt,
                o,
                softmax_fast,
            );
        });
}

/// `Op::AttnGrad`: rows of length `n`, parallel over blocks of rows.
pub fn grad(p: &[f32], g: &[f32], out: &mut [f32], n: usize, scale: f32) {
    if n == 0 {
        return;
    }
    // ~64 KiB of output per task: enough work to amortise the split.
    let rows = (16384 / n).max(1);
    out[..p.len()]
        .par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(c, o)| {
            let at = c * rows * n;
            for ((o, pr), gr) in o
                .chunks_exact_mut(n)
                .zip(p[at..].chunks_exact(n))
                .zip(g[at..].chunks_exact(n))
            {
                grad_fast(pr, gr, o, scale);
            }
        });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use lorac_compiler::ir::ops::elementwise::max;
    use lorac_compiler::lower::cpu::wide;
    use std::arch::x86_64::*;

    /// `elementwise::max` lane-wise: `y` where `y > x` or `x` is NaN, else `x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn max16(x: __m512, y: __m512) -> __m512 {
        let take =
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, x) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_blend_ps(take, x, y)
    }

    /// `reduce::sum_f64` of `n` values given as f32 groups of four by `quad(k)` (elements
    /// `k..k+4`) and one at a time by `one(k)`: chain `k mod 4` is lane `k mod 4` of one
    /// 4-lane f64 register, added in order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum_f64(n: usize, quad: impl Fn(usize) -> __m128, one: impl Fn(usize) -> f32) -> f64 {
        let full = n / 4 * 4;
        let mut acc = _mm256_set1_pd(-0.0);
        for k in (0..full).step_by(4) {
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(quad(k)));
        }
        let mut s = [0f64; 4];
        // SAFETY: `s` holds four f64.
        unsafe { _mm256_storeu_pd(s.as_mut_ptr(), acc) };
        let mut t = (s[0] + s[1]) + (s[2] + s[3]);
        for k in full..n {
            t += one(k) as f64;
        }
        t
    }

    /// `ops::attention::softmax_row` 16 lanes at a time.
    ///
    /// # Safety
    /// AVX-512F/VL and FMA must be available; `mask` holds at least `s.len()` values.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub unsafe fn softmax_row(s: &mut [f32], mask: &[f32], scale: f32) {
        let n = s.len();
        let full = n / 16 * 16;
        let (sp, mp) = (s.as_mut_ptr(), mask.as_ptr());
        let sc = _mm512_set1_ps(scale);
        let mut top16 = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY (all loads and stores below): indices stay below `n` ≤ `mask.len()`.
        for j in (0..full).step_by(16) {
            unsafe {
                let x = _mm512_mul_ps(_mm512_loadu_ps(sp.add(j)), sc);
                let x = _mm512_add_ps(x, _mm512_loadu_ps(mp.add(j)));
                _mm512_storeu_ps(sp.add(j), x);
                top16 = max16(top16, x);
            }
        }
        let mut lanes = [0f32; 16];
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), top16) };
        // The lanes' and the tail's maxima in any order: the value is the same, and a ±0
        // maximum gives the same exponents either way.
        let mut top = lanes.iter().copied().fold(f32::NEG_INFINITY, max);
        // The tail through `sp` as well: a write through `s` would invalidate the pointer.
        for j in full..n {
            unsafe {
                let x = *sp.add(j) * scale + *mp.add(j);
                *sp.add(j) = x;
                top = max(top, x);
            }
        }
        let t16 = _mm512_set1_ps(top);
        for j in (0..full).step_by(16) {
            unsafe { _mm512_storeu_ps(sp.add(j), _mm512_sub_ps(_mm512_loadu_ps(sp.add(j)), t16)) };
        }
        for j in full..n {
            unsafe { *sp.add(j) -= top };
        }
        unsafe { wide::lorac_exp_wide(sp, sp, n as i64) };
        let t = sum_f64(
            n,
            |k| unsafe { _mm_loadu_ps(sp.add(k)) },
            |k| unsafe { *sp.add(k) },
        ) as f32;
        let d16 = _mm512_set1_ps(t);
        for j in (0..full).step_by(16) {
            unsafe { _mm512_storeu_ps(sp.add(j), _mm512_div_ps(_mm512_loadu_ps(sp.add(j)), d16)) };
        }
        for j in full..n {
            unsafe { *sp.add(j) /= t };
        }
    }

    /// `ops::attention::grad_row` 16 lanes at a time.
    ///
    /// # Safety
    /// AVX-512F/VL and FMA must be available; the three rows have one length.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub unsafe fn grad_row(p: &[f32], g: &[f32], out: &mut [f32], scale: f32) {
        let n = p.len();
        let full = n / 16 * 16;
        let (pp, gp, op) = (p.as_ptr(), g.as_ptr(), out.as_mut_ptr());
        // SAFETY (all loads and stores below): indices stay below `n`.
        let quad =
            |k: usize| unsafe { _mm_mul_ps(_mm_loadu_ps(gp.add(k)), _mm_loadu_ps(pp.add(k))) };
        let t = sum_f64(n, quad, |k| g[k] * p[k]) as f32;
        let (t16, sc) = (_mm512_set1_ps(t), _mm512_set1_ps(scale));
        for j in (0..full).step_by(16) {
            unsafe {
                let u = _mm512_sub_ps(_mm512_loadu_ps(gp.add(j)), t16);
                let u = _mm512_mul_ps(u, _mm512_loadu_ps(pp.add(j)));
                _mm512_storeu_ps(op.add(j), _mm512_mul_ps(u, sc));
            }
        }
        for j in full..n {
            out[j] = ((g[j] - t) * p[j]) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row generator with the cases that matter: large and tiny scores, ±0, ±∞, NaN.
    fn row(n: usize, seed: u64, special: bool) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                match (special, j % 11) {
                    (true, 3) => f32::MIN,
                    (true, 5) => -0.0,
                    (true, 7) if seed.is_multiple_of(3) => f32::NEG_INFINITY,
                    (true, 9) if seed.is_multiple_of(5) => f32::NAN,
                    _ => u * 30.0,
                }
            })
            .collect()
    }

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    /// The AVX-512 rows equal the reference rows bit for bit at every length mod 16 (called
    /// directly, so the test cannot compare the fallback with itself).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn fast_rows_are_the_reference_rows() {
        if !has_avx512() {
            eprintln!("skipped: this CPU has no AVX-512, so the AVX-512 rows never run");
            return;
        }
        for n in [1, 3, 4, 15, 16, 17, 50, 128, 131, 783] {
            for seed in 0..12u64 {
                let special = seed % 2 == 1;
                let (s, mask) = (row(n, seed, false), row(n, seed + 100, special));
                let (mut a, mut b) = (s.clone(), s.clone());
                // SAFETY: AVX-512 was detected above; the mask covers the row.
                unsafe { avx512::softmax_row(&mut a, &mask, 0.176_776_7) };
                softmax_row(&mut b, &mask, 0.176_776_7);
                assert!(same(&a, &b), "softmax n={n} seed={seed}");
                let (p, g) = (row(n, seed + 7, special), row(n, seed + 9, false));
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                // SAFETY: as above; the three rows have one length.
                unsafe { avx512::grad_row(&p, &g, &mut a, 0.3) };
                grad_row(&p, &g, &mut b, 0.3);
                assert!(same(&a, &b), "grad n={n} seed={seed}");
            }
        }
    }
}
