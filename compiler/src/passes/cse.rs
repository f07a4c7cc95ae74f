//! Common-subexpression elimination: one node per (op, operands).

use crate::ir::{Graph, NodeId, R};
use std::collections::HashMap;

/// Merges nodes that compute the same op on the same operands. Returns how many were merged.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut seen: HashMap<(String, Vec<NodeId>), NodeId> = HashMap::new();
    let mut merged = 0;
    for id in g.topo()? {
        if !g.g.contains_node(id) {
            continue;
        }
        let key = (g.node(id).op.key(), g.inputs(id));
        match seen.get(&key) {
            Some(&prev) => {
                g.replace_uses(id, prev);
                g.g.remove_node(id);
                merged += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    Ok(merged)
}
