//! Attention's score block as two ops, so a backend can keep each head's `[m, n]` scores in
//! cache instead of passing over score-sized tensors once per primitive:
//! - `AttnProbs { scale }`: `(q[..., m, d], k[..., n, d], mask)` → `softmax(scale·q·kᵀ + mask)`
//!   along the last axis. Defined by the very steps of the primitive graph it replaces
//!   (`Graph::attn_probs_decomposed`), so its values equal that graph's bit for bit.
//! - `AttnGrad { scale }`: `(p, g)` → `scale · p ⊙ (g − Σ_row g ⊙ p)`, softmax's
//!   vector-Jacobian product with the score scale folded in.

use super::elementwise::{expf, max};
use super::linalg::{gemm_bt, gemm_rowmajor};
use super::reduce::sum_f64;
use super::{want_f32, Ins};
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::{strides, Tensor};

/// Shape rule. `AttnProbs`: `q[..., m, d]`, `k[..., n, d]` with equal batch dims and a mask
/// of the same rank whose every axis is 1 or the score's (`[..., m, n]`), the last one `n`.
/// `AttnGrad`: two equal shapes of rank ≥ 1.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    want_f32(ins)?;
    match op {
        Op::AttnProbs { .. } => Ok((
            Geometry::new(ins[0].0, ins[1].0, ins[2].0)?.shape,
            DType::F32,
        )),
        _ => {
            let (p, g) = (ins[0].0, ins[1].0);
            if p != g || p.is_empty() {
                return Err(format!(
                    "probabilities {p:?} and their gradient {g:?} must have one shape of rank ≥ 1"
                ));
            }
            Ok((p.to_vec(), DType::F32))
        }
    }
}

/// An `AttnProbs` instance's sizes: `batch` score matrices of `[m, n]` over head width `d`,
/// and where each score row's mask row starts.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// The output shape `[..., m, n]`.
    pub shape: Vec<usize>,
    /// Score matrices (the product of the batch dims).
    pub batch: usize,
    /// Query rows.
    pub m: usize,
    /// Key rows.
    pub n: usize,
    /// Head width.
    pub d: usize,
    /// The mask's element strides over the output's axes (0 along broadcast axes).
    mask_st: Vec<usize>,
}

impl Geometry {
    /// Checks the operand shapes (see [`infer`]).
    pub fn new(q: &[usize], k: &[usize], mask: &[usize]) -> Result<Self, String> {
        let r = q.len();
        if r < 2 || k.len() != r || q[..r - 2] != k[..r - 2] || q[r - 1] != k[r - 1] {
            return Err(format!(
                "queries {q:?} and keys {k:?} must be [..., m, d] and [..., n, d] with equal batch dims"
            ));
        }
        let mut shape = q[..r - 1].to_vec();
        shape.push(k[r - 2]);
        let fits = mask.len() == r
            && mask[r - 1] == shape[r - 1]
            && mask.iter().zip(&shape).all(|(&a, &s)| a == s || a == 1);
        if !fits {
            return Err(format!(
                "mask {mask:?} must broadcast to the scores {shape:?} along all but the last axis"
            ));
        }
        let ms = strides(mask);
        let mask_st = mask
            .iter()
            .zip(&ms)
            .map(|(&a, &s)| if a == 1 { 0 } else { s })
            .collect();
        Ok(Geometry {
            batch: shape[..r - 2].iter().product(),
            m: q[r - 2],
            n: k[r - 2],
            d: q[r - 1],
            shape,
            mask_st,
        })
    }

    /// Offset of the mask row of score matrix `b`'s row `i`.
    pub fn mask_row(&self, b: usize, i: usize) -> usize {
        let r = self.shape.len();
        let mut at = i * self.mask_st[r - 2];
        let mut rest = b;
        for a in (0..r - 2).rev() {
            at += rest % self.shape[a] * self.mask_st[a];
            rest /= self.shape[a];
        }
        at
    }
}

/// A row kernel of `AttnProbs`: `(raw scores in place, mask row, scale)`.
pub type RowFn = fn(&mut [f32], &[f32], f32);

/// Score matrix `b` of `AttnProbs`: `out[m, n]` from `q[m, d]`, `k[n, d]` (row-major slices of
/// that matrix). `kt` is scratch for `kᵀ`; `row(scores, mask row, scale)` turns a row of raw
/// scores into probabilities exactly as [`softmax_row`] does. The product is
/// `gemm_rowmajor`'s (`q` times a row-major copy of `kᵀ`); where `gemm_layout_free` holds,
/// gemm reads `kᵀ` in place with the same bits and `kt` stays unused.
#[allow(clippy::too_many_arguments)]
pub fn probs_matrix(
    geo: &Geometry,
    b: usize,
    scale: f32,
    q: &[f32],
    k: &[f32],
    mask: &[f32],
    kt: &mut Vec<f32>,
    out: &mut [f32],
    row: RowFn,
) {
    let (m, n, d) = (geo.m, geo.n, geo.d);
    // Where gemm's rounding does not depend on layout, `kᵀ` is read in place (same bits).
    if !gemm_bt(m, d, n, q, k, out) {
        kt.resize(d * n, 0.0);
        for j in 0..n {
            for c in 0..d {
                kt[c * n + j] = k[j * d + c];
            }
        }
        gemm_rowmajor(m, d, n, q, kt, out);
    }
    if n == 0 {
        return;
    }
    for (i, r) in out.chunks_exact_mut(n).take(m).enumerate() {
        row(r, &mask[geo.mask_row(b, i)..][..n], scale);
    }
}

