//! Work and saved activations of a built training graph, attributed to the base model, each
//! adapted module (with its top-k routing) and the task head. `cost.rs` turns this into the
//! report; the conventions are in its doc comment and `docs/cost-report.md`.

use crate::build::Forward;
use crate::ir::{BinaryOp, DType, Graph, InputKind, IrError, NodeId, Op, R};
use crate::passes::autodiff;
use petgraph::visit::NodeIndexable;
use std::collections::{BTreeSet, HashSet};

/// FLOPs of one batch: forward, and backward (the training step is their sum).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flops {
    /// Forward pass.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
}

impl Flops {
    fn add(&mut self, fwd: f64, bwd: f64) {
        self.forward += fwd;
        self.backward += bwd;
    }
}

/// One adapted module's measurements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleWork {
    /// Module path.
    pub name: String,
    /// Adapter and router matmuls (the frozen base path is in `GraphWork::base`).
    pub flops: Flops,
    /// `(k, E)` of the module's top-k router, if it routes with `topk`.
    pub gate: Option<(usize, usize)>,
}

/// Measurements of one training graph for one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphWork {
    /// Frozen base model: every linear, attention products, LM head.
    pub base: Flops,
    /// Task head.
    pub head: Flops,
    /// Per adapted module, in build order.
    pub modules: Vec<ModuleWork>,
    /// Bytes of forward values the backward pass reads (routed experts at their active share).
    pub activation_bytes: f64,
}

/// Where a forward node's work belongs.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    Base,
    Head,
    Module(usize),
}

/// The experts a node's value depends on.
#[derive(Clone, Copy, PartialEq)]
enum Ex {
    /// None (shared work: router, shared factors, base path).
    No,
    /// Exactly one: this is that expert's own work.
    One(usize),
    /// Several: a mixture of experts (after the gated sum), not any one expert's work.
    Many,
}

impl Ex {
    fn join(self, o: Ex) -> Ex {
        match (self, o) {
            (Ex::No, x) | (x, Ex::No) => x,
            (Ex::One(a), Ex::One(b)) if a == b => Ex::One(a),
            _ => Ex::Many,
        }
    }
}

/// Per-node facts, indexed by node index.
struct Facts {
    /// Depends differentiably on a trainable tensor (needs a gradient).
    varying: Vec<bool>,
    /// Depends on per-batch data (token-dependent).
    data: Vec<bool>,
    /// Inside a module: depends on a trainable tensor created by that module.
    local_param: Vec<bool>,
    /// Inside a module: which experts' slices of stacked per-expert tensors a node reads.
    expert: Vec<Ex>,
    /// Outside every module: depends on a head tensor.
    head: Vec<bool>,
    owner: Vec<Owner>,
}

/// FLOPs of `[..., a, b] @ [..., b, c]`: 2·a·b·c per batch entry.
fn matmul_flops(g: &Graph, id: NodeId) -> f64 {
    let ins = g.inputs(id);
    let (Some(&l), Some(&r)) = (ins.first(), ins.get(1)) else {
        return 0.0;
    };
    let (ls, rs) = (g.shape(l), g.shape(r));
    if ls.len() < 2 || rs.len() < 2 {
        return 0.0;
    }
    let batch: f64 = ls[..ls.len() - 2].iter().map(|&d| d as f64).product();
    // `AttnProbs` multiplies by `kᵀ`: its keys are `[..., n, d]`.
    let c = match g.node(id).op {
        Op::AttnProbs { .. } => rs[rs.len() - 2],
        _ => rs[rs.len() - 1],
    };
    let (a, b) = (ls[ls.len() - 2], ls[ls.len() - 1]);
    2.0 * batch * a as f64 * b as f64 * c as f64
}

fn param_names(g: &Graph, ids: &[usize]) -> HashSet<usize> {
    ids.iter()
        .copied()
        .filter(|&i| {
            matches!(
                &g.node(NodeId::new(i)).op,
                Op::Input {
                    kind: InputKind::Param,
                    ..
                }
            )
        })
        .collect()
}

