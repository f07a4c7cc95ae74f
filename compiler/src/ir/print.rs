//! Text and Graphviz renderings of a graph.

use super::graph::Graph;
use super::op::{DType, Op};
use std::fmt::Write;

fn ty(g: &Graph, id: super::graph::NodeId) -> String {
    let n = g.node(id);
    let d = match n.dtype {
        DType::F32 => "f32",
        DType::I64 => "i64",
    };
    format!("{d}{:?}", n.shape)
}

/// One line per node in topological order: `%7 = matmul(%3, %5) : f32[16, 384]`.
pub fn to_text(g: &Graph) -> String {
    let mut s = String::new();
    let order = g.topo().unwrap_or_else(|_| g.g.node_indices().collect());
    for id in order {
        let args: Vec<String> = g
            .inputs(id)
            .iter()
            .map(|i| format!("%{}", i.index()))
            .collect();
        let _ = writeln!(
            s,
            "%{} = {}({}) : {}",
            id.index(),
            g.node(id).op.name(),
            args.join(", "),
            ty(g, id)
        );
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(s, "output {name} = %{}", id.index());
    }
    s
}

/// Graphviz `dot` source: inputs as boxes (trainable ones filled), outputs as double octagons.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::from(
        "digraph lorac {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n",
    );
    for id in g.g.node_indices() {
        let n = g.node(id);
        let label = format!("{}\\n{}", n.op.name().replace('"', "'"), ty(g, id));
        let style = match &n.op {
            Op::Input {
                kind: super::op::InputKind::Param,
                ..
            } => "shape=box, style=filled, fillcolor=\"#ffe08a\"",
            Op::Input { .. } => "shape=box",
            Op::Fill { .. } | Op::Literal { .. } => "shape=note",
            Op::MatMul => "shape=ellipse, style=filled, fillcolor=\"#cfe3ff\"",
            _ => "shape=ellipse",
        };
        let _ = writeln!(s, "  n{} [label=\"{label}\", {style}];", id.index());
    }
    for id in g.g.node_indices() {
        for (k, i) in g.inputs(id).iter().enumerate() {
            let _ = writeln!(s, "  n{} -> n{} [label=\"{k}\"];", i.index(), id.index());
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(
            s,
            "  out_{name} [label=\"{name}\", shape=doubleoctagon];\n  n{} -> out_{name};",
            id.index()
        );
    }
    s.push_str("}\n");
    s
}
