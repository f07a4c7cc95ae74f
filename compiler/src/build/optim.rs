//! Optimizer updates as IR: one graph that takes every trainable tensor, its gradient and its
//! optimizer state, and returns the new values. AdamW (torch semantics, decoupled weight decay,
//! optional bias correction), SGD (optional momentum), and the Riemannian preconditioned forms of
//! methods.md §4.1 for explicit (A, B) pairs.

use super::lower::ParamInfo;
use crate::check::train::{OptimizerConfig, OptimizerKind, TrainConfig};
use crate::ir::{DType, Graph, InputKind, IrError, NodeId, Op, UnaryOp, R};

/// True when a `for` selector (`head`, `adapters`, `experts`, or a tensor name) picks `p`;
/// `experts` picks per-expert tensors whose name is in `expert_tensors`.
pub fn selects(p: &ParamInfo, selector: &str, expert_tensors: &[String]) -> bool {
    match selector {
        "head" => p.module == "head",
        "adapters" => p.module != "head",
        "experts" => p.module != "head" && p.experts.is_some() && expert_tensors.contains(&p.local),
        name => p.module != "head" && p.local == name,
    }
}

/// Which optimizer (index into the train block's optimizers) updates each tensor.
pub fn assign(
    params: &[ParamInfo],
    train: &TrainConfig,
    expert_tensors: &[String],
) -> R<Vec<usize>> {
    params
        .iter()
        .map(|p| {
            train
                .optimizers
                .iter()
                .position(|o: &OptimizerConfig| {
                    o.selectors.iter().any(|s| selects(p, s, expert_tensors))
                })
                .or_else(|| train.optimizers.iter().position(|o| o.selectors.is_empty()))
                .ok_or_else(|| IrError(format!("no optimizer updates `{}`", p.name)))
        })
        .collect()
}

/// Names of the state tensors an optimizer keeps for a parameter.
pub fn state_names(kind: &OptimizerKind, param: &str) -> Vec<String> {
    match kind {
        OptimizerKind::AdamW { .. } => vec![format!("m.{param}"), format!("v.{param}")],
        OptimizerKind::Sgd { momentum, .. } if *momentum > 0.0 => vec![format!("mom.{param}")],
        OptimizerKind::Sgd { .. } => vec![],
    }
}

fn input(g: &mut Graph, name: &str, kind: InputKind, shape: &[usize]) -> R<NodeId> {
    g.add(
        Op::Input {
            name: name.to_string(),
            kind,
            shape: shape.to_vec(),
            dtype: DType::F32,
        },
        &[],
    )
}

/// Per-optimizer scalar inputs: `lr.<i>` (this step's learning rate), and for AdamW
/// `bc1.<i>` = 1/(1−β1^t), `bc2.<i>` = 1/(1−β2^t) (1 without bias correction).
pub fn scalar_inputs(i: usize) -> [String; 3] {
    [format!("lr.{i}"), format!("bc1.{i}"), format!("bc2.{i}")]
}

struct Scalars {
    lr: NodeId,
    bc1: NodeId,
    bc2: NodeId,
}

fn adamw(
    g: &mut Graph,
    p: NodeId,
    grad: NodeId,
    state: &[NodeId],
    s: &Scalars,
    kind: &OptimizerKind,
) -> R<(NodeId, Vec<NodeId>)> {
    let OptimizerKind::AdamW {
        betas: (b1, b2),
        eps,
        weight_decay,
        ..
    } = kind
    else {
        return Err(IrError("not AdamW".into()));
    };
    let (m, v) = (state[0], state[1]);
    let m1 = g.scale(m, *b1 as f32)?;
    let gg = g.scale(grad, (1.0 - b1) as f32)?;
    let m_new = g.plus(m1, gg)?;
    let v1 = g.scale(v, *b2 as f32)?;
    let g2 = g.times(grad, grad)?;
    let g2 = g.scale(g2, (1.0 - b2) as f32)?;
    let v_new = g.plus(v1, g2)?;
    // torch.optim.AdamW: p ← p(1 − lr·wd); p ← p − lr · (m/bc) / (√(v/bc2) + eps).
    let mut base = p;
    if *weight_decay != 0.0 {
        let lw = g.scale(s.lr, *weight_decay as f32)?;
        let one = g.scalar(1.0)?;
        let f = g.minus(one, lw)?;
        base = g.times(p, f)?;
    }
    let mh = g.times(m_new, s.bc1)?;
    let vh = g.times(v_new, s.bc2)?;
    let sq = g.un(UnaryOp::Sqrt, vh)?;
    let e = g.scalar(*eps as f32)?;
    let den = g.plus(sq, e)?;
    let step = g.over(mh, den)?;
    let step = g.times(step, s.lr)?;
    let p_new = g.minus(base, step)?;
    Ok((p_new, vec![m_new, v_new]))
}

fn sgd(
    g: &mut Graph,
    p: NodeId,
    grad: NodeId,
    state: &[NodeId],
    s: &Scalars,
    kind: &OptimizerKind,
) -> R<(NodeId, Vec<NodeId>)> {
    let OptimizerKind::Sgd {
        momentum,
        weight_decay,
    } = kind
    else {
        return Err(IrError("not SGD".into()));
    };
    // torch.optim.SGD: g ← g + wd·p; buf ← μ·buf + g; p ← p − lr·buf.
    let mut d = grad;
    if *weight_decay != 0.0 {
        let wp = g.scale(p, *weight_decay as f32)?;
        d = g.plus(d, wp)?;
    }
    let mut new_state = Vec::new();
    if *momentum > 0.0 {
        let b = g.scale(state[0], *momentum as f32)?;
        d = g.plus(b, d)?;
        new_state.push(d);
    }
    let step = g.times(d, s.lr)?;
    Ok((g.minus(p, step)?, new_state))
}

