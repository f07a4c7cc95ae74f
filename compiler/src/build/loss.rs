//! Task losses on top of the forward graph, and the gradient graph (forward + loss + backward).

use super::Forward;
use crate::check::train::Task;
use crate::ir::{DType, Graph, InputKind, IrError, NodeId, Op, UnaryOp, R};
use crate::passes::autodiff;

/// Mean cross-entropy of `logits[rows, classes]` against i64 `labels[rows]`; labels outside
/// `0..classes` (an ignore index such as −100) are excluded from the mean.
pub fn cross_entropy(g: &mut Graph, logits: NodeId, labels: NodeId) -> R<NodeId> {
    let classes = g.shape(logits)[1];
    let m = g.max_along(logits, 1)?;
    let m = g.stop_grad(m)?;
    let z = g.minus(logits, m)?;
    let e = g.un(UnaryOp::Exp, z)?;
    let s = g.sum(e, 1)?;
    let ls = g.un(UnaryOp::Log, s)?;
    let logp = g.minus(z, ls)?;
    let oh = g.add(Op::OneHot { depth: classes }, &[labels])?;
    let picked = g.times(oh, logp)?;
    let total = g.sum_all(picked)?;
    let count = g.sum_all(oh)?;
    let one = g.scalar(1.0)?;
    let count = g.bin(crate::ir::BinaryOp::Max, count, one)?;
    let mean = g.over(total, count)?;
    g.neg(mean)
}

/// Adds the task loss (plus `aux`) as output `loss`; returns the loss node.
pub fn add_loss(g: &mut Graph, task: &Task) -> R<NodeId> {
    let logits = g
        .output("logits")
        .ok_or_else(|| IrError("the graph has no logits".into()))?;
    let s = g.shape(logits).to_vec();
    let task_loss = match task {
        Task::Classification { .. } => {
            let labels = g.add(
                Op::Input {
                    name: "labels".into(),
                    kind: InputKind::Data,
                    shape: vec![s[0]],
                    dtype: DType::I64,
                },
                &[],
            )?;
            cross_entropy(g, logits, labels)?
        }
        Task::Regression => {
            // Targets have the predictions' shape: `[batch, 1]` from a head, `[batch, out]`
            // from a `linear` model. The mean is over every value of the real rows (torch's
            // `mse_loss` on the batch without its padding).
            let y = g.add(
                Op::Input {
                    name: "labels".into(),
                    kind: InputKind::Data,
                    shape: s.clone(),
                    dtype: DType::F32,
                },
                &[],
            )?;
            // Rows that pad a short batch carry weight 0: the mean is over real examples.
            let w = g.add(
                Op::Input {
                    name: "label_mask".into(),
                    kind: InputKind::Data,
                    shape: vec![s[0], 1],
                    dtype: DType::F32,
                },
                &[],
            )?;
            let d = g.minus(logits, y)?;
            let sq = g.times(d, d)?;
            // One weight per row, spread over a row's outputs (a head has one: no broadcast).
            let outs = s[1];
            let wb = if outs == 1 { w } else { g.bc(w, &s)? };
            let sq = g.times(sq, wb)?;
            let t = g.sum_all(sq)?;
            let n = g.sum_all(w)?;
            let one = g.scalar(1.0)?;
            let n = g.bin(crate::ir::BinaryOp::Max, n, one)?;
            let n = if outs == 1 {
                n
            } else {
                g.scale(n, outs as f32)?
            };
            g.over(t, n)?
        }
        Task::CausalLm { .. } => {
            // Labels are already shifted by the data loader: labels[b, t] is the token after t.
            let (b, l, v) = (s[0], s[1], s[2]);
            let labels = g.add(
                Op::Input {
                    name: "labels".into(),
                    kind: InputKind::Data,
                    shape: vec![b * l],
                    dtype: DType::I64,
                },
                &[],
            )?;
            let flat = g.reshape(logits, &[b * l, v])?;
            cross_entropy(g, flat, labels)?
        }
    };
    let loss = match g.output("aux") {
        Some(aux) => g.plus(task_loss, aux)?,
        None => task_loss,
    };
    g.set_output("loss", loss);
    Ok(loss)
}

/// Forward + loss + gradients of every trainable tensor (`grad.<name>` outputs).
pub fn gradient_graph(fwd: &mut Forward, task: &Task) -> R<()> {
    let loss = add_loss(&mut fwd.graph, task)?;
    // Reorder product chains before differentiating, so the backward pass inherits the
    // cheap order too (`B A` is never formed, nor its gradient).
    crate::passes::reassoc::run(&mut fwd.graph)?;
    let params: Vec<(String, NodeId)> = fwd.graph.inputs_of_kind(InputKind::Param);
    let ids: Vec<NodeId> = params.iter().map(|(_, i)| *i).collect();
    let grads = autodiff::grad(&mut fwd.graph, loss, &ids)?;
    for ((name, _), gr) in params.iter().zip(grads) {
        if let Some(gr) = gr {
            fwd.graph.set_output(&format!("grad.{name}"), gr);
        }
    }
    Ok(())
}
