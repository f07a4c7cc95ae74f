//! Top-k sparse dispatch helpers: which experts a row selected (`SlotExperts`) and dropout of
//! the routed copies of a row, one mask per selected expert (`RoutedDropout`). Slot `i` of a
//! row is its `i`-th selected expert in index order, on every backend.

use super::random::factor;
use super::Ins;
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::Tensor;

/// The experts row `row` of a top-k mask selects, in index order, at most `k`.
#[inline]
pub fn selected(row: &[f32], k: usize) -> impl Iterator<Item = usize> + '_ {
    row.iter()
        .enumerate()
        .filter(|(_, &m)| m != 0.0)
        .map(|(e, _)| e)
        .take(k)
}

/// Shape rules.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    match op {
        Op::SlotExperts { k } => {
            let m = ins[0].0;
            if ins[0].1 != DType::F32 || m.len() != 2 || *k == 0 || *k > m[1] {
                return Err(format!("slot experts: top-{k} mask of shape {m:?}"));
            }
            Ok((vec![m[0], *k, m[1]], DType::F32))
        }
        Op::RoutedDropout {
            salts,
            k,
            transpose,
            ..
        } => {
            let (x, m, seed) = (ins[0], ins[1], ins[2]);
            if x.1 != DType::F32 || m.1 != DType::F32 || seed.1 != DType::I64 {
                return Err("routed dropout needs f32 values and mask and an i64 seed".into());
            }
            if m.0.len() != 2 || m.0[1] != salts.len() || seed.0.iter().product::<usize>() != 1 {
                return Err(format!(
                    "routed dropout: mask {:?} for {} experts, seed {:?}",
                    m.0,
                    salts.len(),
                    seed.0
                ));
            }
            let t = m.0[0];
            match (*transpose, x.0) {
                (false, [rows, n]) if *rows == t => Ok((vec![t, *k, *n], DType::F32)),
                (true, [rows, kk, n]) if *rows == t && kk == k => Ok((vec![t, *n], DType::F32)),
                _ => Err(format!(
                    "routed dropout{}: values {:?} do not fit {t} rows and k = {k}",
                    if *transpose { " (adjoint)" } else { "" },
                    x.0
                )),
            }
        }
        Op::RoutedExpand { salts, k, .. } => {
            let (gr, a, m, seed) = (ins[0], ins[1], ins[2], ins[3]);
            let f32s = [gr.1, a.1, m.1].iter().all(|d| *d == DType::F32);
            if !f32s || seed.1 != DType::I64 || seed.0.iter().product::<usize>() != 1 {
                return Err("routed expand needs f32 values, factor and mask, an i64 seed".into());
            }
            match (gr.0, a.0, m.0) {
                ([t, kk, q], [qa, n], [tm, e])
                    if kk == k && q == qa && t == tm && *e == salts.len() =>
                {
                    Ok((vec![*t, *n], DType::F32))
                }
                _ => Err(format!(
                    "routed expand: values {:?}, factor {:?}, mask {:?} for k = {k} and {} experts",
                    gr.0,
                    a.0,
                    m.0,
                    salts.len()
                )),
            }
        }
        _ => Err(format!("not a routing op: {}", op.name())),
    }
}

/// `out[j] = Σ_q g[q] · a[q, j]`, one fused multiply-add chain per `j` over `q` in order,
/// skipping `q` where `g[q]` is zero (the definition [`Op::RoutedExpand`] uses: a slot's
/// gradient is zero outside its own expert's rank block, so most terms are skipped; the CPU
/// host op vectorises over `j` with the same chains). Always inlined, so a caller compiled
/// with FMA instructions gets them here too.
#[inline(always)]
pub fn expand_row(g: &[f32], a: &[f32], n: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for (q, &gq) in g.iter().enumerate() {
        if gq == 0.0 {
            continue;
        }
        for (o, &aq) in out.iter_mut().zip(&a[q * n..(q + 1) * n]) {
            *o = gq.mul_add(aq, *o);
        }
    }
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::SlotExperts { k } => {
            let m = ins[0];
            let (t, e) = (m.shape[0], m.shape[1]);
            let mut out = vec![0f32; t * k * e];
            for (r, row) in m.f().chunks(e.max(1)).enumerate() {
                for (i, ex) in selected(row, *k).enumerate() {
                    out[(r * k + i) * e + ex] = 1.0;
                }
            }
            Ok(Tensor::f32(vec![t, *k, e], out))
        }
        Op::RoutedDropout {
            p,
            salts,
            k,
            transpose,
        } => {
            let (x, m, seed) = (ins[0], ins[1], ins[2].i()[0] as u64);
            let (t, e) = (m.shape[0], m.shape[1]);
            let n = *x.shape.last().unwrap_or(&1);
            let mut out = vec![0f32; if *transpose { t * n } else { t * k * n }];
            for r in 0..t {
                for (i, ex) in selected(&m.f()[r * e..(r + 1) * e], *k).enumerate() {
                    for j in 0..n {
                        let f = factor(seed, salts[ex], (r * n + j) as u64, *p);
                        if *transpose {
                            out[r * n + j] += x.f()[(r * k + i) * n + j] * f;
                        } else {
                            out[(r * k + i) * n + j] = x.f()[r * n + j] * f;
                        }
                    }
                }
            }
            let shape = if *transpose {
                vec![t, n]
            } else {
                vec![t, *k, n]
            };
            Ok(Tensor::f32(shape, out))
        }
        Op::RoutedExpand { p, salts, k } => {
            let (gr, a, m, seed) = (ins[0], ins[1], ins[2], ins[3].i()[0] as u64);
            let (t, e) = (m.shape[0], m.shape[1]);
            let (q, n) = (a.shape[0], a.shape[1]);
            let mut out = vec![0f32; t * n];
            let mut v = vec![0f32; n];
            for r in 0..t {
                for (i, ex) in selected(&m.f()[r * e..(r + 1) * e], *k).enumerate() {
                    expand_row(
                        &gr.f()[(r * k + i) * q..(r * k + i + 1) * q],
                        a.f(),
                        n,
                        &mut v,
                    );
                    for (j, &vj) in v.iter().enumerate() {
                        out[r * n + j] += vj * factor(seed, salts[ex], (r * n + j) as u64, *p);
                    }
                }
            }
            Ok(Tensor::f32(vec![t, n], out))
        }
        _ => Err(format!("not a routing op: {}", op.name())),
    }
}

/// VJP: routed dropout is linear in its values for a fixed mask and seed, so its gradient is
/// its adjoint (and the adjoint's is the forward). Masks and slots are piecewise constant.
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    match op {
        Op::RoutedDropout {
            p,
            salts,
            k,
            transpose,
        } if needs.first() == Some(&true) => {
            let adj = Op::RoutedDropout {
                p: *p,
                salts: salts.clone(),
                k: *k,
                transpose: !transpose,
            };
            Ok(vec![Some(g.add(adj, &[dy, ins[1], ins[2]])?), None, None])
        }
        // Made by a pass after differentiation; never differentiated itself.
        Op::RoutedExpand { .. } if needs.iter().any(|&n| n) => Err(crate::ir::IrError(
            "routed_expand (a fused backward op) has no gradient".into(),
        )),
        _ => Ok(vec![None; ins.len()]),
    }
}
