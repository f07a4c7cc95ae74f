//! Reverse-mode autodiff as a graph pass: from a scalar loss to the requested inputs only.
//! Frozen weights get no weight gradient, but gradients flow through them to what needs one.

use crate::ir::{Graph, IrError, NodeId, Op, R};
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

/// Ops through which no gradient flows (their outputs are piecewise constant or detached).
pub fn blocks_gradient(op: &Op) -> bool {
    matches!(
        op,
        Op::StopGrad
            | Op::TopKMask { .. }
            | Op::OneHot { .. }
            | Op::Cast { .. }
            | Op::Binary(crate::ir::BinaryOp::Gt | crate::ir::BinaryOp::Eq)
    )
}

/// Adds gradient nodes for `d loss / d w` for every `w` in `wrt`. Returns one entry per `wrt`
/// node: `None` when the loss does not depend on it (the gradient is zero).
pub fn grad(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> R<Vec<Option<NodeId>>> {
    if !g.shape(loss).iter().all(|&d| d == 1) {
        return Err(IrError(format!(
            "the loss must be a scalar, found shape {:?}",
            g.shape(loss)
        )));
    }
    let order = g.topo()?;
    // Nodes that depend differentiably on a wrt node.
    let mut varying: HashSet<NodeId> = wrt.iter().copied().collect();
    for &id in &order {
        if !varying.contains(&id)
            && !blocks_gradient(&g.node(id).op)
            && g.inputs(id).iter().any(|i| varying.contains(i))
        {
            varying.insert(id);
        }
    }
    // Nodes the loss depends on.
    let mut feeds_loss: HashSet<NodeId> = HashSet::from([loss]);
    for &id in order.iter().rev() {
        if feeds_loss.contains(&id) {
            for i in g.inputs(id) {
                feeds_loss.insert(i);
            }
        }
    }
    let relevant = |id: &NodeId| varying.contains(id) && feeds_loss.contains(id);
    let mut grads: HashMap<NodeId, NodeId> = HashMap::new();
    let seed_shape = g.shape(loss).to_vec();
    grads.insert(loss, g.fill(&seed_shape, 1.0)?);
    for &id in order.iter().rev() {
        if !relevant(&id)
            || wrt.contains(&id)
                && g.g
                    .neighbors_directed(id, Direction::Incoming)
                    .next()
                    .is_none()
        {
            continue;
        }
        let Some(&dy) = grads.get(&id) else { continue };
        let ins = g.inputs(id);
        let needs: Vec<bool> = ins.iter().map(relevant).collect();
        if !needs.iter().any(|&n| n) {
            continue;
        }
        let dxs = crate::ir::ops::vjp(g, id, dy, &needs)?;
        for ((inp, need), dx) in ins.iter().zip(&needs).zip(dxs) {
            let (true, Some(dx)) = (*need, dx) else {
                continue;
            };
            if g.shape(dx) != g.shape(*inp) {
                return Err(IrError(format!(
                    "VJP of {} gave a {:?} gradient for a {:?} operand",
                    g.node(id).op.name(),
                    g.shape(dx),
                    g.shape(*inp)
                )));
            }
            let acc = match grads.get(inp) {
                Some(&prev) => g.plus(prev, dx)?,
                None => dx,
            };
            grads.insert(*inp, acc);
        }
    }
    Ok(wrt.iter().map(|w| grads.get(w).copied()).collect())
}
