//! Builder: checked spec → IR. The base model family supplies the graph; every attached
//! linear becomes its adapter's `out`, exactly as the spec writes it.

pub mod batch;
pub mod head;
pub mod loss;
pub mod lower;
pub mod optim;
pub mod programs;

use crate::check::attach::Attachment;
use crate::check::Spec;
use crate::ir::{Graph, IrError, NodeId, R};
use crate::model::forward::{frozen, LinearHook};
use crate::model::{bert, linear, llama, Family, TensorInfo};
use lower::{Lowerer, ParamInfo};
use std::collections::HashMap;

/// Batch geometry of a built graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

/// A forward graph and what the runtime must feed it.
pub struct Forward {
    /// The graph; outputs `hidden` and `pooled` (bert), `hidden` and `logits` (llama) or
    /// `hidden` (linear: the layer's output), plus `aux` when the adapters declare auxiliary
    /// losses.
    pub graph: Graph,
    /// Trainable tensors, in creation order.
    pub params: Vec<ParamInfo>,
    /// For every adapted linear, the node indices its lowering added (base path included);
    /// the cost report attributes work to modules and experts by them.
    pub modules: Vec<(String, std::ops::Range<usize>)>,
}

/// Choices of how the graph is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Sums of low-rank experts as products over stacked factors (`batch.rs`).
    pub batch_experts: bool,
    /// The training forward: dropout draws seeded masks (input `dropout_seed`).
    pub training: bool,
    /// Only the first token of the last layer is read (BERT's pooler): that layer computes
    /// keys and values for every token and the rest for the first (`hidden` is then
    /// `[batch, 1, hidden]`). Callers set it through [`first_token_suffices`].
    pub first_token_only: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            batch_experts: true,
            training: false,
            first_token_only: false,
        }
    }
}

/// A stable 64-bit hash of a module name (FNV-1a): the dropout salt of its sites.
fn salt_of(module: &str) -> u64 {
    module.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

struct AdapterHook<'a> {
    spec: &'a Spec,
    opts: BuildOptions,
    tensors: &'a [TensorInfo],
    by_module: HashMap<&'a str, &'a Attachment>,
    params: Vec<ParamInfo>,
    aux: Vec<NodeId>,
    modules: Vec<(String, std::ops::Range<usize>)>,
}

impl LinearHook for AdapterHook<'_> {
    fn linear(&mut self, g: &mut Graph, module: &str, x: NodeId) -> R<NodeId> {
        let w0 = frozen(g, self.tensors, &format!("{module}.weight"))?;
        let Some(at) = self.by_module.get(module).copied() else {
            let wt = g.t(w0)?;
            return g.matmul(x, wt);
        };
        let def = self
            .spec
            .adapters
            .get(&at.adapter)
            .ok_or_else(|| IrError(format!("adapter `{}` vanished", at.adapter)))?;
        let mut lw = Lowerer::new(def, at);
        lw.batch_experts = self.opts.batch_experts;
        lw.training = self.opts.training;
        lw.salt = salt_of(module);
        // Nodes are only added while building, so indices from here on are this module's.
        let start = g.len();
        let out = lw.lower(g, x, w0)?;
        self.modules.push((module.to_string(), start..g.len()));
        self.params.extend(lw.params);
        self.aux.extend(lw.aux);
        Ok(out)
    }
}

/// True when a training run of `spec` reads only the first token of BERT's last layer: the
/// head reads the pooler or the first token's state, and no adapter of the last layer has an
/// auxiliary loss (a balance loss averages over every token, so those rows stay live).
pub fn first_token_suffices(spec: &Spec) -> bool {
    let (Some(model), Some(train)) = (spec.model.as_ref(), spec.train.as_ref()) else {
        return false;
    };
    let pooling_reads_first = match &train.task {
        crate::check::train::Task::Classification { pooling, .. } => {
            matches!(pooling.as_str(), "pooler" | "cls" | "default")
        }
        crate::check::train::Task::Regression => true,
        crate::check::train::Task::CausalLm { .. } => false,
    };
    let last = model.config.layers.checked_sub(1);
    let aux_in_last = spec.attachments.iter().any(|a| {
        a.layer == last
            && spec.adapters.get(&a.adapter).is_some_and(|d| {
                d.body
                    .iter()
                    .any(|s| matches!(s, crate::syntax::ast::Stmt::Aux { .. }))
            })
    });
    model.family == Family::Bert && pooling_reads_first && !aux_in_last
}

/// Builds the forward graph of a checked spec for the given batch geometry.
pub fn forward(spec: &Spec, geo: Geometry) -> R<Forward> {
    forward_with(spec, geo, BuildOptions::default())
}

/// [`forward`] with explicit build options.
pub fn forward_with(spec: &Spec, geo: Geometry, opts: BuildOptions) -> R<Forward> {
    let model = spec
        .model
        .as_ref()
        .ok_or_else(|| IrError("the spec declares no model".into()))?;
    let mut hook = AdapterHook {
        spec,
        opts,
        tensors: &model.tensors,
        by_module: spec
            .attachments
            .iter()
            .map(|a| (a.module.as_str(), a))
            .collect(),
        params: Vec::new(),
        aux: Vec::new(),
        modules: Vec::new(),
    };
    let mut g = Graph::new();
    match model.family {
        Family::Bert => {
            let o = bert::forward(
                &mut g,
                &model.config,
                &model.tensors,
                &mut hook,
                geo.batch,
                geo.seq,
                opts.first_token_only,
            )?;
            g.set_output("hidden", o.hidden);
            g.set_output("pooled", o.pooled);
        }
        Family::Llama => {
            let o = llama::forward(
                &mut g,
                &model.config,
                &model.tensors,
                &mut hook,
                geo.batch,
                geo.seq,
            )?;
            g.set_output("hidden", o.hidden);
            g.set_output("logits", o.logits);
        }
        Family::Linear => {
            // One vector per example: the geometry's sequence length is 1.
            let y = linear::forward(
                &mut g,
                &model.config,
                &model.tensors,
                &mut hook,
                geo.batch * geo.seq,
            )?;
            g.set_output("hidden", y);
        }
    }
    let mut params = hook.params;
    if let Some(task) = spec.train.as_ref().map(|t| &t.task) {
        if let Some(head) = head::build(&mut g, model, task, geo)? {
            params.extend(head);
        }
    }
    if let Some((&first, rest)) = hook.aux.split_first() {
        let mut total = first;
        for &a in rest {
            total = g.plus(total, a)?;
        }
        g.set_output("aux", total);
    }
    Ok(Forward {
        graph: g,
        params,
        modules: hook.modules,
    })
}
