//! Views: reshape, permute, broadcast, slice, concat.

use super::Ins;
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::{numel, strides, Data, Tensor};

/// Shape rules.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    let (s, dt) = (ins[0].0, ins[0].1);
    match op {
        Op::Reshape { shape } => {
            if numel(shape) != numel(s) {
                return Err(format!(
                    "cannot reshape {s:?} ({} values) to {shape:?}",
                    numel(s)
                ));
            }
            Ok((shape.clone(), dt))
        }
        Op::Permute { perm } => {
            let mut seen = vec![false; s.len()];
            if perm.len() != s.len()
                || perm
                    .iter()
                    .any(|&p| p >= s.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!("{perm:?} is not a permutation of {} axes", s.len()));
            }
            Ok((perm.iter().map(|&p| s[p]).collect(), dt))
        }
        Op::Broadcast { shape } => {
            if s.len() > shape.len() {
                return Err(format!("cannot broadcast {s:?} to lower-rank {shape:?}"));
            }
            let lead = shape.len() - s.len();
            for (i, &d) in s.iter().enumerate() {
                if d != 1 && d != shape[lead + i] {
                    return Err(format!("cannot broadcast {s:?} to {shape:?}"));
                }
            }
            Ok((shape.clone(), dt))
        }
        Op::Slice { axis, start, end } => {
            if *axis >= s.len() || start >= end || *end > s[*axis] {
                return Err(format!(
                    "slice {start}..{end} of axis {axis} is out of range for {s:?}"
                ));
            }
            let mut o = s.to_vec();
            o[*axis] = end - start;
            Ok((o, dt))
        }
        Op::Concat { axis } => {
            let mut o = s.to_vec();
            if *axis >= o.len() {
                return Err(format!("axis {axis} out of range for {s:?}"));
            }
            o[*axis] = 0;
            for (t, d) in ins {
                if *d != dt
                    || t.len() != s.len()
                    || t.iter().enumerate().any(|(i, &x)| i != *axis && x != s[i])
                {
                    return Err(format!(
                        "cannot concatenate {s:?} and {t:?} along axis {axis}"
                    ));
                }
                o[*axis] += t[*axis];
            }
            Ok((o, dt))
        }
        _ => Err(format!("not a view: {}", op.name())),
    }
}

/// Gathers elements by an index map (works for both dtypes).
fn remap(x: &Tensor, shape: Vec<usize>, src: impl Fn(usize) -> usize) -> Tensor {
    let n = numel(&shape);
    match &x.data {
        Data::F32(v) => Tensor::f32(shape, (0..n).map(|i| v[src(i)]).collect()),
        Data::I64(v) => Tensor::i64(shape, (0..n).map(|i| v[src(i)]).collect()),
    }
}

/// Source offsets of every output element, in output order, for per-axis source strides.
fn odometer(shape: &[usize], src_strides: &[usize]) -> Vec<usize> {
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(off);
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            off += src_strides[ax];
            if idx[ax] < shape[ax] {
                break;
            }
            off -= src_strides[ax] * shape[ax];
            idx[ax] = 0;
        }
    }
    out
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    let x = ins[0];
    Ok(match op {
        Op::Reshape { shape } => Tensor {
            shape: shape.clone(),
            data: x.data.clone(),
        },
        Op::Permute { perm } => {
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
            let ist = strides(&x.shape);
            // Source stride of each output axis; walk the output in order with an odometer.
            let src: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
            let order = odometer(&shape, &src);
            remap(x, shape, |i| order[i])
        }
        Op::Broadcast { shape } => {
            let lead = shape.len() - x.shape.len();
            let ist = strides(&x.shape);
            // Broadcast axes have source stride 0.
            let src: Vec<usize> = (0..shape.len())
                .map(|ax| {
                    if ax < lead || x.shape[ax - lead] == 1 {
                        0
                    } else {
                        ist[ax - lead]
                    }
                })
                .collect();
            let order = odometer(shape, &src);
            remap(x, shape.clone(), |i| order[i])
        }
        Op::Slice { axis, start, end } => {
            let (outer, n, inner) = super::reduce::split(&x.shape, *axis);
            let len = end - start;
            let mut shape = x.shape.clone();
            shape[*axis] = len;
            let _ = outer;
            remap(x, shape, |i| {
                let (o, rest) = (i / (len * inner), i % (len * inner));
                o * n * inner + (start + rest / inner) * inner + rest % inner
            })
        }
        Op::Concat { axis } => {
            let (outer, _, inner) = super::reduce::split(&x.shape, *axis);
            let total: usize = ins.iter().map(|t| t.shape[*axis]).sum();
            let mut shape = x.shape.clone();
            shape[*axis] = total;
            let f32s = matches!(x.data, Data::F32(_));
            let (mut fo, mut io) = (Vec::new(), Vec::new());
            for o in 0..outer {
                for t in ins {
                    let n = t.shape[*axis] * inner;
                    match &t.data {
                        Data::F32(v) => fo.extend_from_slice(&v[o * n..(o + 1) * n]),
                        Data::I64(v) => io.extend_from_slice(&v[o * n..(o + 1) * n]),
                    }
                }
            }
            if f32s {
                Tensor::f32(shape, fo)
            } else {
                Tensor::i64(shape, io)
            }
        }
        _ => return Err(format!("not a view: {}", op.name())),
    })
}

/// VJP rules.
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    _node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    let x = ins[0];
    let xs = g.shape(x).to_vec();
    Ok(match op {
        Op::Reshape { .. } => vec![Some(g.reshape(dy, &xs)?)],
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.permute(dy, &inv)?)]
        }
        Op::Broadcast { .. } => vec![Some(g.sum_to(dy, &xs)?)],
        Op::Slice { axis, start, end } => {
            let mut parts = Vec::new();
            if *start > 0 {
                let mut s = xs.clone();
                s[*axis] = *start;
                parts.push(g.fill(&s, 0.0)?);
            }
            parts.push(dy);
            if *end < xs[*axis] {
                let mut s = xs.clone();
                s[*axis] = xs[*axis] - end;
                parts.push(g.fill(&s, 0.0)?);
            }
            vec![Some(g.concat(&parts, *axis)?)]
        }
        Op::Concat { axis } => {
            let mut out = Vec::new();
            let mut at = 0;
            for (k, &i) in ins.iter().enumerate() {
                let n = g.shape(i)[*axis];
                out.push(if needs[k] {
                    Some(g.slice(dy, *axis, at, at + n)?)
                } else {
                    None
                });
                at += n;
            }
            out
        }
        _ => vec![None; ins.len()],
    })
}
