//! Dead-code elimination: keep only what the outputs need.

use crate::ir::{Graph, NodeId, R};
use std::collections::HashSet;

/// Removes every node no output depends on. Inputs are kept only if used.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut live: HashSet<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
    let mut stack: Vec<NodeId> = live.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for i in g.inputs(id) {
            if live.insert(i) {
                stack.push(i);
            }
        }
    }
    let dead: Vec<NodeId> = g.g.node_indices().filter(|i| !live.contains(i)).collect();
    for d in &dead {
        g.g.remove_node(*d);
    }
    Ok(dead.len())
}
