//! LoRA reassociation: chains of matrix products are evaluated in their cheapest order, so a
//! low-rank update written `x @ (B @ A)^T` runs as `(x Aᵀ) Bᵀ` and the `m × n` matrix `B A` is
//! never materialised in a step. Exact in real arithmetic; only products whose inner result has
//! a single use are reordered (nothing else may read it).

use crate::ir::{Graph, NodeId, Op, R};
use petgraph::Direction;

fn single_use(g: &Graph, id: NodeId) -> bool {
    g.g.edges_directed(id, Direction::Outgoing).count() == 1
        && !g.outputs.iter().any(|(_, o)| *o == id)
}

fn is_matmul(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::MatMul)
}

/// A transpose of the last two axes.
fn is_t(g: &Graph, id: NodeId) -> bool {
    match &g.node(id).op {
        Op::Permute { perm } => {
            let r = perm.len();
            r >= 2
                && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
        }
        _ => false,
    }
}

/// `(m, p, q, n)` of `a[m,p] · b[p,q] · c[q,n]` (trailing two axes).
fn dims(g: &Graph, a: NodeId, b: NodeId, c: NodeId) -> (usize, usize, usize, usize) {
    let (sa, sb, sc) = (g.shape(a), g.shape(b), g.shape(c));
    let r = sa.len();
    (sa[r - 2], sa[r - 1], sb[r - 1], sc[r - 1])
}

/// Rewrites one product; returns true when the graph changed.
fn rewrite(g: &mut Graph, id: NodeId) -> R<bool> {
    let ops = g.inputs(id);
    let (x, y) = (ops[0], ops[1]);
    // (P Q)ᵀ read by a product becomes Qᵀ Pᵀ, exposing the chain.
    if is_t(g, y) && single_use(g, y) {
        let inner = g.inputs(y)[0];
        if is_matmul(g, inner) && single_use(g, inner) {
            let pq = g.inputs(inner);
            let qt = g.t(pq[1])?;
            let pt = g.t(pq[0])?;
            let m = g.matmul(qt, pt)?;
            let n = g.matmul(x, m)?;
            g.replace_uses(id, n);
            return Ok(true);
        }
    }
    // a (b c) → (a b) c when cheaper.
    if is_matmul(g, y) && single_use(g, y) {
        let bc = g.inputs(y);
        let (m, p, q, n) = dims(g, x, bc[0], bc[1]);
        if m * p * q + m * q * n < p * q * n + m * p * n {
            let ab = g.matmul(x, bc[0])?;
            let r = g.matmul(ab, bc[1])?;
            g.replace_uses(id, r);
            return Ok(true);
        }
    }
    // (a b) c → a (b c) when cheaper.
    if is_matmul(g, x) && single_use(g, x) {
        let ab = g.inputs(x);
        let (m, p, q, n) = dims(g, ab[0], ab[1], y);
        if p * q * n + m * p * n < m * p * q + m * q * n {
            let bc = g.matmul(ab[1], y)?;
            let r = g.matmul(ab[0], bc)?;
            g.replace_uses(id, r);
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reassociates every product chain; returns the number of rewrites.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut n = 0;
    loop {
        let mut changed = false;
        for id in g.topo()? {
            if g.g.contains_node(id) && is_matmul(g, id) && rewrite(g, id)? {
                changed = true;
                n += 1;
                // Drop what the rewrite orphaned so single-use tests stay exact.
                super::dce::run(g)?;
                break;
            }
        }
        if !changed {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::interp::run_outputs;
    use crate::ir::{DType, InputKind, Tensor};
    use std::collections::HashMap;

    fn input(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
        g.add(
            Op::Input {
                name: name.into(),
                kind: InputKind::Data,
                shape: shape.to_vec(),
                dtype: DType::F32,
            },
            &[],
        )
        .unwrap()
    }

    fn values(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::f32(
            shape.to_vec(),
            (0..n)
                .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 8.0)
                .collect(),
        )
    }

    #[test]
    fn a_materialised_low_rank_update_is_applied_factor_by_factor() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[64, 32]);
        let b = input(&mut g, "b", &[48, 4]);
        let a = input(&mut g, "a", &[4, 32]);
        let ba = g.matmul(b, a).unwrap(); // [48, 32]
        let bat = g.t(ba).unwrap();
        let y = g.matmul(x, bat).unwrap(); // x (BA)ᵀ: [64, 48]
        g.set_output("y", y);
        let mut inputs = HashMap::new();
        for (n, s, k) in [
            ("x", vec![64, 32], 1),
            ("b", vec![48, 4], 2),
            ("a", vec![4, 32], 3),
        ] {
            inputs.insert(n.to_string(), values(&s, k));
        }
        let before = run_outputs(&g, &inputs).unwrap();
        assert!(run(&mut g).unwrap() >= 1);
        // No product may produce a 48 × 32 (or 32 × 48) matrix any more.
        for id in g.g.node_indices() {
            if is_matmul(&g, id) {
                let s = g.shape(id);
                assert!(
                    s != [48, 32] && s != [32, 48],
                    "B A is still materialised: {s:?}"
                );
            }
        }
        let after = run_outputs(&g, &inputs).unwrap();
        assert!(before[0].1.max_abs_diff(&after[0].1) < 1e-4);
    }

    #[test]
    fn a_chain_already_in_the_cheap_order_is_left_alone() {
        let mut g = Graph::new();
        let x = input(&mut g, "x", &[64, 32]);
        let at = input(&mut g, "at", &[32, 4]);
        let bt = input(&mut g, "bt", &[4, 48]);
        let h = g.matmul(x, at).unwrap();
        let y = g.matmul(h, bt).unwrap();
        g.set_output("y", y);
        assert_eq!(run(&mut g).unwrap(), 0);
    }
}
