//! The cost report (`loraC compile SPEC --emit report`): per attached module and in total, the
//! experts, top-k, rank and trainable parameters, FLOPs per token of the forward pass and of a
//! training step, activation memory and optimizer memory. It needs only the checked spec: the
//! graph is built with shapes and never run, so a config-only model (no weights) is costable.
//!
//! Conventions (also `docs/cost-report.md`):
//!
//! * A matmul `[…, a, b] @ […, b, c]` costs `2·a·b·c` FLOPs per batch entry. Only matmuls are
//!   counted: elementwise ops, norms, softmax, reductions, gathers (embeddings) and the
//!   optimizer's elementwise update are free.
//! * Forward = every matmul of the graph loraC builds that the training loss depends on: the
//!   base model's linears, the attention score (`QKᵀ`) and value (`PV`) products at the
//!   geometry's sequence length (the score product inside the `AttnProbs` op that builds
//!   the probabilities counts as that matmul), the LM head when it feeds the loss, the adapters, routers
//!   and the task head. Without a `train` block the loss is the sum of the `logits` output
//!   (llama: the LM head, as causal-LM training) or of `hidden` (bert).
//! * Top-k routing: in a module whose router uses `topk(…, k)` over `E` experts, the
//!   token-dependent work of per-expert tensors (`A[e]`, `B[e]`, …) counts `k/E` of the dense
//!   graph's, i.e. exactly the `k` experts each token visits; the router counts in full. A
//!   dense (softmax) mixture counts every expert.
//! * Backward: for each forward matmul, one product of the same size per operand that needs a
//!   gradient (depends on a trainable tensor through differentiable ops, as loraC's autodiff
//!   decides). A frozen base linear whose input carries gradient costs 1× (input gradient only);
//!   `x @ Aᵀ` costs 1× (weight gradient; `x` of the first layers needs none) and `h @ Bᵀ` 2×.
//!   Training step = forward + backward.
//! * FLOPs per token = FLOPs of one batch / (batch · seq).
//! * Activation bytes: the forward values the gradient program reads, each counted once
//!   through views (reshape, permute, broadcast, slice), at their dtype's size (f32: 4 bytes),
//!   for one batch; routed per-expert values count `k/E`. Weights and inputs are not counted.
//! * Optimizer bytes: 4 bytes per state value: AdamW 2 per trainable value, SGD with momentum
//!   1, without 0. Riemannian preconditioning keeps no state of its own (its `d×d` systems are
//!   rebuilt each step), so it costs its optimizer's. Without a `train` block AdamW is assumed.

use super::cost_graph::{self, GraphWork};
use crate::build::{self, loss, optim, Geometry};
use crate::check::train::{OptimizerKind, TrainConfig};
use crate::check::value::Dim;
use crate::check::Spec;
use crate::diag::{codes, Diagnostic};
use crate::ir::NodeId;
use crate::syntax::ast::{AdapterDef, Expr, ExprKind, Stmt};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Longest sequence a report builds for (llama's causal mask is a `seq × seq` constant).
pub const MAX_SEQ: usize = 16_384;
/// Most tokens per batch a report builds for.
pub const MAX_TOKENS: usize = 1 << 24;
/// Sequence length when neither the command line nor a `train` block gives one.
pub const DEFAULT_SEQ: usize = 512;

/// One attached module.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleCost {
    /// Module path.
    pub name: String,
    /// Layer index, for modules inside a numbered layer.
    pub layer: Option<usize>,
    /// Adapter name.
    pub adapter: String,
    /// Experts (1 for an adapter without an experts block).
    pub experts: usize,
    /// Experts each token visits (`k` of `topk`; all experts for a dense mixture).
    pub top_k: usize,
    /// Rank of one expert's (or the adapter's) low-rank update: the smaller side of its 2-D
    /// non-router tensors (GOAT reports `d = r / E`).
    pub rank: usize,
    /// Trainable values of the module (adapter + router).
    pub trainable_params: u64,
    /// Of which adapter tensors (everything but the router).
    pub adapter_params: u64,
    /// Of which router tensors (named inside `softmax(…)` or `topk(…)`).
    pub router_params: u64,
    /// Adapter and router FLOPs per token, forward.
    pub flops_per_token_forward: f64,
    /// Adapter and router FLOPs per token, forward + backward.
    pub flops_per_token_step: f64,
}

