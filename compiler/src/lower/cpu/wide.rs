//! Transcendentals over whole chunks of a row, called from kernels: Cranelift's x64 backend
//! has only 4-lane vectors, while `exp` and `erf` are ~30 and ~45 vector operations per
//! vector. On a host with AVX-512 these run 16 lanes at a time. Every lane performs exactly
//! the operations of `ops::elementwise::{expf, erf}` (fused multiply-adds where they fuse,
//! nothing contracted elsewhere), so results are bit-identical to the reference.

use crate::ir::ops::elementwise::{erf, expf};
use crate::ir::UnaryOp;

/// Imported symbol names, in [`WIDE`] order.
pub const NAMES: [&str; 2] = ["lorac_exp_wide", "lorac_erf_wide"];

/// The unary ops computed by a wide call, in [`NAMES`] order.
pub const WIDE: [UnaryOp; 2] = [UnaryOp::Exp, UnaryOp::Erf];

/// Index of `u`'s wide function in [`NAMES`], if it has one.
pub fn index(u: UnaryOp) -> Option<usize> {
    WIDE.iter().position(|&w| w == u)
}

/// Whether wide calls pay on this host: with AVX-512 they do 16 lanes where inline code
/// does 4; without it they would only add calls. The thin-product kernel's test (it asks
/// for VL and FMA too, which every AVX-512 CPU has).
pub fn available() -> bool {
    crate::ir::ops::thin::has_avx512()
}

/// The functions' addresses, in [`NAMES`] order.
pub fn pointers() -> [*const u8; 2] {
    [lorac_exp_wide as *const u8, lorac_erf_wide as *const u8]
}

/// `dst[i] = expf(src[i])` for `i < n`.
///
/// # Safety
/// `src` and `dst` must be valid for `n` elements (they may be the same buffer).
pub unsafe extern "C" fn lorac_exp_wide(src: *const f32, dst: *mut f32, n: i64) {
    // SAFETY: the caller's contract.
    unsafe { apply::<false>(src, dst, n) }
}

/// `dst[i] = erf(src[i])` for `i < n`.
///
/// # Safety
/// `src` and `dst` must be valid for `n` elements (they may be the same buffer).
pub unsafe extern "C" fn lorac_erf_wide(src: *const f32, dst: *mut f32, n: i64) {
    // SAFETY: the caller's contract.
    unsafe { apply::<true>(src, dst, n) }
}

