//! Indexing: gather, scatter-add, one-hot, top-k masks.

use super::Ins;
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::{numel, Data, Tensor};

/// Shape rules.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    match op {
        Op::Gather => {
            let (table, idx) = (ins[0].0, ins[1]);
            if table.is_empty() || idx.1 != DType::I64 {
                return Err("gather needs a table of rank ≥ 1 and i64 indices".into());
            }
            let mut s = idx.0.to_vec();
            s.extend_from_slice(&table[1..]);
            Ok((s, ins[0].1))
        }
        Op::ScatterAdd { rows } => {
            let (src, idx) = (ins[0].0, ins[1]);
            if ins[0].1 != DType::F32
                || idx.1 != DType::I64
                || src.len() < idx.0.len()
                || src[..idx.0.len()] != *idx.0
            {
                return Err(format!("scatter-add of {src:?} by indices {:?}", idx.0));
            }
            let mut s = vec![*rows];
            s.extend_from_slice(&src[idx.0.len()..]);
            Ok((s, DType::F32))
        }
        Op::OneHot { depth } => {
            if ins[0].1 != DType::I64 {
                return Err("one-hot needs i64 indices".into());
            }
            let mut s = ins[0].0.to_vec();
            s.push(*depth);
            Ok((s, DType::F32))
        }
        Op::TopKMask { k } => {
            let s = ins[0].0;
            if ins[0].1 != DType::F32 || s.is_empty() || *k == 0 || *k > s[s.len() - 1] {
                return Err(format!("top-{k} of {s:?}"));
            }
            Ok((s.to_vec(), DType::F32))
        }
        _ => Err(format!("not an indexing op: {}", op.name())),
    }
}

fn row_of(i: i64, rows: usize) -> Result<usize, String> {
    usize::try_from(i)
        .ok()
        .filter(|&r| r < rows)
        .ok_or(format!("index {i} out of range for {rows} rows"))
}

/// Reference semantics. Out-of-range indices are errors, never wrap-around.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::Gather => {
            let (t, idx) = (ins[0], ins[1]);
            let row: usize = numel(&t.shape[1..]);
            let mut s = idx.shape.clone();
            s.extend_from_slice(&t.shape[1..]);
            // The table may be f32 or i64 (the shape rule keeps its dtype).
            fn take<T: Copy>(
                v: &[T],
                idx: &[i64],
                rows: usize,
                row: usize,
            ) -> Result<Vec<T>, String> {
                let mut out = Vec::with_capacity(idx.len() * row);
                for &i in idx {
                    let r = row_of(i, rows)?;
                    out.extend_from_slice(&v[r * row..(r + 1) * row]);
                }
                Ok(out)
            }
            Ok(match &t.data {
                Data::F32(v) => Tensor::f32(s, take(v, idx.i(), t.shape[0], row)?),
                Data::I64(v) => Tensor::i64(s, take(v, idx.i(), t.shape[0], row)?),
            })
        }
        Op::ScatterAdd { rows } => {
            let (src, idx) = (ins[0], ins[1]);
            let row: usize = numel(&src.shape[idx.shape.len()..]);
            let mut out = vec![0f32; rows * row];
            for (k, &i) in idx.i().iter().enumerate() {
                let r = row_of(i, *rows)?;
                for j in 0..row {
                    out[r * row + j] += src.f()[k * row + j];
                }
            }
            let mut s = vec![*rows];
            s.extend_from_slice(&src.shape[idx.shape.len()..]);
            Ok(Tensor::f32(s, out))
        }
        Op::OneHot { depth } => {
            let idx = ins[0];
            let mut out = vec![0f32; idx.len() * depth];
            for (k, &i) in idx.i().iter().enumerate() {
                // Negative indices (e.g. an ignore index) give an all-zero row.
                if let Ok(r) = row_of(i, *depth) {
                    out[k * depth + r] = 1.0;
                }
            }
            let mut s = idx.shape.clone();
            s.push(*depth);
            Ok(Tensor::f32(s, out))
        }
        Op::TopKMask { k } => {
            let x = ins[0];
            let n = *x.shape.last().unwrap_or(&1);
            let mut out = vec![0f32; x.len()];
            for (row, o) in x.f().chunks(n.max(1)).zip(out.chunks_mut(n.max(1))) {
                top_k_row(row, *k, o);
            }
            Ok(Tensor::f32(x.shape.clone(), out))
        }
        _ => Err(format!("not an indexing op: {}", op.name())),
    }
}

/// Marks with 1 the `k` largest entries of `row` in `out` (zeros elsewhere): the first `k` of a
/// stable sort by descending value, so ties keep the lower index, and NaNs rank below every
/// number. Insertion into a list of at most `k` indices.
pub fn top_k_row(row: &[f32], k: usize, out: &mut [f32]) {
    let better = |a: usize, b: usize| match (row[a].is_nan(), row[b].is_nan()) {
        (false, false) => row[a] > row[b],
        (x, y) => !x && y,
    };
    let k = k.min(row.len());
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for j in 0..row.len() {
        let at = best
            .iter()
            .position(|&b| better(j, b))
            .unwrap_or(best.len());
        if at < k {
            best.insert(at, j);
            best.truncate(k);
        }
    }
    out.iter_mut().for_each(|v| *v = 0.0);
    for j in best {
        out[j] = 1.0;
    }
}

/// VJP: gather ↔ scatter-add; one-hot and top-k masks are piecewise constant (no gradient).
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    _node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    Ok(match op {
        Op::Gather if needs[0] => {
            let rows = g.shape(ins[0])[0];
            vec![Some(g.add(Op::ScatterAdd { rows }, &[dy, ins[1]])?), None]
        }
        Op::ScatterAdd { .. } if needs[0] => vec![Some(g.add(Op::Gather, &[dy, ins[1]])?), None],
        _ => vec![None; ins.len()],
    })
}