/// Totals over the model.
#[derive(Clone, Debug, PartialEq)]
pub struct TotalCost {
    /// Every trainable value: adapters, routers and the task head.
    pub trainable_params: u64,
    /// Adapter tensors.
    pub adapter_params: u64,
    /// Router tensors.
    pub router_params: u64,
    /// Task head.
    pub head_params: u64,
    /// The frozen base model's forward FLOPs per token.
    pub base_flops_per_token_forward: f64,
    /// Forward FLOPs per token (base + adapters + routers + head).
    pub flops_per_token_forward: f64,
    /// Training-step FLOPs per token (forward + backward).
    pub flops_per_token_step: f64,
    /// Activation memory of one batch (bytes).
    pub activation_bytes: f64,
    /// Optimizer state (bytes).
    pub optimizer_bytes: u64,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq)]
pub struct CostReport {
    /// The geometry it was computed for.
    pub geometry: Geometry,
    /// Optimizers whose state is counted, as `name` or `name+riemannian`.
    pub optimizers: Vec<String>,
    /// True when the spec has no `train` block and AdamW was assumed.
    pub optimizer_assumed: bool,
    /// One entry per attached module, in build order.
    pub modules: Vec<ModuleCost>,
    /// Totals.
    pub total: TotalCost,
}

/// The geometry a report uses by default: the `train` block's batch and `max_len` (at most the
/// model's positions, as training builds it: 1 for a `linear` model), else one sequence of
/// `DEFAULT_SEQ` tokens (at most the model's positions).
pub fn default_geometry(spec: &Spec) -> Geometry {
    let positions = spec
        .model
        .as_ref()
        .map_or(usize::MAX, |m| m.config.max_positions);
    match &spec.train {
        Some(t) => Geometry {
            batch: usize::try_from(t.batch).unwrap_or(usize::MAX),
            seq: usize::try_from(t.max_len)
                .unwrap_or(usize::MAX)
                .min(positions),
        },
        None => Geometry {
            batch: 1,
            seq: spec
                .model
                .as_ref()
                .map_or(DEFAULT_SEQ, |m| DEFAULT_SEQ.min(m.config.max_positions)),
        },
    }
}

fn out_of_range(msg: String, help: &str) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(codes::BAD_VALUE, msg).help(help.to_string()))
}

/// Checks that a geometry is one the model and the report can build.
pub fn check_geometry(spec: &Spec, geo: Geometry) -> Result<(), Box<Diagnostic>> {
    let Some(model) = spec.model.as_ref() else {
        return Err(Box::new(
            Diagnostic::error(codes::NO_MODEL, "the spec declares no model")
                .help("a cost report needs a base model: declare one with `model …`"),
        ));
    };
    if geo.batch == 0 || geo.seq == 0 {
        return Err(out_of_range(
            "batch and sequence length must be at least 1".into(),
            "pass --batch and --seq of at least 1",
        ));
    }
    if geo.seq > model.config.max_positions {
        return Err(out_of_range(
            format!(
                "sequence length {} exceeds the model's {} positions (max_position_embeddings)",
                geo.seq, model.config.max_positions
            ),
            "pass a shorter --seq, or lower `max_len` in the train block",
        ));
    }
    if geo.seq > MAX_SEQ || geo.batch.saturating_mul(geo.seq) > MAX_TOKENS {
        return Err(out_of_range(
            format!(
                "batch {} × sequence {} is too large to cost (at most {MAX_SEQ} tokens per sequence and {MAX_TOKENS} per batch)",
                geo.batch, geo.seq
            ),
            "FLOPs per token do not depend on the batch size: cost a smaller batch",
        ));
    }
    Ok(())
}