fn facts(g: &Graph, fwd_len: usize, fwd: &Forward, order: &[NodeId]) -> Facts {
    let n = g.g.node_bound();
    let mut owner = vec![Owner::Base; n];
    for (mi, (_, range)) in fwd.modules.iter().enumerate() {
        for i in range.clone() {
            if i < n {
                owner[i] = Owner::Module(mi);
            }
        }
    }
    let stacked: HashSet<String> = fwd
        .params
        .iter()
        .filter(|p| p.experts.is_some())
        .map(|p| p.name.clone())
        .collect();
    let params_in_modules: HashSet<usize> = param_names(
        g,
        &fwd.modules
            .iter()
            .flat_map(|(_, r)| r.clone())
            .collect::<Vec<_>>(),
    );
    let mut f = Facts {
        varying: vec![false; n],
        data: vec![false; n],
        local_param: vec![false; n],
        expert: vec![Ex::No; n],
        head: vec![false; n],
        owner: Vec::new(),
    };
    for &id in order {
        let i = id.index();
        let node = g.node(id);
        let ins: Vec<usize> = g.inputs(id).iter().map(|x| x.index()).collect();
        // Module-local facts propagate only inside the module's own nodes.
        let same = |j: &usize| owner[*j] == owner[i];
        match &node.op {
            Op::Input { kind, .. } => {
                f.varying[i] = *kind == InputKind::Param;
                f.data[i] = *kind == InputKind::Data;
                let in_module = matches!(owner[i], Owner::Module(_));
                f.local_param[i] = in_module && params_in_modules.contains(&i);
                f.head[i] = !in_module && *kind == InputKind::Param && i < fwd_len;
            }
            op => {
                f.varying[i] = !autodiff::blocks_gradient(op) && ins.iter().any(|&j| f.varying[j]);
                f.data[i] = ins.iter().any(|&j| f.data[j]);
                f.local_param[i] = ins.iter().filter(|j| same(j)).any(|&j| f.local_param[j]);
                let slice_of_stacked = match op {
                    Op::Slice { axis: 0, start, .. } => ins.first().and_then(|&j| {
                        matches!(&g.node(NodeId::new(j)).op,
                            Op::Input { name, kind: InputKind::Param, .. } if stacked.contains(name))
                        .then_some(*start)
                    }),
                    _ => None,
                };
                f.expert[i] = match (owner[i], slice_of_stacked) {
                    (Owner::Module(_), Some(e)) => Ex::One(e),
                    (Owner::Module(_), None) => ins
                        .iter()
                        .filter(|j| same(j))
                        .fold(Ex::No, |acc, &j| acc.join(f.expert[j])),
                    _ => Ex::No,
                };
                f.head[i] =
                    owner[i] == Owner::Base && i < fwd_len && ins.iter().any(|&j| f.head[j]);
            }
        }
    }
    for (o, &h) in owner.iter_mut().zip(&f.head) {
        if *o == Owner::Base && h {
            *o = Owner::Head;
        }
    }
    f.owner = owner;
    f
}

/// True for a routed expert's token-dependent work (it runs on k/E of the tokens under top-k).
fn routed(f: &Facts, gates: &[Option<(usize, usize)>], i: usize) -> Option<usize> {
    match f.owner[i] {
        Owner::Module(m)
            if matches!(f.expert[i], Ex::One(_))
                && f.data[i]
                && gates.get(m).copied().flatten().is_some() =>
        {
            Some(m)
        }
        _ => None,
    }
}

/// `(k, E)` when `id` is a top-k mask that multiplies its own input (a router keeping k of E
/// experts); the k = 1 mask a dense softmax gate keeps for `balance` does not qualify.
fn routing_mask(g: &Graph, id: NodeId) -> Option<(usize, usize)> {
    let Op::TopKMask { k } = g.node(id).op else {
        return None;
    };
    let p = *g.inputs(id).first()?;
    let applied = g
        .users(id)
        .into_iter()
        .any(|u| matches!(g.node(u).op, Op::Binary(BinaryOp::Mul)) && g.inputs(u).contains(&p));
    let e = g.shape(p).last().copied()?;
    applied.then_some((k, e))
}

/// Follows views (reshape, permute, broadcast, slice) to the value they read.
fn view_root(g: &Graph, mut id: NodeId) -> NodeId {
    while matches!(
        g.node(id).op,
        Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Slice { .. }
    ) {
        match g.inputs(id).first() {
            Some(&x) => id = x,
            None => break,
        }
    }
    id
}

