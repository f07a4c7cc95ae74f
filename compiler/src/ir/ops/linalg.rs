//! Batched matrix products and the small damped SPD solve.

use super::{thin, want_f32, Ins};
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::Tensor;

/// Shape rule: `[..., a, b] @ [..., b, c] → [..., a, c]`; solve: `[..., d, d], [..., d, c] → [..., d, c]`.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    want_f32(ins)?;
    let (a, b) = (ins[0].0, ins[1].0);
    if a.len() < 2 || a.len() != b.len() {
        return Err(format!(
            "operands {a:?} and {b:?} must be matrices of equal rank"
        ));
    }
    let r = a.len();
    if a[..r - 2] != b[..r - 2] {
        return Err(format!(
            "batch dimensions {:?} and {:?} differ",
            &a[..r - 2],
            &b[..r - 2]
        ));
    }
    match op {
        Op::MatMul => {
            if a[r - 1] != b[r - 2] {
                return Err(format!("inner dimensions differ: {a:?} @ {b:?}"));
            }
            let mut s = a[..r - 1].to_vec();
            s.push(b[r - 1]);
            Ok((s, DType::F32))
        }
        _ => {
            if a[r - 1] != a[r - 2] || b[r - 2] != a[r - 1] {
                return Err(format!(
                    "solve needs A[..., d, d] and B[..., d, c], got {a:?} and {b:?}"
                ));
            }
            Ok((b.to_vec(), DType::F32))
        }
    }
}

/// `out[m, n] = a[m, k] @ b[k, n]` (row-major): products whose order `thin` defines (a thin
/// side or a thin inner dimension) through `thin`, the rest through the `gemm` crate.
pub fn gemm_rowmajor(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    assert!(
        a.len() >= m * k && b.len() >= k * n && out.len() >= m * n,
        "gemm operand sizes"
    );
    if thin::defines(m, k, n) {
        let (a, b) = (thin::View::row_major(a, k), thin::View::row_major(b, n));
        // SAFETY: the asserted lengths cover both operands and the output.
        unsafe { thin::matmul(m, k, n, a, b, out.as_mut_ptr(), m * n * k >= 1 << 20) };
        return;
    }
    // Large products use both cores; results do not depend on the thread count.
    let par = m * n * k >= 1 << 20;
    // SAFETY: the asserted lengths cover every element the strides address: `b` row-major.
    unsafe { gemm_raw(m, k, n, a, (b, n as isize, 1), out, par) };
}

/// `out[m, n] = a[m, k] @ btᵀ` for a row-major `bt[n, k]`, read in place, on one thread: only
/// where [`gemm_layout_free`] holds, so the bits are those of `gemm_rowmajor` on a row-major
/// copy of `btᵀ`. Returns `false` (and computes nothing) elsewhere.
pub fn gemm_bt(m: usize, k: usize, n: usize, a: &[f32], bt: &[f32], out: &mut [f32]) -> bool {
    if k == 0 || !gemm_layout_free(m, k, n) {
        return false;
    }
    assert!(
        a.len() >= m * k && bt.len() >= k * n && out.len() >= m * n,
        "gemm operand sizes"
    );
    // SAFETY: the asserted lengths cover every element the strides address: `btᵀ` in place.
    unsafe { gemm_raw(m, k, n, a, (bt, 1, k as isize), out, false) };
    true
}

