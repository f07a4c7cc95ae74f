//! Algebraic simplification and constant folding. Every rewrite is exact in f32, so the
//! interpreter's results before and after are identical.

use crate::ir::ops::elementwise::{binary_fn, unary_fn};
use crate::ir::{BinaryOp, Graph, NodeId, Op, R};

fn fill_value(g: &Graph, id: NodeId) -> Option<f32> {
    match &g.node(id).op {
        Op::Fill { value, .. } => Some(*value),
        _ => None,
    }
}

/// What a node can be replaced with.
enum Rewrite {
    /// An existing node.
    Use(NodeId),
    /// A new constant of the node's shape.
    Fill(f32),
    /// A new op on the given operands.
    Op(Op, Vec<NodeId>),
}

fn rewrite(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let node = g.node(id);
    let ins = g.inputs(id);
    let shape = &node.shape;
    match &node.op {
        // Broadcasting or reshaping a constant is a constant.
        Op::Broadcast { .. } | Op::Reshape { .. } => {
            let src = ins[0];
            if let Some(v) = fill_value(g, src) {
                return Some(Rewrite::Fill(v));
            }
            if g.shape(src) == shape.as_slice() {
                return Some(Rewrite::Use(src));
            }
            if let (Op::Reshape { .. }, Op::Reshape { .. }) = (&node.op, &g.node(src).op) {
                return Some(Rewrite::Op(
                    Op::Reshape {
                        shape: shape.clone(),
                    },
                    g.inputs(src),
                ));
            }
            None
        }
        Op::Permute { perm } => {
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                return Some(Rewrite::Use(ins[0]));
            }
            if let Op::Permute { perm: inner } = &g.node(ins[0]).op {
                let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
                return Some(Rewrite::Op(
                    Op::Permute { perm: composed },
                    g.inputs(ins[0]),
                ));
            }
            fill_value(g, ins[0]).map(Rewrite::Fill)
        }
        Op::Unary(u) => {
            if let Some(v) = fill_value(g, ins[0]) {
                return Some(Rewrite::Fill(unary_fn(*u, v)));
            }
            if *u == crate::ir::UnaryOp::Neg {
                if let Op::Unary(crate::ir::UnaryOp::Neg) = g.node(ins[0]).op {
                    return Some(Rewrite::Use(g.inputs(ins[0])[0]));
                }
            }
            None
        }
        Op::Binary(b) => {
            let (a, c) = (fill_value(g, ins[0]), fill_value(g, ins[1]));
            match (b, a, c) {
                (_, Some(x), Some(y)) => Some(Rewrite::Fill(binary_fn(*b, x, y))),
                // Exact only for these zeros: -0 + (+0) = +0, and x - (-0) = x + (+0).
                (BinaryOp::Add, Some(z), _) if z == 0.0 && z.is_sign_negative() => {
                    Some(Rewrite::Use(ins[1]))
                }
                (BinaryOp::Add, _, Some(z)) if z == 0.0 && z.is_sign_negative() => {
                    Some(Rewrite::Use(ins[0]))
                }
                (BinaryOp::Sub, _, Some(z)) if z == 0.0 && z.is_sign_positive() => {
                    Some(Rewrite::Use(ins[0]))
                }
                (BinaryOp::Mul, Some(1.0), _) => Some(Rewrite::Use(ins[1])),
                (BinaryOp::Mul | BinaryOp::Div, _, Some(1.0)) => Some(Rewrite::Use(ins[0])),
                _ => None,
            }
        }
        Op::StopGrad => fill_value(g, ins[0]).map(Rewrite::Fill),
        _ => None,
    }
}

/// Applies rewrites until none applies. Returns the number of rewrites.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut count = 0;
    loop {
        let mut changed = false;
        for id in g.topo()? {
            if !g.g.contains_node(id) {
                continue;
            }
            let Some(rw) = rewrite(g, id) else { continue };
            let origin = g.node(id).origin;
            let saved = g.origin;
            g.origin = origin;
            let new = match rw {
                Rewrite::Use(n) => n,
                Rewrite::Fill(v) => {
                    let shape = g.shape(id).to_vec();
                    g.fill(&shape, v)?
                }
                Rewrite::Op(op, ins) => g.add(op, &ins)?,
            };
            g.origin = saved;
            if new != id {
                g.replace_uses(id, new);
                g.g.remove_node(id);
                count += 1;
                changed = true;
            }
        }
        if !changed {
            return Ok(count);
        }
    }
}
