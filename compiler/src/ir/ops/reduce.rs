//! Reductions along one axis (the axis is kept with size 1).

use super::{want_f32, Ins};
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{BinaryOp, DType, Op, ReduceOp};
use crate::ir::tensor::Tensor;

/// Shape rule: the reduced axis becomes 1.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    want_f32(ins)?;
    let Op::Reduce { axis, .. } = op else {
        return Err("not a reduction".into());
    };
    let mut s = ins[0].0.to_vec();
    if *axis >= s.len() {
        return Err(format!("axis {axis} out of range for {s:?}"));
    }
    s[*axis] = 1;
    Ok((s, DType::F32))
}

/// (outer, axis length, inner) of a shape around `axis`.
pub fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// loraC's sum of `n` values `at(0..n)`: in f64, element k into partial sum k mod 4 over the
/// whole groups of four, the partials combined as (s0 + s1) + (s2 + s3), then the remaining
/// elements added in order. Four independent chains let the CPU backend sum 4 lanes at a time
/// and still agree bit for bit.
pub fn sum_f64(n: usize, at: impl Fn(usize) -> f32) -> f64 {
    let full = n / 4 * 4;
    let mut s = [-0.0f64; 4];
    for k in 0..full {
        s[k % 4] += at(k) as f64;
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for k in full..n {
        t += at(k) as f64;
    }
    t
}

/// Reference semantics (sums as [`sum_f64`]).
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    let Op::Reduce { op: r, axis } = op else {
        return Err("not a reduction".into());
    };
    let x = ins[0];
    let (outer, n, inner) = split(&x.shape, *axis);
    let v = x.f();
    let mut out = vec![0f32; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[(o * n + k) * inner + i];
            out[o * inner + i] = match r {
                ReduceOp::Sum => sum_f64(n, at) as f32,
                ReduceOp::Max => (0..n)
                    .map(at)
                    .fold(f32::NEG_INFINITY, super::elementwise::max),
            };
        }
    }
    let mut shape = x.shape.clone();
    shape[*axis] = 1;
    Ok(Tensor::f32(shape, out))
}

/// VJP: sums broadcast the gradient back; max routes it to the maxima (shared on ties).
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    _needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    let Op::Reduce { op: r, axis } = op else {
        return Ok(vec![None]);
    };
    let x = ins[0];
    let shape = g.shape(x).to_vec();
    let dx = match r {
        ReduceOp::Sum => g.bc(dy, &shape)?,
        ReduceOp::Max => {
            let m = g.bc(node, &shape)?;
            let hit = g.add(Op::Binary(BinaryOp::Eq), &[x, m])?;
            let cnt = g.sum(hit, *axis)?;
            let share = g.over(dy, cnt)?;
            let share = g.bc(share, &shape)?;
            g.times(hit, share)?
        }
    };
    Ok(vec![Some(dx)])
}