/// `out[m, n] = a[m, k] @ b` with `a` and `out` row-major and `b = (data, row stride, column
/// stride)`, on both cores when `par`.
///
/// # Safety
/// The strides must address elements inside the slices.
unsafe fn gemm_raw(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: (&[f32], isize, isize),
    out: &mut [f32],
    par: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.0.as_ptr(),
            b.2,
            b.1,
            0.0,
            1.0,
            false,
            false,
            false,
            if par {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// Whether `gemm` rounds `[m×k] @ [k×n]` the same whatever the strides of its operands and
/// result, so the CPU executor may read a permuted view (a head's `Kᵀ`) or write a permuted
/// result in place while the reference interpreter multiplies row-major copies. With both
/// output sides above 16 it does; at 16 or below it takes other kernels whose rounding
/// depends on layout (a probe over every `m, n ≤ 40` found mismatches at 16, none from 17).
/// Limited to products below 2²⁰ multiply-adds, which run on one thread each, and checked
/// over that domain by `compiler/tests/gemm_layout.rs`.
pub fn gemm_layout_free(m: usize, k: usize, n: usize) -> bool {
    m.min(n) > 16 && m.saturating_mul(k).saturating_mul(n) < 1 << 20
}

/// Solves `(A + δI) X = B` by Cholesky in f64; returns `None` when A + δI is not SPD.
pub fn spd_solve(a: &[f32], b: &[f32], d: usize, c: usize, damping: f64) -> Option<Vec<f32>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j] as f64 + if i == j { damping } else { 0.0 };
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    let mut x = vec![0f32; d * c];
    for col in 0..c {
        let mut y = vec![0f64; d];
        for i in 0..d {
            let mut s = b[i * c + col] as f64;
            for k in 0..i {
                s -= l[i * d + k] * y[k];
            }
            y[i] = s / l[i * d + i];
        }
        for i in (0..d).rev() {
            let mut s = y[i];
            for k in i + 1..d {
                s -= l[k * d + i] * x[k * c + col] as f64;
            }
            let v = s / l[i * d + i];
            x[i * c + col] = v as f32;
        }
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    let (a, b) = (ins[0], ins[1]);
    let r = a.shape.len();
    let batch: usize = a.shape[..r - 2].iter().product();
    match op {
        Op::MatMul => {
            let (m, k, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
            let mut out = vec![0f32; batch * m * n];
            for i in 0..batch {
                gemm_rowmajor(
                    m,
                    k,
                    n,
                    &a.f()[i * m * k..],
                    &b.f()[i * k * n..],
                    &mut out[i * m * n..],
                );
            }
            let mut s = a.shape[..r - 1].to_vec();
            s.push(n);
            Ok(Tensor::f32(s, out))
        }
        Op::SpdSolve { damping } => {
            let (d, c) = (a.shape[r - 1], b.shape[r - 1]);
            let mut out = Vec::with_capacity(batch * d * c);
            for i in 0..batch {
                let bb = &b.f()[i * d * c..(i + 1) * d * c];
                // Fallback to the identity preconditioner when the block is not SPD.
                match spd_solve(
                    &a.f()[i * d * d..(i + 1) * d * d],
                    bb,
                    d,
                    c,
                    *damping as f64,
                ) {
                    Some(x) => out.extend(x),
                    None => out.extend_from_slice(bb),
                }
            }
            Ok(Tensor::f32(b.shape.clone(), out))
        }
        _ => Err(format!("not linear algebra: {}", op.name())),
    }
}

/// VJP: `dA = dY Bᵀ`, `dB = Aᵀ dY`; for the solve `dB = (A+δI)⁻¹ dY`, `dA = -dB Xᵀ` (A symmetric).
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    let (a, b) = (ins[0], ins[1]);
    match op {
        Op::MatMul => {
            let da = if needs[0] {
                let bt = g.t(b)?;
                Some(g.matmul(dy, bt)?)
            } else {
                None
            };
            let db = if needs[1] {
                let at = g.t(a)?;
                Some(g.matmul(at, dy)?)
            } else {
                None
            };
            Ok(vec![da, db])
        }
        Op::SpdSolve { .. } => {
            let db = g.add(op.clone(), &[a, dy])?;
            let da = if needs[0] {
                let xt = g.t(node)?;
                let p = g.matmul(db, xt)?;
                Some(g.neg(p)?)
            } else {
                None
            };
            Ok(vec![da, needs[1].then_some(db)])
        }
        _ => Ok(vec![None, None]),
    }
}