/// `erf` (`ERF`) or `expf` over `n` elements: 16 lanes with AVX-512, else one at a time.
unsafe fn apply<const ERF: bool>(src: *const f32, dst: *mut f32, n: i64) {
    let n = n.max(0) as usize;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the caller's contract, and the feature was detected.
        unsafe { avx512::map::<ERF>(src, dst, n) };
        return;
    }
    for i in 0..n {
        // SAFETY: i < n, within both buffers by the caller's contract.
        unsafe {
            let x = *src.add(i);
            *dst.add(i) = if ERF { erf(x) } else { expf(x) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::ir::ops::elementwise::{
        ERF_C0, ERF_COEFFS, EXP_HI, EXP_LN2_HI, EXP_LN2_LO, EXP_LO, EXP_POLY, EXP_SHIFT,
    };
    use std::arch::x86_64::*;

    /// Vectors per step of the main loop: one vector's chain is long and serial (~45
    /// dependent operations), so four interleaved chains keep the FMA ports busy (erf
    /// 1.35 → ~0.76 ns an element on one core; the bits are unchanged).
    const N: usize = 4;

    /// Applies [`erf`] (`ERF`) or [`exp`] 16 lanes at a time, `N` vectors a step (inlined: a
    /// const parameter, not a function pointer); the last partial vector is masked.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn map<const ERF: bool>(src: *const f32, dst: *mut f32, n: usize) {
        let mut i = 0;
        while i + 16 * N <= n {
            // SAFETY: i + 16·N <= n.
            unsafe {
                let x: [__m512; N] = std::array::from_fn(|j| _mm512_loadu_ps(src.add(i + 16 * j)));
                let y = if ERF { erf(x) } else { exp(x) };
                for (j, y) in y.into_iter().enumerate() {
                    _mm512_storeu_ps(dst.add(i + 16 * j), y);
                }
            }
            i += 16 * N;
        }
        let one = |x: __m512| {
            let y = if ERF { erf([x]) } else { exp([x]) };
            y[0]
        };
        while i + 16 <= n {
            // SAFETY: i + 16 <= n.
            unsafe { _mm512_storeu_ps(dst.add(i), one(_mm512_loadu_ps(src.add(i)))) };
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            // SAFETY: masked lanes touch only the n - i valid elements.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, src.add(i));
                _mm512_mask_storeu_ps(dst.add(i), m, one(x));
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn k(c: f32) -> __m512 {
        _mm512_set1_ps(c)
    }

    /// `expf`, lane-wise, on `M` vectors at once.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp<const M: usize>(x: [__m512; M]) -> [__m512; M] {
        // `x < lo ? lo : x`, then `hi < x ? hi : x`: maxps/minps return their second
        // operand when either is NaN, so NaN passes through as in `f32::clamp`.
        let x = x.map(|x| _mm512_min_ps(k(EXP_HI), _mm512_max_ps(k(EXP_LO), x)));
        let kd = x.map(|x| _mm512_fmadd_ps(x, k(std::f32::consts::LOG2_E), k(EXP_SHIFT)));
        let n = kd.map(|kd| _mm512_sub_ps(kd, k(EXP_SHIFT)));
        let ni: [__m512i; M] = std::array::from_fn(|j| {
            _mm512_sub_epi32(
                _mm512_castps_si512(kd[j]),
                _mm512_set1_epi32(EXP_SHIFT.to_bits() as i32),
            )
        });
        let r: [__m512; M] = std::array::from_fn(|j| {
            let r = _mm512_fmadd_ps(n[j], k(-EXP_LN2_HI), x[j]);
            _mm512_fmadd_ps(n[j], k(-EXP_LN2_LO), r)
        });
        let mut p = [k(EXP_POLY[0]); M];
        for &c in &EXP_POLY[1..] {
            p = std::array::from_fn(|j| _mm512_fmadd_ps(p[j], r[j], k(c)));
        }
        std::array::from_fn(|j| {
            let r = r[j];
            let y = _mm512_add_ps(_mm512_fmadd_ps(p[j], _mm512_mul_ps(r, r), r), k(1.0));
            let h = _mm512_srai_epi32::<1>(ni[j]);
            let bias = _mm512_set1_epi32(127);
            let s1 = _mm512_slli_epi32::<23>(_mm512_add_epi32(h, bias));
            let s2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_sub_epi32(ni[j], h), bias));
            let y = _mm512_mul_ps(y, _mm512_castsi512_ps(s1));
            _mm512_mul_ps(y, _mm512_castsi512_ps(s2))
        })
    }

    /// `erf`, lane-wise, on `M` vectors at once.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn erf<const M: usize>(x: [__m512; M]) -> [__m512; M] {
        let z = x.map(|x| _mm512_abs_ps(x));
        let t = z.map(|z| _mm512_div_ps(k(1.0), _mm512_add_ps(k(1.0), _mm512_mul_ps(k(0.5), z))));
        let mut acc = [k(ERF_COEFFS[0]); M];
        for &c in &ERF_COEFFS[1..] {
            acc = std::array::from_fn(|j| _mm512_fmadd_ps(t[j], acc[j], k(c)));
        }
        // -(z·z) - C0, as the definition writes it: negation flips the sign bit.
        let a: [__m512; M] = std::array::from_fn(|j| {
            let sign = _mm512_castps_si512(k(-0.0));
            let zz = _mm512_castps_si512(_mm512_mul_ps(z[j], z[j]));
            let a = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_xor_si512(zz, sign)), k(ERF_C0));
            _mm512_fmadd_ps(t[j], acc[j], a)
        });
        let e = exp(a);
        std::array::from_fn(|j| {
            let r = _mm512_mul_ps(t[j], e[j]);
            let pos = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x[j], _mm512_setzero_ps());
            _mm512_mask_blend_ps(pos, _mm512_sub_ps(r, k(1.0)), _mm512_sub_ps(k(1.0), r))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that reach every branch: signed zeros, infinities, NaN, denormals, the clamp
    /// bounds and beyond, and a dense sweep of ordinary magnitudes.
    fn inputs() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            88.7,
            89.0,
            89.5,
            -103.9,
            -104.0,
            -120.0,
            f32::MAX,
            f32::MIN,
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let mag = [1e-6f32, 1e-2, 0.5, 2.0, 6.0, 30.0, 110.0][i % 7];
            v.push((2.0 * u - 1.0) * mag);
        }
        v
    }

    fn check(f: unsafe extern "C" fn(*const f32, *mut f32, i64), def: fn(f32) -> f32) {
        let xs = inputs();
        // Every length 0..=40 (full vectors and masked tails), then everything at once.
        for n in (0..=40).chain([xs.len()]) {
            let mut out = vec![7.0f32; n];
            // SAFETY: both buffers hold n elements.
            unsafe { f(xs.as_ptr(), out.as_mut_ptr(), n as i64) };
            for (i, (&x, &y)) in xs.iter().zip(&out).enumerate() {
                let want = def(x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "n {n} i {i}: f({x:e}) = {y:e}, definition {want:e}"
                );
            }
        }
    }

    /// The wide exp equals `expf` bit for bit (NaN as NaN).
    #[test]
    fn wide_exp_is_the_definition() {
        check(lorac_exp_wide, expf);
    }

    /// The wide erf equals `erf` bit for bit (NaN as NaN).
    #[test]
    fn wide_erf_is_the_definition() {
        check(lorac_erf_wide, erf);
    }

    /// In place (`src == dst`), as kernels may call it.
    #[test]
    fn wide_calls_work_in_place() {
        let xs = inputs();
        let mut v = xs.clone();
        // SAFETY: v holds v.len() elements.
        unsafe { lorac_erf_wide(v.as_ptr(), v.as_mut_ptr(), v.len() as i64) };
        for (&x, &y) in xs.iter().zip(&v) {
            assert!(y.to_bits() == erf(x).to_bits() || y.is_nan());
        }
    }
}