/// Differentiates `loss` toward every trainable input of `fwd` and measures the result.
/// `fwd.graph` must hold the forward graph and the loss (nodes are only ever added).
pub fn measure(mut fwd: Forward, loss: NodeId) -> R<GraphWork> {
    let fwd_len = fwd.graph.g.node_bound();
    let params: Vec<NodeId> = fwd
        .graph
        .inputs_of_kind(InputKind::Param)
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    autodiff::grad(&mut fwd.graph, loss, &params)?;
    let g = &fwd.graph;
    if g.g.node_count() != g.g.node_bound() {
        return Err(IrError(
            "the cost report needs a graph without removed nodes".into(),
        ));
    }
    let order = g.topo()?;
    let f = facts(g, fwd_len, &fwd, &order);
    // Forward work counts only what the loss needs (a classification head replaces the LM head).
    let mut feeds = vec![false; g.g.node_bound()];
    feeds[loss.index()] = true;
    for &id in order.iter().rev() {
        if feeds[id.index()] {
            for j in g.inputs(id) {
                feeds[j.index()] = true;
            }
        }
    }
    let gates: Vec<Option<(usize, usize)>> = fwd
        .modules
        .iter()
        .map(|(_, r)| r.clone().find_map(|i| routing_mask(g, NodeId::new(i))))
        .collect();
    let mut work = GraphWork {
        modules: fwd
            .modules
            .iter()
            .zip(&gates)
            .map(|((name, _), &gate)| ModuleWork {
                name: name.clone(),
                flops: Flops::default(),
                gate,
            })
            .collect(),
        ..GraphWork::default()
    };
    // Routed work is summed densely per module and scaled by k/E once, so sums stay exact.
    let mut routed_flops = vec![Flops::default(); work.modules.len()];
    for &id in &order {
        let i = id.index();
        let product = matches!(g.node(id).op, Op::MatMul | Op::AttnProbs { .. });
        if i >= fwd_len || !feeds[i] || !product {
            continue;
        }
        let fl = matmul_flops(g, id);
        // Backward: one product of the forward's size per operand that needs a gradient.
        // (`AttnProbs`' mask is not a product operand.)
        let needs = g
            .inputs(id)
            .iter()
            .take(2)
            .filter(|j| f.varying[j.index()])
            .count();
        let bwd = fl * needs as f64;
        match (f.owner[i], routed(&f, &gates, i)) {
            (Owner::Module(m), Some(_)) if f.local_param[i] => routed_flops[m].add(fl, bwd),
            (Owner::Module(m), None) if f.local_param[i] => work.modules[m].flops.add(fl, bwd),
            (Owner::Head, _) => work.head.add(fl, bwd),
            _ => work.base.add(fl, bwd),
        }
    }
    // Saved activations: forward values (through views) that backward nodes read, once each.
    let mut saved: BTreeSet<NodeId> = BTreeSet::new();
    for idx in fwd_len..g.g.node_bound() {
        for x in g.inputs(NodeId::new(idx)) {
            if x.index() < fwd_len {
                let root = view_root(g, x);
                if !g.node(root).op.is_leaf() {
                    saved.insert(root);
                }
            }
        }
    }
    let mut dense_bytes = 0f64;
    let mut routed_bytes = vec![0f64; work.modules.len()];
    for &id in &saved {
        let node = g.node(id);
        let size = match node.dtype {
            DType::F32 => 4.0,
            DType::I64 => 8.0,
        };
        let b = size * node.shape.iter().map(|&d| d as f64).product::<f64>();
        match routed(&f, &gates, id.index()) {
            Some(m) => routed_bytes[m] += b,
            None => dense_bytes += b,
        }
    }
    work.activation_bytes = dense_bytes;
    for (m, w) in work.modules.iter_mut().enumerate() {
        if let Some((k, e)) = w.gate {
            let (k, e) = (k as f64, e.max(1) as f64);
            w.flops.add(
                routed_flops[m].forward * k / e,
                routed_flops[m].backward * k / e,
            );
            work.activation_bytes += routed_bytes[m] * k / e;
        }
    }
    Ok(work)
}