/// One row of `AttnProbs` from its raw scores `s`, in place. Each step is rounded to f32 as
/// the primitive graph does: `x = s·scale + mask`, its maximum (`elementwise::max` folded
/// from −∞), `e = expf(x − max)`, `t = sum_f64(e)` rounded to f32, then `e / t`.
pub fn softmax_row(s: &mut [f32], mask: &[f32], scale: f32) {
    for (x, &a) in s.iter_mut().zip(mask) {
        *x = *x * scale + a;
    }
    let top = s.iter().copied().fold(f32::NEG_INFINITY, max);
    s.iter_mut().for_each(|x| *x = expf(*x - top));
    let t = sum_f64(s.len(), |j| s[j]) as f32;
    s.iter_mut().for_each(|x| *x /= t);
}

/// One row of `AttnGrad`: `t = sum_f64(g ⊙ p)` (each product rounded to f32) rounded to f32,
/// then `out = ((g − t) · p) · scale`, each operation rounded to f32.
pub fn grad_row(p: &[f32], g: &[f32], out: &mut [f32], scale: f32) {
    let t = sum_f64(p.len(), |j| g[j] * p[j]) as f32;
    for ((o, &pj), &gj) in out.iter_mut().zip(p).zip(g) {
        *o = ((gj - t) * pj) * scale;
    }
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::AttnProbs { scale } => {
            let (q, k, mask) = (ins[0], ins[1], ins[2]);
            let geo = Geometry::new(&q.shape, &k.shape, &mask.shape)?;
            let (m, n, d) = (geo.m, geo.n, geo.d);
            let mut out = vec![0f32; geo.batch * m * n];
            let mut kt = Vec::new();
            for b in 0..geo.batch {
                probs_matrix(
                    &geo,
                    b,
                    *scale,
                    &q.f()[b * m * d..],
                    &k.f()[b * n * d..],
                    mask.f(),
                    &mut kt,
                    &mut out[b * m * n..(b + 1) * m * n],
                    softmax_row,
                );
            }
            Ok(Tensor::f32(geo.shape, out))
        }
        Op::AttnGrad { scale } => {
            let (p, g) = (ins[0], ins[1]);
            let n = *p.shape.last().unwrap_or(&1);
            let mut out = vec![0f32; p.f().len()];
            if n > 0 {
                for ((o, pr), gr) in out
                    .chunks_exact_mut(n)
                    .zip(p.f().chunks_exact(n))
                    .zip(g.f().chunks_exact(n))
                {
                    grad_row(pr, gr, o, *scale);
                }
            }
            Ok(Tensor::f32(p.shape.clone(), out))
        }
        _ => Err(format!("not attention: {}", op.name())),
    }
}

/// VJP of `AttnProbs`: `dS = AttnGrad { scale }(p, dy)`, `dq = dS·k`, `dk = dSᵀ·q`, and the
/// mask's gradient (rarely needed) `AttnGrad { 1 }(p, dy)` summed over its broadcast axes.
/// `AttnGrad` is made by differentiation and has no gradient itself.
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    match *op {
        Op::AttnProbs { scale } => {
            let (q, k, mask) = (ins[0], ins[1], ins[2]);
            let ds = if needs[0] || needs[1] {
                Some(g.add(Op::AttnGrad { scale }, &[node, dy])?)
            } else {
                None
            };
            let dq = match ds {
                Some(ds) if needs[0] => Some(g.matmul(ds, k)?),
                _ => None,
            };
            let dk = match ds {
                Some(ds) if needs[1] => {
                    let dst = g.t(ds)?;
                    Some(g.matmul(dst, q)?)
                }
                _ => None,
            };
            let dmask = if needs[2] {
                let dx = g.add(Op::AttnGrad { scale: 1.0 }, &[node, dy])?;
                let shape = g.shape(mask).to_vec();
                Some(g.sum_to(dx, &shape)?)
            } else {
                None
            };
            Ok(vec![dq, dk, dmask])
        }
        _ if needs.iter().any(|&n| n) => Err(crate::ir::IrError(format!(
            "{} (a gradient op) has no gradient",
            op.name()
        ))),
        _ => Ok(vec![None; ins.len()]),
    }
}
