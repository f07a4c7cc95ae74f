//! Matrix products with one tiny dimension (LoRA rank 8): `x·Aᵀ`, `Xᵀ·G`, `G·B`, `Gᵀ·X`.
//! `gemm` packs and blocks for large square products; here every shape is memory bound
//! and its packing and thin micro-tiles cost more than the arithmetic.
//!
//! Summation order, defined on logical indices only so that it does not depend on operand
//! layout (the reference interpreter passes row-major copies, the CPU executor strided
//! views): every output is one sequential fused multiply-add chain over the reduction index,
//! `acc = 0; for p in 0..k { acc = fma(a[i, p], b[p, j], acc) }`. Outputs are independent,
//! so any vectorisation across outputs and any split of outputs across threads yields the
//! same bits; the AVX-512 path and the scalar fallback (`f32::mul_add`) agree exactly.

use rayon::prelude::*;

/// A read-only strided view of a logical `rows × cols` f32 matrix: element `(r, c)` is at
/// `ptr + r·rs + c·cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Address of element (0, 0).
    pub ptr: *const f32,
    /// Row stride in elements.
    pub rs: isize,
    /// Column stride in elements.
    pub cs: isize,
}

impl View {
    /// A contiguous row-major matrix with `cols` columns.
    pub fn row_major(data: &[f32], cols: usize) -> View {
        View {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }

    /// Element `(r, c)`.
    ///
    /// # Safety
    /// `(r, c)` must lie inside the viewed matrix.
    #[inline(always)]
    unsafe fn at(self, r: usize, c: usize) -> f32 {
        *self.ptr.offset(r as isize * self.rs + c as isize * self.cs)
    }
}

/// Smallest dimension this kernel takes: LoRA ranks and expert counts.
const THIN: usize = 16;

/// Smallest product (m·k·n) worth leaving `gemm` for.
const MIN_WORK: usize = 1 << 16;

/// Products below this many multiply-adds stay on one thread.
const PAR_WORK: usize = 1 << 18;

/// Whether `[m×k] @ [k×n]` goes through this kernel: a thin output side. A thin inner
/// dimension alone (`G·B`, output `m×n` both large) stays with `gemm` in the CPU executor: the
/// kernel handles it correctly but was slower in a training step (output writes dominate, gemm
/// does them better), and gemm computes exactly this module's chains there ([`defines`]).
pub fn applies(m: usize, k: usize, n: usize) -> bool {
    m.min(n) <= THIN && m.saturating_mul(k).saturating_mul(n) >= MIN_WORK
}

/// Whether this module's summation order is the definition of `[m×k] @ [k×n]`: a thin side
/// ([`applies`]) or a thin inner dimension (`k ≤ 16`, which fused kernels compute in
/// registers by the same chain). The reference interpreter computes these here; `gemm`'s
/// results equal them bit for bit on thin inner dimensions (tested), so the CPU executor may
/// call either.
pub fn defines(m: usize, k: usize, n: usize) -> bool {
    applies(m, k, n) || k <= THIN
}

/// Whether the AVX-512 path can run on this CPU.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which implementation computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AVX-512 if the CPU has it, else scalar.
    Auto,
    /// The scalar definition.
    Scalar,
    /// AVX-512 (the caller checked [`has_avx512`]).
    Avx512,
}

/// `out[m×n]` (contiguous row-major) `= a[m×k] @ b[k×n]`, with the summation order of the
/// module doc; `par` allows splitting the outputs across rayon threads.
///
/// # Safety
/// `a` and `b` must address every element of their logical shapes, `out` must hold `m·n`
/// writable elements not overlapping either operand.
pub unsafe fn matmul(m: usize, k: usize, n: usize, a: View, b: View, out: *mut f32, par: bool) {
    matmul_with(Path::Auto, m, k, n, a, b, out, par)
}

