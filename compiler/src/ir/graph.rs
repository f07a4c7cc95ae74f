//! The IR graph: a petgraph `StableGraph` of typed nodes, edges carrying operand indices.

use super::op::{DType, InputKind, Op};
use super::ops;
use crate::diag::Span;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::fmt;

/// A node handle.
pub type NodeId = NodeIndex;

/// An error while building or transforming IR (a compiler bug, or an unsupported construct).
#[derive(Clone, Debug, PartialEq)]
pub struct IrError(pub String);

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IrError {}

/// Result of IR construction.
pub type R<T> = Result<T, IrError>;

/// One operation with its inferred type and the spec position it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Output shape.
    pub shape: Vec<usize>,
    /// Output element type.
    pub dtype: DType,
    /// Where in the spec (or the model family) it came from.
    pub origin: Span,
}

/// A dataflow graph with named outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The nodes; edge weight = operand index.
    pub g: StableGraph<Node, usize>,
    /// Named results, in order.
    pub outputs: Vec<(String, NodeId)>,
    /// Origin given to nodes added from now on.
    pub origin: Span,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node, inferring its shape and dtype from its operands.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> R<NodeId> {
        let ins: Vec<(&[usize], DType)> = inputs
            .iter()
            .map(|&i| (self.g[i].shape.as_slice(), self.g[i].dtype))
            .collect();
        let (shape, dtype) =
            ops::infer(&op, &ins).map_err(|e| IrError(format!("{}: {e}", op.name())))?;
        if let Some(&keep) = inputs.get(3) {
            ops::routing::check_keep(&op, &self.g[keep].op, &ins)
                .map_err(|e| IrError(format!("{}: {e}", op.name())))?;
        }
        let id = self.g.add_node(Node {
            op,
            shape,
            dtype,
            origin: self.origin,
        });
        for (k, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i, id, k);
        }
        Ok(id)
    }

    /// The node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    /// Shape of a node.
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.g[id].shape
    }

    /// Operands in operand order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<(usize, NodeId)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use this node.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.g.neighbors_directed(id, Direction::Outgoing).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Nodes in a topological order (operands first); stable for a given graph.
    pub fn topo(&self) -> R<Vec<NodeId>> {
        petgraph::algo::toposort(&self.g, None)
            .map_err(|c| IrError(format!("cycle through node {}", c.node_id().index())))
    }

    /// Names a result.
    pub fn set_output(&mut self, name: &str, id: NodeId) {
        if let Some(o) = self.outputs.iter_mut().find(|(n, _)| n == name) {
            o.1 = id;
        } else {
            self.outputs.push((name.to_string(), id));
        }
    }

    /// A named result.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
    }

    /// The input node with this name.
    pub fn find_input(&self, name: &str) -> Option<NodeId> {
        self.g
            .node_indices()
            .find(|&i| matches!(&self.g[i].op, Op::Input { name: n, .. } if n == name))
    }

    /// All input nodes of a kind, in name order.
    pub fn inputs_of_kind(&self, kind: InputKind) -> Vec<(String, NodeId)> {
        let mut v: Vec<(String, NodeId)> = self
            .g
            .node_indices()
            .filter_map(|i| match &self.g[i].op {
                Op::Input { name, kind: k, .. } if *k == kind => Some((name.clone(), i)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// Replaces every use of `old` (including outputs) by `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let edges: Vec<(NodeId, usize, petgraph::stable_graph::EdgeIndex)> = self
            .g
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight(), e.id()))
            .collect();
        for (t, k, e) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(new, t, k);
        }
        for o in &mut self.outputs {
            if o.1 == old {
                o.1 = new;
            }
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// True for an empty graph.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
}
