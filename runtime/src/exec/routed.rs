//! Host implementations of routed experts' ops (`ops/routing.rs`): the keep bits of every
//! row's selected experts (drawn once), the projection on them and its two gradients. The
//! three expand the bits into factors in registers and compute exactly the chains the
//! reference defines, so the CPU backend and the reference interpreter agree bit for bit:
//! with AVX-512 each dropped row is formed in registers (`avx512::factors16`) and two chains
//! run per read of `x`; elsewhere through `mask::apply_bits` / `mask::accumulate_bits`.

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

    /// Row `t`'s (slot, result column) pairs: each selected expert's `d` columns.
    fn pairs(&self, t: usize, d: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.selected(t)
            .enumerate()
            .flat_map(move |(i, e)| (e * d..(e + 1) * d).map(move |c| (i, c)))
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
    project_with(x, a, n, r, out, fused_available());
}

/// [`project`], each row's dropped copies formed in registers with two projections at once
/// (`avx512::masked_dots`; `fused`, which needs AVX-512F), or as the definition writes it:
/// each selected expert's dropped row, then one `dot16` per result column.
fn project_with(x: &[f32], a: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32], fused: bool) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fused;
    // Q from the output (`a` is empty when n = 0).
    let rows = r.mask.len() / r.experts.max(1);
    let q = out.len() / rows.max(1);
    let d = q / r.experts.max(1);
    #[cfg(target_arch = "x86_64")]
    if fused {
        out.par_chunks_mut(q.max(1)).enumerate().for_each(|(t, o)| {
            o.fill(0.0);
            let xr = &x[t * n..(t + 1) * n];
            // Every (slot, result column) pair of the row, projected two at a time.
            let mut pairs = r.pairs(t, d);
            while let Some((i0, c0)) = pairs.next() {
                let first = (r.bits(t, i0), &a[c0 * n..(c0 + 1) * n]);
                // SAFETY (both calls): `fused` means the feature was detected.
                if let Some((i1, c1)) = pairs.next() {
                    let second = (r.bits(t, i1), &a[c1 * n..(c1 + 1) * n]);
                    let [y0, y1] = unsafe { avx512::masked_dots(xr, [first, second], r.scale) };
                    (o[c0], o[c1]) = (y0, y1);
                } else {
                    o[c0] = unsafe { avx512::masked_dots(xr, [first], r.scale) }[0];
                }
            }
        });
        return;
    }
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
    expand_with(g, a, n, r, out, fused_available());
}

/// Whether the fused AVX-512 paths of the three ops can run here.
fn fused_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`expand`], each row in registers (`avx512::expand_row`; `fused`, which needs AVX-512F)
/// or as the definition writes it.
fn expand_with(g: &[f32], a: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32], fused: bool) {
    let q = a.len() / n.max(1);
    let d = q / r.experts.max(1);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fused;
    #[cfg(target_arch = "x86_64")]
    if fused {
        // Per row: each selected slot's keep bits and where its terms end, and the terms
        // (a nonzero g, the offset of its row of `a`), as `routing::expand_row` skips zeros.
        type Rows<'b> = (Vec<(&'b [i64], usize)>, Vec<(f32, usize)>);
        out.par_chunks_mut(n.max(1)).enumerate().for_each_init(
            || -> Rows<'_> { (vec![], vec![]) },
            |(slots, terms), (t, o)| {
                slots.clear();
                terms.clear();
                for (i, e) in r.selected(t).enumerate() {
                    for c in e * d..(e + 1) * d {
                        if g[t * q + c] != 0.0 {
                            terms.push((g[t * q + c], c * n));
                        }
                    }
                    slots.push((r.bits(t, i), terms.len()));
                }
                // SAFETY: `fused` means the feature was detected; every term's row lies
                // inside `a` (c < q) and `o` holds n values.
                unsafe { avx512::expand_row(o, a, slots, terms, r.scale) };
            },
        );
        return;
    }
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
    outer_with(g, x, n, r, out, fused_available());
}