/// [`matmul`] on a chosen path (tests compare the paths).
///
/// # Safety
/// As [`matmul`]; `Path::Avx512` needs [`has_avx512`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_with(
    path: Path,
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    out: *mut f32,
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let vector = match path {
        Path::Auto => has_avx512(),
        Path::Scalar => false,
        Path::Avx512 => true,
    };
    if vector && b.cs != 1 && n > m {
        // The vector tiles need `b` row-contiguous. A transposed `b` larger than `a` (a
        // frozen weight read as `x·Wᵀ`) is not copied: compute `outᵀ = bᵀ·aᵀ` instead, with
        // the same chains (fma's product is symmetric), and transpose the small result.
        let packed: Vec<f32>;
        let at = if a.rs == 1 {
            View {
                ptr: a.ptr,
                rs: a.cs,
                cs: 1,
            }
        } else {
            packed = (0..k * m).map(|e| a.at(e % m, e / m)).collect();
            View::row_major(&packed, m)
        };
        let bt = View {
            ptr: b.ptr,
            rs: b.cs,
            cs: b.rs,
        };
        let mut t = vec![0f32; n * m];
        matmul_with(path, n, k, m, bt, at, t.as_mut_ptr(), par);
        for i in 0..m {
            for j in 0..n {
                *out.add(i * n + j) = t[j * m + i];
            }
        }
        return;
    }
    // Otherwise a transposed `b` is copied row-major: it is no larger than `a`, so the copy
    // costs at most one pass over the operands.
    let packed: Vec<f32>;
    let b = if vector && b.cs != 1 {
        packed = (0..k * n).map(|e| b.at(e / n, e % n)).collect();
        View::row_major(&packed, n)
    } else {
        b
    };
    // Addresses cross into rayon tasks as integers.
    let o = out as usize;
    let tile = |i0: usize, i1: usize, j0: usize, j1: usize| {
        // SAFETY: the caller's contract; tasks cover disjoint output blocks.
        unsafe {
            if vector {
                #[cfg(target_arch = "x86_64")]
                avx512::block(k, n, a, b, o as *mut f32, i0, i1, j0, j1);
            } else {
                scalar_tile(k, n, a, b, o as *mut f32, i0, i1, j0, j1);
            }
        }
    };
    if !par || m.saturating_mul(k).saturating_mul(n) < PAR_WORK {
        tile(0, m, 0, n);
        return;
    }
    // A few tasks per thread, cut along the longer output side in multiples of the
    // register tiles, so that each task reads wide contiguous runs of the big operand.
    let parts = 4 * rayon::current_num_threads();
    let (rows, cols) = if m >= n {
        (m.div_ceil(parts).next_multiple_of(16), n)
    } else {
        (m, n.div_ceil(parts).next_multiple_of(16))
    };
    let (rb, cb) = (m.div_ceil(rows), n.div_ceil(cols));
    (0..rb * cb).into_par_iter().for_each(|t| {
        let (r, c) = (t / cb, t % cb);
        tile(
            r * rows,
            ((r + 1) * rows).min(m),
            c * cols,
            ((c + 1) * cols).min(n),
        );
    });
}

// SAFETY: views are only read through, and `matmul`'s caller keeps them alive for the call.
unsafe impl Send for View {}
// SAFETY: as above.
unsafe impl Sync for View {}

