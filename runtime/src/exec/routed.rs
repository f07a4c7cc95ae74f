//! Host implementations of routed experts' ops (`ops/routing.rs`): the keep bits of every
//! row's selected experts (drawn once), the projection on them and its two gradients. The
//! three expand the bits into factors in registers (`mask::apply_bits`,
//! `mask::accumulate_bits`: AVX-512) and compute exactly the chains the reference defines, so
//! the CPU backend and the reference interpreter agree bit for bit.

use lorac_compiler::ir::ops::routing::{self, selected};
use rayon::prelude::*;

/// The routing shared by the three ops: the top-k mask `[T, E]`, `k`, a kept element's
/// factor and the `RoutedKeep` bits.
pub struct Routing<'a> {
    /// The router's top-k mask, row-major `[T, E]`.
    pub mask: &'a [f32],
    /// E.
    pub experts: usize,
    /// Experts per row.
    pub k: usize,
    /// `1 / (1 − p)`.
    pub scale: f32,
    /// The keep bits, `[T, k, words]`.
    pub keep: &'a [i64],
    /// Words per slot (`routing::words(n)`).
    pub words: usize,
}

impl Routing<'_> {
    fn selected(&self, r: usize) -> impl Iterator<Item = usize> + '_ {
        selected(&self.mask[r * self.experts..(r + 1) * self.experts], self.k)
    }

    /// The keep words of row `t`'s slot `i`.
    fn bits(&self, t: usize, i: usize) -> &[i64] {
        let at = (t * self.k + i) * self.words;
        &self.keep[at..at + self.words]
    }

    /// `u = x ⊙` the factors of row `t`'s slot `i`.
    fn apply(&self, t: usize, i: usize, x: &[f32], u: &mut [f32]) {
        super::mask::apply_bits(self.bits(t, i), self.scale, x, u);
    }
}

/// `Op::RoutedKeep`: each row's selected experts' keep bits (`streams[e]`, elements
/// `t·n ..`), parallel over rows; slots past the selection stay 0.
pub fn keep(
    mask: &[f32],
    experts: usize,
    k: usize,
    p: f32,
    streams: &[u64],
    n: usize,
    out: &mut [i64],
) {
    let w = routing::words(n);
    out.par_chunks_mut((k * w).max(1))
        .enumerate()
        .for_each(|(t, o)| {
            o.fill(0);
            let row = &mask[t * experts..(t + 1) * experts];
            for (i, e) in selected(row, k).enumerate() {
                super::mask::keep_words(streams[e], (t * n) as u64, p, n, &mut o[i * w..][..w]);
            }
        });
}

/// `Op::RoutedProject`: `x[T, n]`, `a[Q, n]` → `out[T, Q]`, parallel over rows.
pub fn project(x: &[f32], a: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32]) {
    // Q from the output (`a` is empty when n = 0).
    let rows = r.mask.len() / r.experts.max(1);
    let q = out.len() / rows.max(1);
    let d = q / r.experts.max(1);
    out.par_chunks_mut(q.max(1)).enumerate().for_each_init(
        || vec![0f32; n],
        |u, (t, o)| {
            o.fill(0.0);
            for (i, e) in r.selected(t).enumerate() {
                r.apply(t, i, &x[t * n..(t + 1) * n], u);
                for c in e * d..(e + 1) * d {
                    o[c] = dot16(u, &a[c * n..(c + 1) * n]);
                }
            }
        },
    );
}

/// `Op::RoutedExpand`: `g[T, Q]`, `a[Q, n]` → `out[T, n]`, parallel over rows: each selected
/// expert's product row (`expand`, the definition's chains) under its mask, summed in order.
pub fn expand(g: &[f32], a: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32]) {
    let q = a.len() / n.max(1);
    let d = q / r.experts.max(1);
    out.par_chunks_mut(n.max(1)).enumerate().for_each_init(
        || vec![0f32; n],
        |v, (t, o)| {
            o.fill(0.0);
            for (i, e) in r.selected(t).enumerate() {
                let gb = &g[t * q + e * d..t * q + (e + 1) * d];
                expand_rows(gb, &a[e * d * n..(e + 1) * d * n], n, v);
                super::mask::accumulate_bits(r.bits(t, i), r.scale, v, o);
            }
        },
    );
}

/// `Op::RoutedOuter`: `g[T, Q]`, `x[T, n]` → `out[Q, n]`, one task per block of
/// `routing::OUTER_ROWS` rows (contiguous reads of `x`), each the definition's chains over its
/// rows; the blocks' sums are then added in block order, as the definition says. Blocks run
/// in waves of two per thread, so the partial sums held at once do not grow with `T`.
pub fn outer(g: &[f32], x: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32]) {
    let rows = r.mask.len() / r.experts.max(1);
    let q = g.len() / rows.max(1);
    let d = q / r.experts.max(1);
    let block = |b: usize| {
        let r0 = b * routing::OUTER_ROWS;
        let mut acc = vec![0f32; q * n];
        let mut u = vec![0f32; n];
        for t in r0..rows.min(r0 + routing::OUTER_ROWS) {
            for (i, e) in r.selected(t).enumerate() {
                r.apply(t, i, &x[t * n..(t + 1) * n], &mut u);
                for c in e * d..(e + 1) * d {
                    axpy(g[t * q + c], &u, &mut acc[c * n..(c + 1) * n]);
                }
            }
        }
        acc
    };
    let nblocks = rows.div_ceil(routing::OUTER_ROWS);
    if nblocks == 0 {
        out.fill(0.0);
        return;
    }
    let wave = 2 * rayon::current_num_threads().max(1);
    let mut b0 = 0;
    while b0 < nblocks {
        let sums: Vec<Vec<f32>> = (b0..nblocks.min(b0 + wave))
            .into_par_iter()
            .map(block)
            .collect();
        for (i, acc) in sums.iter().enumerate() {
            if b0 + i == 0 {
                out.copy_from_slice(acc);
            } else {
                out.iter_mut().zip(acc).for_each(|(o, a)| *o += a);
            }
        }
        b0 += wave;
    }
}

