//! A fused product's `Dot` over a whole chunk of a row, called from phased kernels
//! ([`super::phases`]): `dst[j] = Σ_p row[p]·col[p·stride + j]`, the thin-product chain (fma
//! from +0 in increasing `p`) of `Kernel::point`. Inline, Cranelift's 4-lane vectors spend
//! most of a LoRA-rank map's time here; with AVX-512 this runs 16 lanes and eight column
//! vectors at once (independent chains), with exactly the same operations per lane.

/// Imported symbol name.
pub const NAME: &str = "lorac_dot_wide";

/// Parameters of [`lorac_dot_wide`] (all passed as i64).
pub const ARITY: usize = 6;

/// The function's address.
pub fn pointer() -> *const u8 {
    lorac_dot_wide as *const u8
}

/// `dst[j] = Σ_{p < k} row[p]·col[p·stride + j]` for `j < n`, each sum the chain
/// `acc = fma(row[p], col[p·stride + j], acc)` from `acc = +0`.
///
/// # Safety
/// `row` must be valid for `k` reads, `col` for `(k − 1)·stride + n`, `dst` for `n` writes
/// (it must not overlap `row` or `col`).
pub unsafe extern "C" fn lorac_dot_wide(
    row: *const f32,
    col: *const f32,
    stride: i64,
    k: i64,
    dst: *mut f32,
    n: i64,
) {
    let (stride, k, n) = (stride.max(0) as usize, k.max(0) as usize, n.max(0) as usize);
    #[cfg(target_arch = "x86_64")]
    if super::wide::available() {
        // SAFETY: the caller's contract, and the features were detected.
        unsafe { avx512::dot(row, col, stride, k, dst, n) };
        return;
    }
    for j in 0..n {
        let mut acc = 0f32;
        for p in 0..k {
            // SAFETY: p < k and j < n, within the buffers by the caller's contract.
            unsafe { acc = (*row.add(p)).mul_add(*col.add(p * stride + j), acc) };
        }
        // SAFETY: j < n.
        unsafe { *dst.add(j) = acc };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Column vectors per step: eight independent fma chains hide the fma latency.
    const V: usize = 8;

    /// `M` vectors of 16 columns from `j`, the last one masked by `tail` (all ones for full
    /// vectors).
    #[inline(always)]
    unsafe fn block<const M: usize>(
        row: *const f32,
        col: *const f32,
        stride: usize,
        k: usize,
        dst: *mut f32,
        j: usize,
        tail: __mmask16,
    ) {
        let mut acc = [_mm512_setzero_ps(); M];
        for p in 0..k {
            // SAFETY (all of the block): the caller's bounds; masked lanes are not touched.
            unsafe {
                let x = _mm512_set1_ps(*row.add(p));
                let c = col.add(p * stride + j);
                for (v, a) in acc.iter_mut().enumerate() {
                    let m = if v + 1 == M { tail } else { !0 };
                    *a = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, c.add(16 * v)), *a);
                }
            }
        }
        for (v, a) in acc.iter().enumerate() {
            let m = if v + 1 == M { tail } else { !0 };
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(dst.add(j + 16 * v), m, *a) };
        }
    }

    /// [`super::lorac_dot_wide`] with AVX-512: blocks of `V` vectors, then single vectors,
    /// the last masked.
    #[target_feature(enable = "avx512f,avx512vl,fma")]
    pub unsafe fn dot(
        row: *const f32,
        col: *const f32,
        stride: usize,
        k: usize,
        dst: *mut f32,
        n: usize,
    ) {
        let mut j = 0;
        // SAFETY (every call): j + 16·M <= n, or the last vector masked to n.
        unsafe {
            while j + 16 * V <= n {
                block::<V>(row, col, stride, k, dst, j, !0);
                j += 16 * V;
            }
            while j + 16 <= n {
                block::<1>(row, col, stride, k, dst, j, !0);
                j += 16;
            }
            if j < n {
                let m = ((1u32 << (n - j)) - 1) as u16;
                block::<1>(row, col, stride, k, dst, j, m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equals the definition's chain bit for bit at every length 0..=300 (full blocks,
    /// single vectors and masked tails), for ranks 0, 1, 3 and 8, with a stride wider than
    /// the chunk, and leaves what follows `dst[n]` untouched.
    #[test]
    fn wide_dot_is_the_definition() {
        let stride = 317;
        for k in [0usize, 1, 3, 8] {
            let row: Vec<f32> = (0..k).map(|p| (p as f32 - 1.3) * 0.77).collect();
            let col: Vec<f32> = (0..k.max(1) * stride)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
                .collect();
            for n in 0..=300usize.min(stride) {
                let mut dst = vec![9f32; n + 1];
                // SAFETY: row has k values, col (k − 1)·stride + n, dst n + 1.
                unsafe {
                    lorac_dot_wide(
                        row.as_ptr(),
                        col.as_ptr(),
                        stride as i64,
                        k as i64,
                        dst.as_mut_ptr(),
                        n as i64,
                    )
                };
                for (j, &d) in dst[..n].iter().enumerate() {
                    let mut acc = 0f32;
                    for p in 0..k {
                        acc = row[p].mul_add(col[p * stride + j], acc);
                    }
                    assert_eq!(d.to_bits(), acc.to_bits(), "k {k} n {n} j {j}");
                }
                assert_eq!(dst[n], 9.0, "k {k} n {n}: wrote past n");
            }
        }
    }
}