/// [`scalar_block`], compiled with FMA instructions where the CPU has them (the same chains, so
/// the same bits; without them every `mul_add` is a libm call and the fallback crawls).
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_tile(
    k: usize,
    n: usize,
    a: View,
    b: View,
    out: *mut f32,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            return scalar_block_fma(k, n, a, b, out, i0, i1, j0, j1);
        }
    }
    scalar_block(k, n, a, b, out, i0, i1, j0, j1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_block_fma(
    k: usize,
    n: usize,
    a: View,
    b: View,
    out: *mut f32,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
) {
    scalar_block(k, n, a, b, out, i0, i1, j0, j1)
}

/// The definition on output block `[i0, i1) × [j0, j1)`: one `mul_add` chain per output,
/// in increasing `p` (run row by row so the fallback is not needlessly slow). Always inlined,
/// so [`scalar_block_fma`] gets FMA instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_block(
    k: usize,
    n: usize,
    a: View,
    b: View,
    out: *mut f32,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
) {
    let mut acc = vec![0f32; j1 - j0];
    for i in i0..i1 {
        acc.fill(0.0);
        for p in 0..k {
            let x = a.at(i, p);
            for (j, s) in (j0..j1).zip(acc.iter_mut()) {
                *s = x.mul_add(b.at(p, j), *s);
            }
        }
        std::slice::from_raw_parts_mut(out.add(i * n + j0), j1 - j0).copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::View;
    use std::arch::x86_64::*;

    /// A vector width: the few operations a tile needs, at 8 or 16 lanes. Outputs 8 wide
    /// (rank-8 factors' gradients, routers' logits) keep 8-lane vectors: at 16 lanes half
    /// of every operation would be masked off (measured slower); wider outputs take 16.
    trait Lanes {
        /// Lanes per vector.
        const L: usize;
        type V: Copy;
        unsafe fn zero() -> Self::V;
        unsafe fn load(m: u16, p: *const f32) -> Self::V;
        unsafe fn store(p: *mut f32, m: u16, v: Self::V);
        unsafe fn splat(x: f32) -> Self::V;
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    }

    /// 8 lanes (`__m256`).
    struct W8;
    /// 16 lanes (`__m512`).
    struct W16;

    impl Lanes for W8 {
        const L: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(m: u16, p: *const f32) -> __m256 {
            _mm256_maskz_loadu_ps(m as u8, p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, m: u16, v: __m256) {
            _mm256_mask_storeu_ps(p, m as u8, v)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
    }

    impl Lanes for W16 {
        const L: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(m: u16, p: *const f32) -> __m512 {
            _mm512_maskz_loadu_ps(m, p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, m: u16, v: __m512) {
            _mm512_mask_storeu_ps(p, m, v)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
    }

    /// Rows of `b` fetched ahead of the chains' current step: each step reads a new line
    /// of every column vector (rows lie a whole row of `b` apart), and without a prefetch
    /// the chains waited on those loads (measured: ~60 % of the loop's samples).
    const AHEAD: isize = 32;

    /// Output block `[i0, i1) × [j0, j1)` in register tiles: 8 or 16 columns per vector (lanes
    /// are outputs of one row), `R` rows × `C` vectors of accumulators, each lane one
    /// `fma` chain over p. The chains run a few dozen steps at a time over all tiles, parked in
    /// `out` in between (an exact f32 round trip), so the operand rows of one step stay
    /// in cache while every tile of the block reads them. `b` must have `cs == 1`.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        k: usize,
        n: usize,
        a: View,
        b: View,
        out: *mut f32,
        i0: usize,
        i1: usize,
        j0: usize,
        j1: usize,
    ) {
        debug_assert_eq!(b.cs, 1);
        // About 32 KiB of operand rows per pass: `b`'s block columns, and `a`'s block rows
        // when those lie side by side (a row-contiguous `a` streams row by row instead).
        let width = (j1 - j0) + if a.cs == 1 { 0 } else { i1 - i0 };
        let kb = (8192 / width).max(16);
        let mut p0 = 0;
        loop {
            let p1 = (p0 + kb).min(k);
            // Row tiles outer, so each one writes whole output row runs.
            let mut i = i0;
            while i < i1 {
                let h = (i1 - i).min(16);
                let mut j = j0;
                while j < j1 {
                    let w = (j1 - j).min(32);
                    let t = Tile {
                        k: (p0, p1),
                        n,
                        a,
                        b,
                        out,
                        j,
                        w,
                    };
                    let (mut r, end) = (i, i + h);
                    if w > 16 {
                        while r + 8 <= end {
                            t.run::<W16, 8, 2>(r);
                            r += 8;
                        }
                        if r + 4 <= end {
                            t.run::<W16, 4, 2>(r);
                            r += 4;
                        }
                        (r..end).for_each(|r| t.run::<W16, 1, 2>(r));
                    } else if w > 8 {
                        t.column::<W16>(r, end);
                    } else {
                        t.column::<W8>(r, end);
                    }
                    j += w;
                }
                i += h;
            }
            if p1 >= k {
                break;
            }
            p0 = p1;
        }
    }

    /// One pass `p ∈ [k.0, k.1)` over columns `j..j+w` (`w ≤ 32`; lanes past `w` masked).
    struct Tile {
        k: (usize, usize),
        n: usize,
        a: View,
        b: View,
        out: *mut f32,
        j: usize,
        w: usize,
    }

    impl Tile {
        /// Rows `r..end` (at most 16) with one vector per row.
        #[target_feature(enable = "avx512f,avx512vl,fma")]
        #[inline]
        unsafe fn column<V: Lanes>(&self, mut r: usize, end: usize) {
            if r + 16 <= end {
                self.run::<V, 16, 1>(r);
                r += 16;
            }
            if r + 8 <= end {
                self.run::<V, 8, 1>(r);
                r += 8;
            }
            (r..end).for_each(|r| self.run::<V, 1, 1>(r));
        }

        /// Rows `i..i+R` with `C` vectors per row (`w ≤ V::L·C`).
        #[target_feature(enable = "avx512f,avx512vl,fma")]
        #[inline]
        unsafe fn run<V: Lanes, const R: usize, const C: usize>(&self, i: usize) {
            let Tile {
                k: (p0, p1),
                n,
                a,
                b,
                out,
                j,
                w,
            } = *self;
            let mut mask = [0u16; C];
            for (c, m) in mask.iter_mut().enumerate() {
                let lanes = w.saturating_sub(V::L * c).min(V::L);
                *m = ((1u32 << lanes) - 1) as u16;
            }
            let mut acc = [[V::zero(); C]; R];
            if p0 > 0 {
                for (r, row) in acc.iter_mut().enumerate() {
                    let o = out.add((i + r) * n + j);
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = V::load(mask[c], o.add(V::L * c));
                    }
                }
            }
            // `a`'s rows as offsets from one pointer (one register, not R).
            let a0 = a.ptr.offset(i as isize * a.rs + p0 as isize * a.cs);
            let mut bp = b.ptr.offset(p0 as isize * b.rs).add(j);
            let ahead = AHEAD * b.rs;
            // A column-major `a` (`Xᵀ·G`: the tile's R values of step p lie side by side in
            // row p of X, a whole row of X apart from step p + 1) is the big operand there:
            // fetch its run ahead too, or the chains wait on it as on `b`.
            let a_ahead = (a.rs == 1).then_some(AHEAD * a.cs);
            for q in 0..(p1 - p0) as isize {
                // Never dereferenced past the buffer: prefetches do not fault.
                for c in 0..C {
                    _mm_prefetch::<_MM_HINT_T0>(
                        bp.wrapping_offset(ahead).wrapping_add(V::L * c) as *const i8
                    );
                }
                if let Some(d) = a_ahead {
                    let run = a0.wrapping_offset(q * a.cs + d);
                    _mm_prefetch::<_MM_HINT_T0>(run as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(run.wrapping_add(R - 1) as *const i8);
                }
                let mut bv = [V::zero(); C];
                for c in 0..C {
                    bv[c] = V::load(mask[c], bp.add(V::L * c));
                }
                let ap = a0.offset(q * a.cs);
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = V::splat(*ap.offset(r as isize * a.rs));
                    for (v, &bc) in row.iter_mut().zip(&bv) {
                        *v = V::fma(x, bc, *v);
                    }
                }
                bp = bp.offset(b.rs);
            }
            for (r, row) in acc.iter().enumerate() {
                let o = out.add((i + r) * n + j);
                for (c, v) in row.iter().enumerate() {
                    V::store(o.add(V::L * c), mask[c], *v);
                }
            }
        }
    }
}