/// `(BᵀB + δI)⁻¹ G_A` for stacked or single factors `A[.., d, n]`, `B[.., m, d]`.
fn precondition_a(g: &mut Graph, b: NodeId, ga: NodeId, damping: f32) -> R<NodeId> {
    let bt = g.t(b)?;
    let btb = g.matmul(bt, b)?;
    g.add(Op::SpdSolve { damping }, &[btb, ga])
}

/// `G_B (AAᵀ + δI)⁻¹ = ((AAᵀ + δI)⁻¹ G_Bᵀ)ᵀ`.
fn precondition_b(g: &mut Graph, a: NodeId, gb: NodeId, damping: f32) -> R<NodeId> {
    let at = g.t(a)?;
    let aat = g.matmul(a, at)?;
    let gbt = g.t(gb)?;
    let x = g.add(Op::SpdSolve { damping }, &[aat, gbt])?;
    g.t(x)
}

/// The update graph for all trainable tensors. Inputs: each tensor (Param), `grad.<name>` (Data),
/// its state (State), and the per-optimizer scalars of [`scalar_inputs`]. Outputs: `new.<name>`
/// and `new.<state name>`.
pub fn update_graph(params: &[ParamInfo], owner: &[usize], train: &TrainConfig) -> R<Graph> {
    let mut g = Graph::new();
    let mut scalars = Vec::new();
    for i in 0..train.optimizers.len() {
        let [lr, b1, b2] = scalar_inputs(i);
        scalars.push(Scalars {
            lr: input(&mut g, &lr, InputKind::Data, &[])?,
            bc1: input(&mut g, &b1, InputKind::Data, &[])?,
            bc2: input(&mut g, &b2, InputKind::Data, &[])?,
        });
    }
    let mut nodes = std::collections::HashMap::new();
    for p in params {
        let pn = input(&mut g, &p.name, InputKind::Param, &p.shape)?;
        let gn = input(
            &mut g,
            &format!("grad.{}", p.name),
            InputKind::Data,
            &p.shape,
        )?;
        nodes.insert(p.name.clone(), (pn, gn));
    }
    // Preconditioned gradients per (A, B) pair of each module. AdamW uses B's preconditioner
    // from the updated A (Gauss–Seidel); SGD uses the pre-update A (Jacobi), methods.md §4.1.
    let mut pre: std::collections::HashMap<String, NodeId> = std::collections::HashMap::new();
    let mut updated: std::collections::HashMap<String, (NodeId, Vec<NodeId>)> =
        std::collections::HashMap::new();
    for (i, p) in params.iter().enumerate() {
        let opt = &train.optimizers[owner[i]];
        let Some(r) = &opt.precondition else { continue };
        if p.local != r.pairs.0 {
            continue;
        }
        let Some(b_info) = params
            .iter()
            .position(|q| q.module == p.module && q.local == r.pairs.1)
        else {
            continue;
        };
        let (a, ga) = nodes[&p.name];
        let (b, gb) = nodes[&params[b_info].name];
        let d = r.damping as f32;
        let ga_hat = precondition_a(&mut g, b, ga, d)?;
        pre.insert(p.name.clone(), ga_hat);
        let a_for_b = match opt.kind {
            OptimizerKind::AdamW { .. } => {
                let state: Vec<NodeId> = state_names(&opt.kind, &p.name)
                    .iter()
                    .map(|s| input(&mut g, s, InputKind::State, &p.shape))
                    .collect::<R<_>>()?;
                let up = adamw(&mut g, a, ga_hat, &state, &scalars[owner[i]], &opt.kind)?;
                let new_a = up.0;
                updated.insert(p.name.clone(), up);
                new_a
            }
            OptimizerKind::Sgd { .. } => a,
        };
        let gb_hat = precondition_b(&mut g, a_for_b, gb, d)?;
        pre.insert(params[b_info].name.clone(), gb_hat);
    }
    for (i, p) in params.iter().enumerate() {
        let opt = &train.optimizers[owner[i]];
        let (pn, gn) = nodes[&p.name];
        let up = match updated.remove(&p.name) {
            Some(u) => u,
            None => {
                let grad = pre.get(&p.name).copied().unwrap_or(gn);
                let state: Vec<NodeId> = state_names(&opt.kind, &p.name)
                    .iter()
                    .map(|s| match g.find_input(s) {
                        Some(n) => Ok(n),
                        None => input(&mut g, s, InputKind::State, &p.shape),
                    })
                    .collect::<R<_>>()?;
                match opt.kind {
                    OptimizerKind::AdamW { .. } => {
                        adamw(&mut g, pn, grad, &state, &scalars[owner[i]], &opt.kind)?
                    }
                    OptimizerKind::Sgd { .. } => {
                        sgd(&mut g, pn, grad, &state, &scalars[owner[i]], &opt.kind)?
                    }
                }
            }
        };
        g.set_output(&format!("new.{}", p.name), up.0);
        for (s, n) in state_names(&opt.kind, &p.name).iter().zip(up.1) {
            g.set_output(&format!("new.{s}"), n);
        }
    }
    Ok(g)
}