/// Names read (through `let`s) by `e`.
fn names(e: &Expr, lets: &[(String, HashSet<String>)], out: &mut HashSet<String>) {
    match &e.kind {
        ExprKind::Name(n) => {
            out.insert(n.clone());
            if let Some((_, more)) = lets.iter().rev().find(|(k, _)| k == n) {
                out.extend(more.iter().cloned());
            }
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|a| names(&a.value, lets, out)),
        ExprKind::Binary { lhs, rhs, .. } => {
            names(lhs, lets, out);
            names(rhs, lets, out);
        }
        ExprKind::Neg(x) | ExprKind::Transpose(x) => names(x, lets, out),
        ExprKind::Index { base, index } => {
            names(base, lets, out);
            names(index, lets, out);
        }
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter().for_each(|x| names(x, lets, out)),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            names(cond, lets, out);
            names(then, lets, out);
            names(otherwise, lets, out);
        }
        ExprKind::LetIn { value, body, .. } => {
            names(value, lets, out);
            names(body, lets, out);
        }
        ExprKind::Lambda { body, .. } => names(body, lets, out),
        _ => {}
    }
}

/// Names inside the arguments of every `softmax(…)` and `topk(…)` call of `e`.
fn gate_names(e: &Expr, lets: &[(String, HashSet<String>)], out: &mut HashSet<String>) {
    if let ExprKind::Call { func, args } = &e.kind {
        if func.name == "softmax" || func.name == "topk" {
            args.iter().for_each(|a| names(&a.value, lets, out));
            return;
        }
    }
    // Recurse through sub-expressions by reusing `names`' traversal on children.
    let children: Vec<&Expr> = match &e.kind {
        ExprKind::Call { args, .. } => args.iter().map(|a| &a.value).collect(),
        ExprKind::Binary { lhs, rhs, .. } => vec![lhs, rhs],
        ExprKind::Neg(x) | ExprKind::Transpose(x) => vec![x],
        ExprKind::Index { base, index } => vec![base, index],
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter().collect(),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => vec![cond, then, otherwise],
        ExprKind::LetIn { value, body, .. } => vec![value, body],
        ExprKind::Lambda { body, .. } => vec![body],
        _ => vec![],
    };
    children.into_iter().for_each(|c| gate_names(c, lets, out));
}

/// The router tensors of an adapter: names a gate (`softmax`, `topk`) reads, through `let`s.
pub fn router_names(def: &AdapterDef) -> HashSet<String> {
    let mut lets: Vec<(String, HashSet<String>)> = Vec::new();
    let mut out = HashSet::new();
    for s in &def.body {
        match s {
            Stmt::Let { name, value, .. } => {
                gate_names(value, &lets, &mut out);
                let mut read = HashSet::new();
                names(value, &lets, &mut read);
                lets.push((name.name.clone(), read));
            }
            Stmt::Out { value, .. } | Stmt::Aux { value, .. } => gate_names(value, &lets, &mut out),
            _ => {}
        }
    }
    out
}

fn build_failed(msg: String) -> Box<Diagnostic> {
    Box::new(
        Diagnostic::error(codes::BUILD_FAILED, format!("cannot cost the spec: {msg}"))
            .help("run `loraC check` on the spec; report it if it checks clean"),
    )
}

