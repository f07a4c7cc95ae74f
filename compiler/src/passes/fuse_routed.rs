//! Fuses the backward of routed experts' down-projection: the adjoint of routed dropout whose
//! values come straight from a thin product (`RoutedDropout_t(reshape(g · a))`, made by
//! differentiating `routed_dropout(x) · Aᵀ`) becomes one `RoutedExpand(g, a, mask, seed)`, so
//! the `[T·k, n]` product is never stored and read back. Exact in real arithmetic; the fused
//! op defines its own rounding (one multiply-add chain per element), so this is an `optimize`
//! stage, not part of the bit-exact pipeline.

use crate::ir::{Graph, NodeId, Op, R};
use petgraph::Direction;

/// Products whose inner dimension is at most this wide are fused (a LoRA rank times experts).
const MAX_INNER: usize = 64;

fn single_use(g: &Graph, id: NodeId) -> bool {
    g.g.edges_directed(id, Direction::Outgoing).count() == 1
        && !g.outputs.iter().any(|(_, o)| *o == id)
}

/// The fused replacement of `id`, when it has the pattern.
fn rewrite(g: &mut Graph, id: NodeId) -> R<Option<NodeId>> {
    let Op::RoutedDropout {
        p,
        salts,
        k,
        transpose: true,
    } = g.node(id).op.clone()
    else {
        return Ok(None);
    };
    let ins = g.inputs(id);
    let (x, mask, seed) = (ins[0], ins[1], ins[2]);
    let mut prod = x;
    if matches!(g.node(x).op, Op::Reshape { .. }) && single_use(g, x) {
        prod = g.inputs(x)[0];
    }
    if !matches!(g.node(prod).op, Op::MatMul) || !single_use(g, prod) {
        return Ok(None);
    }
    let f = g.inputs(prod);
    let (gs, a_s) = (g.shape(f[0]).to_vec(), g.shape(f[1]).to_vec());
    let t = g.shape(mask)[0];
    let fits = gs.len() == 2 && a_s.len() == 2 && gs[0] == t * k && gs[1] <= MAX_INNER;
    if !fits {
        return Ok(None);
    }
    let g3 = g.reshape(f[0], &[t, k, gs[1]])?;
    let op = Op::RoutedExpand { p, salts, k };
    Ok(Some(g.add(op, &[g3, f[1], mask, seed])?))
}

/// Fuses every match; returns the number of rewrites.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut n = 0;
    for id in g.topo()? {
        if let Some(new) = rewrite(g, id)? {
            g.replace_uses(id, new);
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

    fn input(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> NodeId {
        let op = Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype,
        };
        g.add(op, &[]).unwrap()
    }

    /// The gradient of `routed_dropout(x) · Aᵀ` with respect to `x` is fused, and equals the
    /// unfused gradient within rounding.
    #[test]
    fn the_routed_backward_fuses_and_keeps_its_value() {
        let (t, k, e, n, d) = (5, 2, 4, 6, 1);
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[t, n], DType::F32);
        let logits = input(&mut g, "logits", &[t, e], DType::F32);
        let a = input(&mut g, "a", &[e * d, n], DType::F32);
        let seed = input(&mut g, "seed", &[1], DType::I64);
        let mask = g.add(Op::TopKMask { k }, &[logits]).unwrap();
        let op = Op::RoutedDropout {
            p: 0.3,
            salts: (0..e as u64).collect(),
            k,
            transpose: false,
        };
        let xd = g.add(op, &[x, mask, seed]).unwrap();
        let xd = g.reshape(xd, &[t * k, n]).unwrap();
        let at = g.t(a).unwrap();
        let u = g.matmul(xd, at).unwrap();
        let sq = g.times(u, u).unwrap();
        let l = g.sum(sq, 1).unwrap();
        let l = g.sum(l, 0).unwrap();
        let dx = crate::passes::autodiff::grad(&mut g, l, &[x]).unwrap()[0].unwrap();
        g.set_output("dx", dx);
        let vals = |len: usize, s: f32| (0..len).map(|i| ((i as f32) * s).sin()).collect();
        let inputs: HashMap<String, Tensor> = [
            ("x", Tensor::f32(vec![t, n], vals(t * n, 0.7))),
            ("logits", Tensor::f32(vec![t, e], vals(t * e, 1.3))),
            ("a", Tensor::f32(vec![e * d, n], vals(e * d * n, 0.4))),
            ("seed", Tensor::i64(vec![1], vec![42])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let before = run_outputs(&g, &inputs).unwrap();
        assert_eq!(run(&mut g).unwrap(), 1);
        let fused = g
            .topo()
            .unwrap()
            .into_iter()
            .filter(|&i| matches!(g.node(i).op, Op::RoutedExpand { .. }))
            .count();
        assert_eq!(fused, 1);
        let after = run_outputs(&g, &inputs).unwrap();
        for (b, a) in before[0].1.f().iter().zip(after[0].1.f()) {
            assert!((b - a).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
