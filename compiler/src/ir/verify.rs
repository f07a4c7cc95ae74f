//! Graph invariants, checked after every pass in debug and test builds.

use super::graph::Graph;
use super::op::Op;
use super::ops;
use petgraph::Direction;

/// Checks: acyclic; operand indices are 0..n without gaps; re-inferred shapes and dtypes
/// equal the stored ones; routed ops' keep bits come from a matching `RoutedKeep`; outputs
/// and inputs exist; input names are unique.
pub fn verify(g: &Graph) -> Result<(), String> {
    g.topo().map_err(|e| e.0)?;
    let mut names = std::collections::HashSet::new();
    for id in g.g.node_indices() {
        let node = g.node(id);
        let mut ks: Vec<usize> =
            g.g.edges_directed(id, Direction::Incoming)
                .map(|e| *e.weight())
                .collect();
        ks.sort();
        if ks.iter().enumerate().any(|(i, &k)| i != k) {
            return Err(format!(
                "node {} ({}) has operand indices {ks:?}",
                id.index(),
                node.op.name()
            ));
        }
        let ins: Vec<(&[usize], _)> = g
            .inputs(id)
            .iter()
            .map(|&i| (g.shape(i), g.node(i).dtype))
            .collect();
        let (shape, dtype) = ops::infer(&node.op, &ins)
            .map_err(|e| format!("node {} ({}): {e}", id.index(), node.op.name()))?;
        if let Some(&keep) = g.inputs(id).get(3) {
            ops::routing::check_keep(&node.op, &g.node(keep).op, &ins)
                .map_err(|e| format!("node {} ({}): {e}", id.index(), node.op.name()))?;
        }
        if shape != node.shape || dtype != node.dtype {
            return Err(format!(
                "node {} ({}) is typed {:?}{:?} but its operands give {dtype:?}{shape:?}",
                id.index(),
                node.op.name(),
                node.dtype,
                node.shape
            ));
        }
        if let Op::Input { name, .. } = &node.op {
            if !names.insert(name.clone()) {
                return Err(format!("input `{name}` appears twice"));
            }
        }
    }
    for (name, id) in &g.outputs {
        if !g.g.contains_node(*id) {
            return Err(format!("output `{name}` points at a removed node"));
        }
    }
    Ok(())
}