/// Builds the training graph (forward, loss) and measures it.
fn measure(
    spec: &Spec,
    geo: Geometry,
) -> Result<(GraphWork, Vec<build::lower::ParamInfo>), Box<Diagnostic>> {
    // Experts unrolled: the report counts each expert's work (k/E of it under top-k routing).
    // Every token of every layer counts (model FLOPs), even where training skips the last
    // layer's unread rows (`first_token_only`).
    let opts = build::BuildOptions {
        batch_experts: false,
        training: false,
        first_token_only: false,
    };
    let mut fwd = build::forward_with(spec, geo, opts).map_err(|e| build_failed(e.0))?;
    let loss: NodeId = match &spec.train {
        Some(t) => loss::add_loss(&mut fwd.graph, &t.task).map_err(|e| build_failed(e.0))?,
        None => {
            let g = &mut fwd.graph;
            let main = g
                .output("logits")
                .or_else(|| g.output("hidden"))
                .ok_or_else(|| build_failed("the graph has no output".into()))?;
            let mut l = g.sum_all(main).map_err(|e| build_failed(e.0))?;
            if let Some(aux) = g.output("aux") {
                l = g.plus(l, aux).map_err(|e| build_failed(e.0))?;
            }
            l
        }
    };
    let params = fwd.params.clone();
    let work = cost_graph::measure(fwd, loss).map_err(|e| build_failed(e.0))?;
    Ok((work, params))
}

/// Forward and training-step FLOPs per token of `spec` at `geo` (for `loraC bench`).
pub fn flops_per_token(spec: &Spec, geo: Geometry) -> Result<(f64, f64), Box<Diagnostic>> {
    let r = cost(spec, geo)?;
    Ok((
        r.total.flops_per_token_forward,
        r.total.flops_per_token_step,
    ))
}

fn known(n: Option<i64>, what: &str) -> Result<u64, Box<Diagnostic>> {
    n.and_then(|v| u64::try_from(v).ok()).ok_or_else(|| {
        build_failed(format!(
            "the size of `{what}` is not known (an `alpha_hill` allocation needs the weights)"
        ))
    })
}

fn optimizer_name(kind: &OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::AdamW { .. } => "adamw",
        OptimizerKind::Sgd { momentum, .. } if *momentum > 0.0 => "sgd+momentum",
        OptimizerKind::Sgd { .. } => "sgd",
    }
}

