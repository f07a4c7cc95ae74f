//! The three programs a training run executes, built and optimised from a checked spec: the
//! gradient program (forward, loss, backward), the evaluation program (forward and loss) and
//! the update program (optimizers as IR). Shared by the runtime's session and
//! `loraC compile --emit cuda`.

use super::lower::ParamInfo;
use super::{forward_with, loss, optim, BuildOptions, Geometry};
use crate::check::train::TrainConfig;
use crate::check::Spec;
use crate::ir::{Graph, R};

/// The optimised graphs of a training run.
pub struct TrainGraphs {
    /// Trainable tensors, in creation order.
    pub params: Vec<ParamInfo>,
    /// Names of per-expert tensors (what an `experts` selector picks).
    pub experts: Vec<String>,
    /// Which optimizer updates each parameter (index into the train block's optimizers).
    pub owner: Vec<usize>,
    /// Outputs `logits` and `loss`.
    pub eval: Graph,
    /// Outputs `loss` and `grad.<param>`.
    pub grad: Graph,
    /// The optimizer step.
    pub update: Graph,
}

/// Builds and optimises the gradient, evaluation and update programs for `geo`.
pub fn train_graphs(spec: &Spec, cfg: &TrainConfig, geo: Geometry) -> R<TrainGraphs> {
    // Training graph with seeded dropout masks; the evaluation graph without.
    // Rows of the last layer nobody reads are not computed (`first_token_suffices`).
    let first_token_only = super::first_token_suffices(spec);
    let train_opts = BuildOptions {
        training: true,
        first_token_only,
        ..Default::default()
    };
    let mut fwd = forward_with(spec, geo, train_opts)?;
    let params = fwd.params.clone();
    let eval_opts = BuildOptions {
        first_token_only,
        ..Default::default()
    };
    let mut eval = forward_with(spec, geo, eval_opts)?.graph;
    eval.outputs.retain(|(n, _)| n == "logits");
    loss::add_loss(&mut eval, &cfg.task)?;
    crate::passes::optimize(&mut eval, |_, _| {})?;
    loss::gradient_graph(&mut fwd, &cfg.task)?;
    let mut grad = fwd.graph;
    grad.outputs
        .retain(|(n, _)| n == "loss" || n.starts_with("grad."));
    crate::passes::optimize(&mut grad, |_, _| {})?;
    let experts: Vec<String> = params
        .iter()
        .filter(|p| p.experts.is_some())
        .map(|p| p.local.clone())
        .collect();
    let owner = optim::assign(&params, cfg, &experts)?;
    let update = optim::update_graph(&params, &owner, cfg)?;
    Ok(TrainGraphs {
        params,
        experts,
        owner,
        eval,
        grad,
        update,
    })
}