/// [`outer`], its blocks by [`outer_rows_fused`] (`fused`, which needs AVX-512F) or as the
/// definition writes them.
fn outer_with(g: &[f32], x: &[f32], n: usize, r: &Routing<'_>, out: &mut [f32], fused: bool) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fused;
    let rows = r.mask.len() / r.experts.max(1);
    let q = g.len() / rows.max(1);
    let d = q / r.experts.max(1);
    let block = |b: usize| {
        let r0 = b * routing::OUTER_ROWS;
        let mut acc = vec![0f32; q * n];
        let rows = r0..rows.min(r0 + routing::OUTER_ROWS);
        #[cfg(target_arch = "x86_64")]
        if fused {
            // SAFETY: `fused` means the feature was detected.
            unsafe { outer_rows_fused(g, x, n, r, q, d, rows, &mut acc) };
            return acc;
        }
        let mut u = vec![0f32; n];
        for t in rows {
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

/// A block of [`outer`] with AVX-512: each row's dropped copies are formed in registers and
/// two of its (slot, column) sums are updated per read of `x` (`avx512::masked_axpys`), in
/// the order and with the chains of the definition (each column's sum still takes its rows
/// in order).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn outer_rows_fused(
    g: &[f32],
    x: &[f32],
    n: usize,
    r: &Routing<'_>,
    q: usize,
    d: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    for t in rows {
        let xr = &x[t * n..(t + 1) * n];
        let mut pairs = r.pairs(t, d);
        while let Some((i0, c0)) = pairs.next() {
            let first = (r.bits(t, i0), g[t * q + c0], c0 * n);
            // SAFETY (both calls): the feature is the caller's contract; the columns'
            // rows of `acc` are distinct (one column per pair) and n long.
            if let Some((i1, c1)) = pairs.next() {
                let second = (r.bits(t, i1), g[t * q + c1], c1 * n);
                unsafe { avx512::masked_axpys(xr, [first, second], r.scale, acc) };
            } else {
                unsafe { avx512::masked_axpys(xr, [first], r.scale, acc) };
            }
        }
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
        combine(acc)
    }

    /// The factors of elements `j..j + 16` of a slot's keep bits: `kept` where a bit is set,
    /// else `zero` (`j` a multiple of 16).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn factors16(bits: &[i64], j: usize, zero: __m512, kept: __m512) -> __m512 {
        let k = (bits[j / 64] as u64 >> (j % 64)) as u16;
        _mm512_mask_blend_ps(k, zero, kept)
    }

    /// The 16 lanes' chains combined as `routing::combine16` does.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn combine(v: __m512) -> f32 {
        let mut s = [0f32; routing::LANES];
        // SAFETY: `s` holds 16 values.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) };
        routing::combine16(s)
    }

    /// `dot16(x ⊙ f, a)` for `P` (keep bits, `a` row) pairs at once, `f` being `scale` where
    /// a bit is set, else 0: each pair's dropped row is formed in registers (the product
    /// `apply_bits` rounds) and feeds its own 16-lane chain, exactly `dot16`'s; the pairs'
    /// chains are independent, so they overlap instead of waiting on one another.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn masked_dots<const P: usize>(
        x: &[f32],
        pairs: [(&[i64], &[f32]); P],
        scale: f32,
    ) -> [f32; P] {
        let n = pairs.iter().fold(x.len(), |n, p| n.min(p.1.len()));
        let (zero, kept) = (_mm512_setzero_ps(), _mm512_set1_ps(scale));
        let mut acc = [_mm512_setzero_ps(); P];
        let full = n / 16 * 16;
        for j in (0..full).step_by(16) {
            // SAFETY: j + 16 <= full <= the length of `x` and of every `a` row.
            let xv = _mm512_loadu_ps(x.as_ptr().add(j));
            for (q, &(bits, a)) in pairs.iter().enumerate() {
                let u = _mm512_mul_ps(xv, factors16(bits, j, zero, kept));
                acc[q] = _mm512_fmadd_ps(u, _mm512_loadu_ps(a.as_ptr().add(j)), acc[q]);
            }
        }
        if full < n {
            let m: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
            // SAFETY: masked loads touch only the n - full valid elements.
            let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(full));
            for (q, &(bits, a)) in pairs.iter().enumerate() {
                let u = _mm512_mul_ps(xv, factors16(bits, full, zero, kept));
                let av = _mm512_maskz_loadu_ps(m, a.as_ptr().add(full));
                acc[q] = _mm512_mask3_fmadd_ps(u, av, acc[q], m);
            }
        }
        acc.map(|v| combine(v))
    }

    /// `acc[at..at + n] = fma(g, x ⊙ f, acc[..])` for `P` (keep bits, `g`, row offset)
    /// triples at once, `f` as in `masked_dots`: the product `apply_bits` rounds, then the
    /// definition's `axpy` chain, one read of `x` for all of them. Offsets must be distinct
    /// rows of `acc`, each `n = x.len()` long.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn masked_axpys<const P: usize>(
        x: &[f32],
        rows: [(&[i64], f32, usize); P],
        scale: f32,
        acc: &mut [f32],
    ) {
        let n = x.len();
        assert!(rows.iter().all(|r| r.2 + n <= acc.len()), "rows inside acc");
        let (zero, kept) = (_mm512_setzero_ps(), _mm512_set1_ps(scale));
        let base = acc.as_mut_ptr();
        let full = n / 16 * 16;
        for j in (0..full).step_by(16) {
            // SAFETY: j + 16 <= full <= n, and every row lies inside `acc` (asserted).
            let xv = _mm512_loadu_ps(x.as_ptr().add(j));
            for &(bits, g, at) in &rows {
                let u = _mm512_mul_ps(xv, factors16(bits, j, zero, kept));
                let o = base.add(at + j);
                _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_set1_ps(g), u, _mm512_loadu_ps(o)));
            }
        }
        if full < n {
            let m: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
            // SAFETY: masked loads and stores touch only the n - full valid elements.
            let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(full));
            for &(bits, g, at) in &rows {
                let u = _mm512_mul_ps(xv, factors16(bits, full, zero, kept));
                let o = base.add(at + full);
                let v = _mm512_fmadd_ps(_mm512_set1_ps(g), u, _mm512_maskz_loadu_ps(m, o));
                _mm512_mask_storeu_ps(o, m, v);
            }
        }
    }

    /// One row of `RoutedExpand` in registers: for each 16 columns, `o = 0`, then per slot
    /// `v` = its terms' fma chain from +0 (`routing::expand_row`) and `o = o + v ⊙ f` (the
    /// product, then the sum: `accumulate_bits`), stored once. `slots` pairs each slot's
    /// keep bits with the end of its terms in `terms` (nonzero `g`, offset of its `a` row).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn expand_row(
        o: &mut [f32],
        a: &[f32],
        slots: &[(&[i64], usize)],
        terms: &[(f32, usize)],
        scale: f32,
    ) {
        let n = o.len();
        assert!(terms.iter().all(|t| t.1 + n <= a.len()), "terms inside a");
        let (zero, kept) = (_mm512_setzero_ps(), _mm512_set1_ps(scale));
        let full = n / 16 * 16;
        let chunk = |j: usize, m: __mmask16| -> __m512 {
            let mut acc = _mm512_setzero_ps();
            let mut start = 0;
            for &(bits, end) in slots {
                let mut v = _mm512_setzero_ps();
                for &(gq, at) in &terms[start..end] {
                    // SAFETY: masked lanes past n are not read; rows lie inside `a`.
                    let av = _mm512_maskz_loadu_ps(m, a.as_ptr().add(at + j));
                    v = _mm512_fmadd_ps(_mm512_set1_ps(gq), av, v);
                }
                start = end;
                let f = factors16(bits, j, zero, kept);
                acc = _mm512_add_ps(acc, _mm512_mul_ps(v, f));
            }
            acc
        };
        for j in (0..full).step_by(16) {
            let v = chunk(j, !0);
            // SAFETY: j + 16 <= full <= n.
            _mm512_storeu_ps(o.as_mut_ptr().add(j), v);
        }
        if full < n {
            let m: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
            let v = chunk(full, m);
            // SAFETY: the masked store touches only the n - full valid elements.
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(full), m, v);
        }
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

    /// The fused projection, outer sums and expansion (dropped rows in registers, two chains
    /// at once) equal the definition's paths bit for bit: odd pair counts (k·d = 3), rows
    /// with fewer experts selected than k, tails, NaN and infinities in `x`. Needs an
    /// AVX-512 host (CI's is one); elsewhere it says it skipped.
    #[test]
    fn fused_project_and_outer_equal_the_definition() {
        if !fused_available() {
            eprintln!("skipped: no AVX-512 on this host");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let (t, e) = (7usize, 4usize);
            for n in [1usize, 15, 16, 17, 100, 384] {
                for (k, d) in [(2usize, 1usize), (3, 1), (2, 2), (1, 3)] {
                    let mut mask = vec![0f32; t * e];
                    for row in 0..t {
                        // Row 0 selects nothing, row 1 one expert, the others k.
                        for s in 0..k.min(row) {
                            mask[row * e + (row + s) % e] = 1.0;
                        }
                    }
                    let w = routing::words(n);
                    let keep: Vec<i64> = (0..t * k * w)
                        .map(|i| (i as i64).wrapping_mul(0x5851_f42d_4c95_7f2d) ^ 0x1234)
                        .collect();
                    let r = Routing {
                        mask: &mask,
                        experts: e,
                        k,
                        scale: 1.0 / 0.95,
                        keep: &keep,
                        words: w,
                    };
                    let x: Vec<f32> = (0..t * n)
                        .map(|i| match i % 97 {
                            5 => f32::INFINITY,
                            9 => f32::NAN,
                            _ => ((i * 37 % 101) as f32 - 50.0) / 7.0,
                        })
                        .collect();
                    let a: Vec<f32> = (0..e * d * n)
                        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                        .collect();
                    let q = e * d;
                    let (mut fused, mut def) = (vec![7f32; t * q], vec![7f32; t * q]);
                    project_with(&x, &a, n, &r, &mut fused, true);
                    project_with(&x, &a, n, &r, &mut def, false);
                    // Bit for bit, NaN as NaN (which operand's NaN an fma passes on
                    // depends on register allocation).
                    let same = |a: &[f32], b: &[f32], what: &str| {
                        for (i, (x, y)) in a.iter().zip(b).enumerate() {
                            let ok = x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
                            assert!(ok, "{what} n {n} k {k} d {d} [{i}]: {x} vs {y}");
                        }
                    };

                    same(&fused, &def, "project");
                    // The column sums of `RoutedOuter` from the same routing, blocks of
                    // more than one wave's rows (the projection `def` stands in for `g`).
                    let big = 3 * routing::OUTER_ROWS * rayon::current_num_threads() + 5;
                    let rep = |v: &[f32], w: usize| -> Vec<f32> {
                        (0..big)
                            .flat_map(|i| v[(i % t) * w..][..w].to_vec())
                            .collect()
                    };
                    // Finite values here, so the sums are numbers to compare.
                    let fin = |v: &[f32]| -> Vec<f32> {
                        v.iter()
                            .map(|&y| if y.is_finite() { y } else { 0.5 })
                            .collect()
                    };
                    let (maskb, xb, gb) = (rep(&mask, e), rep(&fin(&x), n), rep(&fin(&def), q));
                    let keepb: Vec<i64> = (0..big)
                        .flat_map(|i| keep[(i % t) * k * w..][..k * w].to_vec())
                        .collect();
                    let rb = Routing {
                        mask: &maskb,
                        keep: &keepb,
                        ..r
                    };
                    let (mut of, mut od) = (vec![7f32; q * n], vec![7f32; q * n]);
                    outer_with(&gb, &xb, n, &rb, &mut of, true);
                    outer_with(&gb, &xb, n, &rb, &mut od, false);
                    same(&of, &od, "outer");
                    // And `RoutedExpand`'s rows (with zero gates, which the chains skip).
                    let mut gz = fin(&def);
                    gz.iter_mut().step_by(3).for_each(|v| *v = 0.0);
                    let (mut ef, mut ed) = (vec![7f32; t * n], vec![7f32; t * n]);
                    expand_with(&gz, &a, n, &r, &mut ef, true);
                    expand_with(&gz, &a, n, &r, &mut ed, false);
                    same(&ef, &ed, "expand");
                }
            }
        }
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