/// Optimizer state bytes and the optimizers' names.
fn optimizer_bytes(
    spec: &Spec,
    train: &TrainConfig,
    params: &[build::lower::ParamInfo],
) -> Result<(u64, Vec<String>), Box<Diagnostic>> {
    let mut experts: Vec<String> = Vec::new();
    for p in spec.attachments.iter().flat_map(|a| &a.instance.params) {
        if p.experts.is_some() && !experts.contains(&p.name) {
            experts.push(p.name.clone());
        }
    }
    let which = optim::assign(params, train, &experts).map_err(|e| build_failed(e.0))?;
    let mut bytes = 0u64;
    for (p, &o) in params.iter().zip(&which) {
        let kind = &train.optimizers[o].kind;
        let numel: u64 = p.shape.iter().map(|&d| d as u64).product();
        bytes += 4 * numel * optim::state_names(kind, &p.name).len() as u64;
    }
    let mut names: Vec<String> = Vec::new();
    for o in &train.optimizers {
        let n = optimizer_name(&o.kind);
        let n = match o.precondition {
            Some(_) => format!("{n}+riemannian"),
            None => n.to_string(),
        };
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ok((bytes, names))
}

/// The cost report of `spec` at `geo`.
pub fn cost(spec: &Spec, geo: Geometry) -> Result<CostReport, Box<Diagnostic>> {
    check_geometry(spec, geo)?;
    let (work, params) = measure(spec, geo)?;
    let tokens = (geo.batch * geo.seq) as f64;
    let mut modules = Vec::new();
    let (mut adapter_total, mut router_total) = (0u64, 0u64);
    for at in &spec.attachments {
        let routers = spec
            .adapters
            .get(&at.adapter)
            .map(router_names)
            .unwrap_or_default();
        let (mut adapter, mut router, mut experts, mut rank) = (0u64, 0u64, 1usize, 0usize);
        for p in &at.instance.params {
            let n = known(p.numel(), &p.name)?;
            if routers.contains(&p.name) {
                router += n;
                continue;
            }
            adapter += n;
            if let Some(Dim::N(e)) = p.experts {
                experts = experts.max(usize::try_from(e).unwrap_or(1));
            }
            if let [Dim::N(a), Dim::N(b)] = p.dims[..] {
                rank = rank.max(usize::try_from(a.min(b)).unwrap_or(0));
            }
        }
        let w = work.modules.iter().find(|w| w.name == at.module);
        let flops = w.map(|w| w.flops).unwrap_or_default();
        adapter_total += adapter;
        router_total += router;
        modules.push(ModuleCost {
            name: at.module.clone(),
            layer: at.layer,
            adapter: at.adapter.clone(),
            experts,
            top_k: w.and_then(|w| w.gate).map_or(experts, |(k, _)| k),
            rank,
            trainable_params: adapter + router,
            adapter_params: adapter,
            router_params: router,
            flops_per_token_forward: flops.forward / tokens,
            flops_per_token_step: (flops.forward + flops.backward) / tokens,
        });
    }
    let head_params: u64 = params
        .iter()
        .filter(|p| p.module == "head")
        .map(|p| p.shape.iter().map(|&d| d as u64).product::<u64>())
        .sum();
    let (opt_bytes, optimizers, assumed) = match &spec.train {
        Some(t) => {
            let (b, n) = optimizer_bytes(spec, t, &params)?;
            (b, n, false)
        }
        None => {
            let all: u64 = adapter_total + router_total + head_params;
            (8 * all, vec!["adamw".to_string()], true)
        }
    };
    let adapters_fwd: f64 = work.modules.iter().map(|m| m.flops.forward).sum();
    let adapters_bwd: f64 = work.modules.iter().map(|m| m.flops.backward).sum();
    let fwd = work.base.forward + work.head.forward + adapters_fwd;
    let bwd = work.base.backward + work.head.backward + adapters_bwd;
    Ok(CostReport {
        geometry: geo,
        optimizers,
        optimizer_assumed: assumed,
        modules,
        total: TotalCost {
            trainable_params: adapter_total + router_total + head_params,
            adapter_params: adapter_total,
            router_params: router_total,
            head_params,
            base_flops_per_token_forward: work.base.forward / tokens,
            flops_per_token_forward: fwd / tokens,
            flops_per_token_step: (fwd + bwd) / tokens,
            activation_bytes: work.activation_bytes,
            optimizer_bytes: opt_bytes,
        },
    })
}

/// A count as a JSON integer when it is one, else a float.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

impl CostReport {
    /// The report as JSON: `{"geometry", "optimizers", "modules": […], "total": {…}}`.
    pub fn to_json(&self) -> Value {
        let modules: Vec<Value> = self
            .modules
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "layer": m.layer,
                    "adapter": m.adapter,
                    "experts": m.experts,
                    "top_k": m.top_k,
                    "rank": m.rank,
                    "trainable_params": m.trainable_params,
                    "adapter_params": m.adapter_params,
                    "router_params": m.router_params,
                    "flops_per_token_forward": num(m.flops_per_token_forward),
                    "flops_per_token_step": num(m.flops_per_token_step),
                })
            })
            .collect();
        let t = &self.total;
        json!({
            "geometry": {"batch": self.geometry.batch, "seq": self.geometry.seq},
            "optimizers": self.optimizers,
            "optimizer_assumed": self.optimizer_assumed,
            "modules": modules,
            "total": {
                "trainable_params": t.trainable_params,
                "adapter_params": t.adapter_params,
                "router_params": t.router_params,
                "head_params": t.head_params,
                "base_flops_per_token_forward": num(t.base_flops_per_token_forward),
                "flops_per_token_forward": num(t.flops_per_token_forward),
                "flops_per_token_step": num(t.flops_per_token_step),
                "activation_bytes": num(t.activation_bytes),
                "optimizer_bytes": t.optimizer_bytes,
            }
        })
    }
}