/// Whether the CPU has FMA (with AVX2): the fallbacks below then compile the definitions'
/// `mul_add` chains to instructions instead of libm `fmaf` calls (same chains, same bits).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `routing::dot16`, on AVX-512 where the CPU has it (the 16 lanes are one register).
fn dot16(u: &[f32], a: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature the function enables was detected just above.
            return unsafe { avx512::dot16(u, a) };
        }
        if has_fma() {
            // SAFETY: `has_fma` detected the features the function enables.
            return unsafe { avx512::dot16_fma(u, a) };
        }
    }
    routing::dot16(u, a)
}

/// `acc[j] = fma(g, u[j], acc[j])`, with FMA instructions where the CPU has them.
fn axpy(g: f32, u: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: `has_fma` detected the features the function enables.
        unsafe { avx512::axpy_fma(g, u, acc) };
        return;
    }
    axpy_def(g, u, acc);
}

#[inline(always)]
fn axpy_def(g: f32, u: &[f32], acc: &mut [f32]) {
    for (o, &u) in acc.iter_mut().zip(u) {
        *o = g.mul_add(u, *o);
    }
}

/// `routing::expand_row`, with FMA instructions where the CPU has them.
fn expand_rows(g: &[f32], a: &[f32], n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: `has_fma` detected the features the function enables.
        unsafe { avx512::expand_fma(g, a, n, out) };
        return;
    }
    routing::expand_row(g, a, n, out);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use lorac_compiler::ir::ops::routing;
    use std::arch::x86_64::*;

    /// `routing::dot16` with the 16 lanes in one register: lane `l` loads `j + l`, so it
    /// accumulates exactly the indices `≡ l (mod 16)`, in order; the tail is masked (lanes
    /// past `n` keep their sums untouched).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot16(u: &[f32], a: &[f32]) -> f32 {
        let n = u.len().min(a.len());
        let (up, ap) = (u.as_ptr(), a.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let full = n / 16 * 16;
        for j in (0..full).step_by(16) {
            // SAFETY: j + 16 <= full <= the length of both operands.
            let uv = _mm512_loadu_ps(up.add(j));
            acc = _mm512_fmadd_ps(uv, _mm512_loadu_ps(ap.add(j)), acc);
        }
        if full < n {
            let m: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
            // SAFETY: masked loads touch only the n - full valid elements.
            let uv = _mm512_maskz_loadu_ps(m, up.add(full));
            acc = _mm512_mask3_fmadd_ps(uv, _mm512_maskz_loadu_ps(m, ap.add(full)), acc, m);
        }
        let mut s = [0f32; routing::LANES];
        _mm512_storeu_ps(s.as_mut_ptr(), acc);
        routing::combine16(s)
    }

    /// The definition compiled with FMA instructions (no AVX-512): the same chains.
    #[target_feature(enable = "fma,avx2")]
    pub unsafe fn dot16_fma(u: &[f32], a: &[f32]) -> f32 {
        routing::dot16(u, a)
    }

    #[target_feature(enable = "fma,avx2")]
    pub unsafe fn axpy_fma(g: f32, u: &[f32], acc: &mut [f32]) {
        super::axpy_def(g, u, acc);
    }

    #[target_feature(enable = "fma,avx2")]
    pub unsafe fn expand_fma(g: &[f32], a: &[f32], n: usize, out: &mut [f32]) {
        routing::expand_row(g, a, n, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty rows of `x` (n = 0) give zero projections, not a panic.
    #[test]
    fn project_of_empty_rows_is_zero() {
        let mask = [1f32, 0.0, 0.0, 1.0];
        let r = Routing {
            mask: &mask,
            experts: 2,
            k: 1,
            scale: 1.0 / 0.9,
            keep: &[],
            words: 0,
        };
        let mut out = vec![7f32; 2 * 4];
        project(&[], &[], 0, &r, &mut out);
        assert_eq!(out, vec![0f32; 8]);
    }

    /// The vector dot equals the definition bit for bit, tails included, and a closed form
    /// in f64 within rounding.
    #[test]
    fn dot16_equals_the_definition() {
        for n in [0, 1, 3, 15, 16, 17, 50, 384, 783] {
            let u: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let got = dot16(&u, &a);
            assert_eq!(got.to_bits(), routing::dot16(&u, &a).to_bits(), "n {n}");
            let want: f64 = (0..n).map(|j| u[j] as f64 * a[j] as f64).sum();
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "n {n}"
            );
        }
    }
}
