//! Constant scales move to the small side of thin products: `(c·X)·W` → `c·(X·W)` when every
//! reader of `c·X` is a product whose results together are at most a quarter of `X` (a LoRA
//! adapter's gradient `s·dY` feeds only rank-sized products), so the full-size scaled copy is
//! never written. Exact in real arithmetic; it changes rounding, so it is an `optimize` stage.

use crate::ir::tensor::numel;
use crate::ir::{BinaryOp, Graph, NodeId, Op, R};
use petgraph::Direction;

/// `(x, c)` when `id` is `x · fill(c)` (either order, the fill possibly broadcast).
fn scaled(g: &Graph, id: NodeId) -> Option<(NodeId, f32)> {
    if !matches!(g.node(id).op, Op::Binary(BinaryOp::Mul)) {
        return None;
    }
    let ins = g.inputs(id);
    // A fill, or a broadcast of one (scalars in the spec: `s * …`).
    let fill = |i: NodeId| {
        let i = match g.node(i).op {
            Op::Broadcast { .. } => g.inputs(i)[0],
            _ => i,
        };
        match g.node(i).op {
            Op::Fill { value, .. } => Some(value),
            _ => None,
        }
    };
    match (fill(ins[0]), fill(ins[1])) {
        (Some(c), None) => Some((ins[1], c)),
        (None, Some(c)) => Some((ins[0], c)),
        _ => None,
    }
}

/// The distinct live readers of `id` (a product replaced earlier in this run has no readers
/// left and is not an output; it is skipped until DCE removes it).
fn readers(g: &Graph, id: NodeId) -> Vec<NodeId> {
    let live = |u: &NodeId| {
        g.g.neighbors_directed(*u, Direction::Outgoing)
            .next()
            .is_some()
            || g.outputs.iter().any(|(_, o)| o == u)
    };
    let mut v: Vec<NodeId> =
        g.g.neighbors_directed(id, Direction::Outgoing)
            .filter(live)
            .collect();
    v.sort();
    v.dedup();
    v
}

/// Rewrites one scaled node when it qualifies; returns true when the graph changed.
fn rewrite(g: &mut Graph, id: NodeId) -> R<bool> {
    let Some((x, c)) = scaled(g, id) else {
        return Ok(false);
    };
    if g.outputs.iter().any(|(_, o)| *o == id) {
        return Ok(false);
    }
    let uses = readers(g, id);
    let products = uses.iter().all(|&u| {
        let ins = g.inputs(u);
        matches!(g.node(u).op, Op::MatMul) && !(ins[0] == id && ins[1] == id)
    });
    let out: usize = uses.iter().map(|&u| numel(g.shape(u))).sum();
    if uses.is_empty() || !products || out * 4 > numel(g.shape(id)) {
        return Ok(false);
    }
    for u in uses {
        let ins = g.inputs(u);
        let pick = |i: NodeId| if i == id { x } else { i };
        let p = g.matmul(pick(ins[0]), pick(ins[1]))?;
        let shape = g.shape(p).to_vec();
        let f = g.add(Op::Fill { shape, value: c }, &[])?;
        let v = g.times(f, p)?;
        g.replace_uses(u, v);
    }
    Ok(true)
}

/// Moves every qualifying scale; returns the number of scaled nodes rewritten.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut n = 0;
    for id in g.topo()? {
        if rewrite(g, id)? {
            n += 1;
        }
    }
    if n > 0 {
        super::dce::run(g)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::interp::run_outputs;
    use crate::ir::{DType, InputKind, Tensor};
    use std::collections::HashMap;

    fn input(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
        let op = Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype: DType::F32,
        };
        g.add(op, &[]).unwrap()
    }

    /// `s·dY` read by a rank-2 product on each side moves to the products' results, with the
    /// same values within rounding; a scale read by a large product stays.
    #[test]
    fn scales_move_to_thin_results_only() {
        let (t, m, r) = (80, 48, 2);
        let mut g = Graph::new();
        let dy = input(&mut g, "dy", &[t, m]);
        let z = input(&mut g, "z", &[t, r]);
        let b = input(&mut g, "b", &[r, m]);
        let w = input(&mut g, "w", &[m, m]);
        let s = g
            .add(
                Op::Fill {
                    shape: vec![],
                    value: 3.5,
                },
                &[],
            )
            .unwrap();
        let s = g.bc(s, &[t, m]).unwrap();
        let sd = g.times(s, dy).unwrap();
        let zt = g.t(z).unwrap();
        let db = g.matmul(zt, sd).unwrap(); // [r, m]
        let bt = g.t(b).unwrap();
        let dz = g.matmul(sd, bt).unwrap(); // [t, r]
        g.set_output("db", db);
        g.set_output("dz", dz);
        // A scale read by a full-size product stays.
        let s2 = g
            .add(
                Op::Fill {
                    shape: vec![t, m],
                    value: 0.5,
                },
                &[],
            )
            .unwrap();
        let big = g.times(dy, s2).unwrap();
        let full = g.matmul(big, w).unwrap();
        g.set_output("full", full);
        let vals = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect();
        let inputs: HashMap<String, Tensor> = [
            ("dy", Tensor::f32(vec![t, m], vals(t * m, 0.3))),
            ("z", Tensor::f32(vec![t, r], vals(t * r, 0.7))),
            ("b", Tensor::f32(vec![r, m], vals(r * m, 1.1))),
            ("w", Tensor::f32(vec![m, m], vals(m * m, 0.9))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let before = run_outputs(&g, &inputs).unwrap();
        assert_eq!(run(&mut g).unwrap(), 1);
        let muls: Vec<Vec<usize>> =
            g.g.node_indices()
                .filter(|&i| matches!(g.node(i).op, Op::Binary(BinaryOp::Mul)))
                .map(|i| g.shape(i).to_vec())
                .collect();
        let mut want = vec![vec![r, m], vec![t, r], vec![t, m]];
        let mut got = muls.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "scales on both thin results; the full product's stays"
        );
        let after = run_outputs(&g, &inputs).unwrap();
        for ((name, b), (_, a)) in before.iter().zip(&after) {
            for (x, y) in b.f().iter().zip(a.f()) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{name}: {y} vs {x}"
                );
            }
        }
    }
}
